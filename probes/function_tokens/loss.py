"""Loss decomposition by function/content tokens ("consolidation" in arXiv 2510.08203).

Every next-token prediction is labelled by (type of the current token, type of the target):
F->F, F->C, C->F, C->C, with F the function-token set of `probes.function_tokens` (frequency
mass, default 40%, computed with the model's own tokenizer on the counting split). For each group:
mean cross-entropy, its share of the total loss, and its share of the predictions. Predictions
from BOS, into or out of the EOS document separator, and into padding are left out.

The study `function-token-loss-over-training` runs the probe on every saved checkpoint of a
workbench-trained model (`workbench.zoo`), each through the store, to show how the decomposition
changes over training (the paper trains its own 1.5B/8B models for this).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.function_tokens.probe import function_token_ids, token_stats
from workbench.config import ConfigBase, StreamConfig, config_from_dict, setting
from workbench.corpora import load_corpus
from workbench.corpora.base import SPLITS, Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.errors import ConfigError
from workbench.models import load_model
from workbench.probe_api import ProbeSpec, StudySpec, register
from workbench.results import Result
from workbench.runner import StudyParts, run_study
from workbench.saes import special_token_ids
from workbench.saes.quality import scored_mask
from workbench.slices import stream_corpus
from workbench.zoo import LMRecipe, checkpoints, train_lm

GROUPS = ("F->F", "F->C", "C->F", "C->C")


@dataclass
class FunctionTokenLossConfig(StreamConfig):
    mass: float = setting(0.4, min=0.0, max=1.0, why="a share of token occurrences")
    count_split: str = setting("all", text=True, why="the corpus split whose frequencies rank the tokens")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.mass <= 1:
            raise ConfigError(f"mass must be in (0, 1], got {self.mass}")
        if self.count_split not in SPLITS:
            raise ConfigError(f"count_split must be one of {SPLITS}, got {self.count_split!r}")


@dataclass
class FunctionTokenLossResult(Result):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per group
    function_set: dict = field(default_factory=dict)

    def summary(self) -> dict:
        if self.table.empty:
            return {}
        t = self.table.set_index("group")
        return {g: {"ce": round(float(t.loc[g, "mean_ce"]), 4), "loss_share": round(float(t.loc[g, "loss_share"]), 4)} for g in GROUPS}


def group_index(is_function: torch.Tensor, current: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0..3 for F->F, F->C, C->F, C->C."""
    return 2 * (~is_function[current]).long() + (~is_function[target]).long()


class LossDecompositionAccumulator:
    needs_logits = True
    hook_names: list[str] = []

    def __init__(self, is_function: torch.Tensor, exclude: list[int]):
        self.is_function = is_function
        self.exclude = torch.tensor(sorted(exclude), dtype=torch.long)
        self.state = {"ce": torch.zeros(4, dtype=torch.float64), "ce2": torch.zeros(4, dtype=torch.float64),
                      "n": torch.zeros(4, dtype=torch.long)}

    def identity(self) -> str:
        return f"F{int(self.is_function.sum())}"

    @torch.no_grad()
    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        dev = batch.tokens.device
        if self.is_function.device != dev:
            self.is_function, self.exclude = self.is_function.to(dev), self.exclude.to(dev)
            self.state = {k: v.to(dev) for k, v in self.state.items()}
        ok = scored_mask(batch, self.exclude)
        pred = ok[:, :-1] & ok[:, 1:]
        cur, tgt = batch.tokens[:, :-1][pred], batch.tokens[:, 1:][pred]
        if cur.numel() == 0:
            return
        ce = F.cross_entropy(logits[:, :-1][pred].float(), tgt, reduction="none").double()
        g = group_index(self.is_function, cur, tgt)
        self.state["ce"].index_add_(0, g, ce)
        self.state["ce2"].index_add_(0, g, ce * ce)
        self.state["n"].index_add_(0, g, torch.ones_like(g))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    def table(self) -> pd.DataFrame:
        """Per group: predictions, mean CE with its standard error (tokens treated as independent,
        so it understates the spread where neighbouring tokens move together), shares of the
        predictions and of the loss."""
        ce, n = self.state["ce"].cpu().numpy(), self.state["n"].cpu().numpy()
        ce2 = self.state["ce2"].cpu().numpy() if "ce2" in self.state else np.full(4, np.nan)
        mean = np.divide(ce, n, out=np.full(4, np.nan), where=n > 0)
        var = np.divide(ce2 - n * mean**2, n - 1, out=np.full(4, np.nan), where=n > 1).clip(min=0)
        return pd.DataFrame({
            "group": GROUPS, "n": n, "mean_ce": mean, "ce_se": np.sqrt(var / np.maximum(n, 1)),
            "loss_share": ce / max(ce.sum(), 1e-12), "count_share": n / max(n.sum(), 1), "total_ce": ce,
        })


def run(model: HookedTransformer, corpus: Corpus, config: FunctionTokenLossConfig) -> FunctionTokenLossResult:
    if model.tokenizer is None:
        raise ConfigError("function-token-loss needs a model with a tokenizer")
    special = special_token_ids(model)
    stats = token_stats(model.tokenizer, corpus, config.count_split, special)
    f_ids = function_token_ids(stats.counts, config.mass)
    is_function = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    is_function[torch.as_tensor(f_ids)] = True
    acc = LossDecompositionAccumulator(is_function, special)
    _, slice_info = stream_corpus(model, corpus, config, acc, desc="function-token-loss")
    return FunctionTokenLossResult(
        meta={"slice": slice_info}, table=acc.table(),
        function_set={"size": int(f_ids.size), "mass": config.mass, "ids": [int(i) for i in f_ids],
                      "tokens": model.tokenizer.batch_decode([[int(i)] for i in f_ids]), "tokenizer": stats.tokenizer,
                      "corpus": stats.corpus},
    )


def cost(config: FunctionTokenLossConfig, model_cfg) -> float | None:
    """Forward token-passes: one over the slice."""
    return None if config.max_tokens is None else float(config.max_tokens)


SPEC = register(ProbeSpec(
    name="function-token-loss",
    description="Next-token loss split by (current, target) in function/content tokens: F->F, F->C, C->F, C->C mean CE and loss shares.",
    config_cls=FunctionTokenLossConfig,
    result_cls=FunctionTokenLossResult,
    run=run,
    cost=cost,
))


# ----------------------------------------------------------------------------- over training (a study)


@dataclass
class LossOverTrainingConfig(ConfigBase):
    recipe: dict = field(default_factory=dict)  # LMRecipe fields (workbench.zoo)
    corpus: str = setting("brown", names="corpus")
    probe: dict = field(default_factory=lambda: {"split": "validation", "max_tokens": 20_000})

    def validate(self) -> None:
        LMRecipe(**self.recipe)
        config_from_dict(FunctionTokenLossConfig, self.probe)


@dataclass
class LossOverTrainingResult(Result):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (step, group)

    def summary(self) -> dict:
        if self.table.empty:
            return {}
        last = self.table[self.table["step"] == self.table["step"].max()].set_index("group")
        return {"checkpoints": int(self.table["step"].nunique()), "final_step": int(self.table["step"].max()),
                **{f"{g}:loss_share": round(float(last.loc[g, "loss_share"]), 4) for g in GROUPS if g in last.index}}


def loss_over_training(cfg: LossOverTrainingConfig, ctx: StudyParts) -> LossOverTrainingResult:
    """Train (or reuse) the zoo recipe, then the decomposition at each saved checkpoint, each a stored probe run."""
    recipe = LMRecipe(**cfg.recipe)
    corpus = load_corpus(cfg.corpus)
    device = ctx.device
    train_lm(recipe, device=device)
    frames = []
    for step, path in checkpoints(recipe).items():
        model = load_model(str(path), numerics="raw", device=device)
        out = ctx.run_probe(SPEC, model, corpus, cfg.probe)
        frames.append(out.result.table.assign(step=step))
    return LossOverTrainingResult(table=pd.concat(frames, ignore_index=True))


def loss_over_checkpoints(recipe: LMRecipe, corpus: Corpus, config: FunctionTokenLossConfig | None = None, store=None,
                          device: str | None = None) -> pd.DataFrame:
    """The study's table (one row per step and group) for a zoo recipe, computed or reused."""
    config = config or FunctionTokenLossConfig(split="validation", max_tokens=20_000)
    cfg = LossOverTrainingConfig(recipe=dataclasses.asdict(recipe), corpus=corpus.name, probe=config.to_dict())
    return run_study(STUDY, cfg, store=store, device=device).result.table


STUDY = register(StudySpec(
    name="function-token-loss-over-training",
    description="The function/content loss split at every saved checkpoint of a small LM the workbench trains on Brown.",
    config_cls=LossOverTrainingConfig,
    result_cls=LossOverTrainingResult,
    run=loss_over_training,
))
