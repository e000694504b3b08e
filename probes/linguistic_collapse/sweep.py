"""The linguistic-collapse scaling sweep: a seeded grid of small LMs trained on Brown's train split
(`workbench.zoo`), the linguistic-collapse probe on each, and Spearman rank correlations of every
metric with validation loss and with parameter count.

The paper trained ~230 GPT-Neo models on TinyStories (depth {1..12} x width {64..1024}, 1/3/10
epochs, 2 weight decays, plus 21 seeds of one shape). The CPU grid here is far smaller (see GRIDS);
each step budget is its own training run with its own cosine schedule, as the paper's epoch budgets.
Training and probe results are cached (zoo recipe cache, result store), so a rerun is cheap and an
interrupted sweep resumes. The sweep is a registered study (`SWEEP_STUDY`): every model's probe run
goes through `run_probe`, and the sweep's table and correlations are stored like any result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd
from scipy.stats import spearmanr

from workbench.config import ConfigBase, config_from_dict, setting
from workbench.corpora import load_corpus
from workbench.errors import ConfigError
from workbench.models.info import model_info
from workbench.probe_api import StudySpec, get_probe, register
from workbench.progress import progress_bar
from workbench.results import Result
from workbench.runner import StudyParts, result_of_run, run_study
from workbench.store import ResultStore
from workbench.zoo import LMRecipe, load_lm, recipe_dir, train_lm

SWEEP_STUDY = "linguistic-collapse-sweep"
PROBE = "linguistic-collapse"

# Metric -> the sign of its Spearman correlation with validation loss if the paper's trend holds
# (more collapse with lower loss). +1: the metric falls as loss falls; -1: it rises.
EXPECTED_SIGN = {
    "nc1_cdnv": 1, "nc2_equinorm_cov": 1, "nc2_cos_std": 1, "nc2_etf_error": 1, "gnc2_uniformity": 1,
    "nc3_duality_mean": -1, "unc3_cov": 1, "nc3_dual_error": 1, "nc4_mismatch": 1, "nc4_mismatch_kept": 1,
}
METRICS = list(EXPECTED_SIGN)


@dataclass
class SweepConfig(ConfigBase):
    """Grid (depth x width x step budget x seed) and the probe settings used on every model."""

    depths: list[int] = field(default_factory=lambda: [1, 2, 4])
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    steps: list[int] = field(default_factory=lambda: [150, 450])
    seeds: list[int] = field(default_factory=lambda: [0])
    n_heads: int = 4
    n_ctx: int = 128
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    corpus: str = setting("brown", names="corpus")
    probe: dict = field(default_factory=lambda: {"max_tokens": 100_000, "heldout_max_tokens": 30_000})

    def validate(self) -> None:
        for name in ("depths", "widths", "steps", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"sweep {name} must not be empty")
        bad = [w for w in self.widths if w % self.n_heads]
        if bad:
            raise ConfigError(f"widths {bad} are not divisible by n_heads={self.n_heads}")
        config_from_dict(get_probe(PROBE).config_cls, self.probe)

    def recipes(self) -> list[LMRecipe]:
        return [
            LMRecipe(n_layers=depth, d_model=width, n_heads=self.n_heads, n_ctx=self.n_ctx, corpus=self.corpus, steps=steps,
                     batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
                     warmup_steps=min(100, max(1, steps // 10)), seed=seed, n_checkpoints=4)
            for seed in self.seeds for steps in self.steps for depth in self.depths for width in self.widths
        ]


GRIDS: dict[str, SweepConfig] = {
    # 2 x 3 x 2 x 3 seeds = 36 models: the seeds give the variation at fixed size that the partial
    # correlation with validation loss (controlling for size) needs (training dominates the cost)
    "cpu": SweepConfig(depths=[1, 2], seeds=[0, 1, 2]),
    # for a GPU: 4 x 4 x 2 = 32 models, longer budgets, larger slices
    "gpu": SweepConfig(depths=[1, 2, 4, 8], widths=[64, 128, 256, 512], steps=[2000, 6000], batch_size=32,
                       lr=1e-3, probe={"max_tokens": 500_000, "heldout_max_tokens": 100_000}),
    # smoke settings: two models, a few steps
    "quick": SweepConfig(depths=[1], widths=[16, 32], steps=[20], n_ctx=64, batch_size=4,
                         probe={"max_tokens": 4_000, "heldout_max_tokens": 2_000, "seq_len": 64}),
}


@dataclass
class SweepResult(Result):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per model
    correlations: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per metric

    def summary(self) -> dict:
        c = self.correlations
        out = {"models": int(len(self.table))}
        for _, r in c.iterrows():
            if r["metric"] in ("nc1_cdnv", "nc2_equinorm_cov", "nc4_mismatch"):
                out[f"rho_loss[{r['metric']}]"] = None if math.isnan(r["rho_loss"]) else round(float(r["rho_loss"]), 3)
        return out


def non_embedding_params(model) -> int:
    skip = {"embed.W_E", "pos_embed.W_pos", "unembed.W_U", "unembed.b_U"}
    return int(sum(p.numel() for n, p in model.named_parameters() if n not in skip))


def model_row(recipe: LMRecipe, model, result, run_id: int, key: str) -> dict:
    """One sweep row: recipe, sizes, training and validation loss, every metric."""
    log = recipe_dir(recipe) / "train_log.csv"
    train_loss = float(pd.read_csv(log)["loss"].iloc[-1]) if log.exists() else math.nan
    m = result.metrics
    row = {"name": recipe.name, "n_layers": recipe.n_layers, "d_model": recipe.d_model, "steps": recipe.steps,
           "seed": recipe.seed, "train_tokens": recipe.steps * recipe.batch_size * recipe.n_ctx,
           "n_params": model_info(model).n_params, "n_params_nonembed": non_embedding_params(model),
           "train_loss": train_loss, "val_loss": m["heldout_loss"], "val_top1": m["heldout_top1"],
           "n_classes": m["n_classes"], "run_id": run_id, "key": key, "probe_s": result.meta.get("wall_s", math.nan)}
    row.update({k: m.get(k, math.nan) for k in METRICS})
    return row


def correlations(table: pd.DataFrame, metrics: list[str] = METRICS) -> pd.DataFrame:
    """Spearman rank correlation (and p-value) of each metric with val loss and with parameter
    count, and the partial Spearman correlation with val loss controlling for size (parameters and
    training steps), with a 95% Fisher-z interval and p: the paper's "independent of scale"."""
    from workbench.stats import partial_correlation, partial_correlation_p

    rows = []
    for metric in metrics:
        row = {"metric": metric, "expected_sign_loss": EXPECTED_SIGN.get(metric, 0)}
        for against, col in (("loss", "val_loss"), ("params", "n_params")):
            sub = table[[metric, col]].replace([math.inf, -math.inf], math.nan).dropna()
            if len(sub) >= 3 and sub[metric].nunique() > 1 and sub[col].nunique() > 1:
                res = spearmanr(sub[metric], sub[col])
                row[f"rho_{against}"], row[f"p_{against}"] = float(res.statistic), float(res.pvalue)
            else:
                row[f"rho_{against}"], row[f"p_{against}"] = math.nan, math.nan
            row[f"n_{against}"] = int(len(sub))
        scale = [c for c in ("n_params", "steps") if c in table]
        sub = table[[metric, "val_loss", *scale]].replace([math.inf, -math.inf], math.nan).dropna()
        size = sub[scale].to_numpy(dtype=float)
        row["partial_rho_loss"] = row["partial_lo"] = row["partial_hi"] = row["partial_p"] = math.nan
        if scale and len(sub) >= 6 and sub[metric].nunique() > 1 and sub["val_loss"].nunique() > 1:
            est = partial_correlation(sub[metric], sub["val_loss"], size, method="spearman")
            row.update(partial_rho_loss=est.value, partial_lo=est.lo, partial_hi=est.hi,
                       partial_p=partial_correlation_p(est.value, len(sub), size.shape[1]))
        row["n_partial"] = int(len(sub))
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_study(cfg: SweepConfig, ctx: StudyParts) -> SweepResult:
    """Train (or reuse) every grid model, run the probe on each through the store, correlate."""
    corpus = load_corpus(cfg.corpus)
    recipes = cfg.recipes()
    rows = []
    bar = progress_bar(len(recipes), "linguistic-collapse sweep", unit="model")
    try:
        for recipe in recipes:
            train_lm(recipe, device=ctx.device)
            model = load_lm(recipe, device=ctx.device)
            out = ctx.run_probe(PROBE, model, corpus, dict(cfg.probe))
            rows.append(model_row(recipe, model, out.result, out.run_id, out.key))
            del model
            bar.update(1)
    finally:
        bar.close()
    table = pd.DataFrame(rows)
    return SweepResult(meta={"corpus": corpus.id}, table=table, correlations=correlations(table))


def run_sweep(cfg: SweepConfig, store: ResultStore | None = None, device: str | None = None, force: bool = False) -> tuple[SweepResult, int]:
    """The sweep study's result (computed, or reused from the store) and its registry run id."""
    out = run_study(SWEEP_STUDY, cfg, store=store, device=device, force=force)
    return out.result, out.run_id


def load_sweep(store: ResultStore, run_id: int) -> SweepResult:
    """A stored sweep by its registry run id."""
    return result_of_run(run_id, store, expect=SWEEP_STUDY)


STUDY = register(StudySpec(
    name=SWEEP_STUDY,
    description="The linguistic-collapse probe on a grid of small LMs trained on Brown (depth x width x steps x seed), "
                "with Spearman correlations of every metric with validation loss and with size.",
    config_cls=SweepConfig,
    result_cls=SweepResult,
    run=sweep_study,
))
