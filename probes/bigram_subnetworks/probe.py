"""Bigram subnetworks (Chang & Bergen 2025, "Bigram Subnetworks: Mapping to Next Tokens in
Transformer Language Models"): continuous-sparsification masks over a model's raw weight
matrices, trained so the masked model predicts bigram statistics.

Steps, for one model and corpus:
1. bigram counts over the training split's chunks (`probes.bigram_subnetworks.bigrams`), unsmoothed, with
   back-off to unigram then uniform for unseen contexts;
2. a lambda sweep of masks trained against the bigram rows (soft-target CE + lambda * mean mask);
3. the "optimal" subnetwork: the same trainer with the full model's own output distribution as
   target;
4. metrics on held-out text: bigram r (Pearson r of per-token surprisals, model vs bigram) for
   each subnetwork and the full model, kept/maskable weights, the kept fraction per block per
   layer, LM loss when a subnetwork is zeroed out against count-matched random masks, overlap
   with the optimal subnetwork against a count-matched null, and the rotation analysis.

Selection: the sparsest lambda whose r is within `r_tolerance` of the lambda = 0 run (of the best
run when lambda 0 is not in the sweep).

Deviations from the paper are config choices and are recorded with the result: the paper's
schedule (lr 5e-5, T x 1.001 per step, at most 15k steps, batch 32 x 128) is the default; on CPU
the experiment script compresses it (larger lr, faster temperature growth, lower cap, smaller
batch). The paper's infinite-surprisal handling is documented in `bigram_correlation`. The overlap
null is sampled exactly per weight matrix (hypergeometric) instead of by shuffling rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.bigram_subnetworks.bigrams import BigramModel
from probes.bigram_subnetworks.mask_training import (
    MaskRun,
    MaskTrainConfig,
    pack_mask_run,
    seeded_batch_fn,
    train_mask,
    unpack_mask_run,
)
from probes.bigram_subnetworks.masking import (
    complement,
    kept,
    mask_slots,
    masks_applied,
    n_maskable,
    random_like,
    save_masks,
)
from probes.bigram_subnetworks.metrics import (
    BigramCorrelation,
    bigram_correlation,
    block_summary,
    kept_table,
    lm_loss,
    model_surprisals,
    overlap_with_null,
    r_difference,
    rotation_table,
)
from workbench.activations import available_memory_bytes, estimate_memory_bytes
from workbench.active_run import scratch_dir
from workbench.config import ConfigBase, StreamConfig, setting
from workbench.corpora.base import SPLITS, Corpus
from workbench.corpora.tokenized import TokenBatch, TokenBatches
from workbench.distributed import once_on_rank0
from workbench.errors import ConfigError, MemoryBudgetError
from workbench.models.info import model_info
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.slices import corpus_batches

PAPER = {
    "bigram_r": {"pythia-70m": (0.961, 0.737), "pythia-160m": (0.964, 0.690), "gpt2-small": (0.979, 0.624)},
    "gpt2_small_lambda10_active": (904_866, 84_934_656),
    "pythia_1b_mlp_share": 0.821,
    "gpt2_small_overlap_times_chance": 7.27,
    "gpt2_small_contained": 0.143,
    "pythia_160m_rotation": {"to_input_deg": (0.0, 47.0), "to_output_deg": (68.5, 34.5)},
}


@dataclass
class BigramSubnetworksConfig(ConfigBase):
    lambdas: list[float] = setting(default_factory=lambda: [0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0], min=0.0, max=1e6, max_items=16,
                                   why="one mask is trained per lambda")
    max_steps: int = setting(15_000, min=1, max=1_000_000, why="a step cap per mask")  # step cap per mask
    lr: float = setting(5e-5, min=0.0, max=10.0, why="a learning rate")
    temp_growth: float = setting(1.001, min=1.0, max=2.0, why="the temperature overflows beyond")  # temperature multiplier per step
    weight_decay: float = setting(0.01, min=0.0, max=10.0, why="a decay rate")
    batch_size: int = setting(32, min=1, max=1024, why="larger batches do not fit in memory")
    seq_len: int = setting(128, min=2, max=8192, why="longer than any supported model's context")
    stop_fraction: float = setting(0.01, min=0.0, max=1.0, why="a share of mask entries")  # stop when undecided < this x (mask > 0.9)
    min_count: int = setting(1, min=1, max=1_000_000, why="a bigram count")  # bigrams seen fewer times are dropped (contexts left empty back off)
    r_tolerance: float = setting(0.04, min=0.0, max=2.0, why="a correlation difference")
    optimal: bool = True
    optimal_lambda: float | None = setting(None, min=0.0, max=1e6, why="a sparsity weight")  # None: the selected bigram lambda
    train_split: str = setting("train", text=True, why="the corpus split the masks train on")
    eval_split: str = setting("validation", text=True, why="the corpus split the masks are scored on")
    eval_tokens: int = setting(32_768, min=1, max=10_000_000, why="a dashboard run streams at most 10M tokens")
    rotation_tokens: int = setting(100_000, min=0, max=10_000_000, why="a dashboard run streams at most 10M tokens")  # 0 skips the rotation analysis
    rotation_alpha: float = setting(1.0, min=0.0, max=1e6, why="a ridge penalty")
    n_random: int = setting(3, min=0, max=100, why="one ablation pass per random mask")  # count-matched random masks in the ablation
    overlap_samples: int = setting(10_000, min=1, max=10_000_000, why="null-distribution samples")
    resume_every: int = setting(100, min=1, max=1_000_000, why="steps between checkpoints")
    seed: int = setting(0, min=0, max=2**31 - 1, why="seeds are 31-bit")

    def validate(self) -> None:
        if not self.lambdas:
            raise ConfigError("lambdas must name at least one value")
        if any(l < 0 or not math.isfinite(l) for l in self.lambdas):
            raise ConfigError(f"lambdas must be finite and >= 0, got {self.lambdas}")
        if self.max_steps < 1 or self.batch_size < 1 or self.seq_len < 2:
            raise ConfigError("max_steps and batch_size must be positive and seq_len at least 2")
        if self.lr <= 0 or self.temp_growth < 1:
            raise ConfigError(f"need lr > 0 and temp_growth >= 1, got lr={self.lr}, temp_growth={self.temp_growth}")
        if self.min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {self.min_count}")
        for s in (self.train_split, self.eval_split):
            if s not in SPLITS:
                raise ConfigError(f"splits must be one of {SPLITS}, got {s!r}")
        if self.eval_tokens < self.seq_len:
            raise ConfigError(f"eval_tokens ({self.eval_tokens}) must be at least seq_len ({self.seq_len})")
        if self.n_random < 1 or self.overlap_samples < 1:
            raise ConfigError("n_random and overlap_samples must be positive")


@dataclass
class BigramSubnetworksResult(Result):
    sweep: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per trained mask
    kept: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (mask, weight matrix)
    ablation: pd.DataFrame = field(default_factory=pd.DataFrame)
    rotation: pd.DataFrame = field(default_factory=pd.DataFrame)
    train_log: pd.DataFrame = field(default_factory=pd.DataFrame)
    full_model: dict = field(default_factory=dict)
    bigram: dict = field(default_factory=dict)
    overlap: dict = field(default_factory=dict)
    overlap_null: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    masks: dict = field(default_factory=dict)  # "<label>/<parameter>" -> bool tensor

    # ----- access -----
    @property
    def labels(self) -> list[str]:
        return list(self.sweep["label"]) if not self.sweep.empty else []

    @property
    def selected(self) -> str | None:
        if self.sweep.empty or "selected" not in self.sweep:
            return None
        rows = self.sweep[self.sweep["selected"].astype(bool)]
        return None if rows.empty else str(rows["label"].iloc[0])

    @property
    def optimal_label(self) -> str | None:
        rows = self.sweep[self.sweep["kind"] == "optimal"] if not self.sweep.empty else self.sweep
        return None if rows.empty else str(rows["label"].iloc[0])

    def masks_for(self, label: str) -> dict[str, torch.Tensor]:
        prefix = f"{label}/"
        out = {k[len(prefix):]: v.bool() for k, v in self.masks.items() if k.startswith(prefix)}
        if not out:
            raise KeyError(f"no masks for {label!r}; known: {self.labels}")
        return out

    def save_masks(self, label: str, path) -> None:
        """Write one subnetwork as boolean safetensors (load with `probes.bigram_subnetworks.masking.load_masks`)."""
        save_masks(path, self.masks_for(label), {"label": label, "model": str(self.meta.get("model", {}).get("id", ""))})

    def block_table(self) -> pd.DataFrame:
        return block_summary(self.kept) if not self.kept.empty else pd.DataFrame()

    def summary(self) -> dict:
        if self.sweep.empty:
            return {}
        sel = self.selected
        out: dict = {"full_model_r": _round(self.full_model.get("r")), "lambdas": [float(x) for x in self.sweep.loc[self.sweep["kind"] == "bigram", "lam"]]}
        if sel is not None:
            row = self.sweep[self.sweep["label"] == sel].iloc[0]
            blocks = self.block_table()
            b = blocks[blocks["run"] == sel]
            first_mlp = b[(b["layer"] == 0) & (b["block"] == "mlp")]["share_of_kept"].sum()
            out.update({
                "selected": sel, "subnetwork_r": _round(row["r"]), "active": int(row["kept"]), "maskable": int(row["maskable"]),
                "kept_frac": _round(row["kept_frac"], 6), "first_mlp_share": _round(first_mlp),
                "mlp_share": _round(b[b["block"] == "mlp"]["share_of_kept"].sum()),
            })
        if not self.ablation.empty:
            a = self.ablation.set_index("condition")["loss"]
            out["ablation_loss"] = {k: _round(v) for k, v in a.items()}
        if self.overlap:
            out["overlap_times_chance"] = _round(self.overlap.get("ratio_to_chance"))
            out["overlap_p"] = self.overlap.get("p_value")
        return out


def _round(x, n: int = 4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), n)


def _label(kind: str, lam: float) -> str:
    return f"{kind}:{lam:g}"


# ----------------------------------------------------------------------------- memory


def estimate_bytes(model: HookedTransformer, batch_size: int, seq_len: int) -> dict[str, int]:
    """Peak memory of one mask-training step: weights, 16 B per maskable weight (logit, grad, two
    Adam moments), the soft mask and W0 * mask temporaries, activations kept for backward, and the
    [B, T, V] target, logits and log-softmax."""
    cfg = model.cfg
    nm = n_maskable(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    mask_state = 16 * nm
    temporaries = 8 * nm
    acts = 3 * estimate_memory_bytes(model, batch_size, seq_len, [], needs_logits=False)
    vocab = 4 * batch_size * seq_len * cfg.d_vocab * 4
    total = weights + mask_state + temporaries + max(acts, 0) + vocab
    return {"weights": weights, "mask_state": mask_state, "temporaries": temporaries, "activations": max(acts, 0), "vocab": vocab, "total": total}


def announce_memory(model: HookedTransformer, cfg: BigramSubnetworksConfig) -> dict[str, int]:
    """Print the estimate up front and refuse a run that will not fit."""
    est = estimate_bytes(model, cfg.batch_size, cfg.seq_len)
    device = next(model.parameters()).device
    have = available_memory_bytes(device)
    need = est["total"] - est["weights"]  # the weights are already resident (and not in `have`)
    gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
    print(f"[bigram-subnetworks] {n_maskable(model):,} maskable weights on {device}; estimated peak "
          f"{gib(est['total'])} (weights {gib(est['weights'])}, mask state {gib(est['mask_state'])}, "
          f"activations {gib(est['activations'])}, vocab-sized tensors {gib(est['vocab'])}); {gib(have)} available", flush=True)
    if need > 0.9 * have:
        raise MemoryBudgetError(f"mask training needs about {gib(need)} more on {device} but {gib(have)} is available; "
                                "lower batch_size or seq_len, or use a GPU (--device cuda)")
    return est


# ----------------------------------------------------------------------------- run


def _batches(model: HookedTransformer, corpus: Corpus, cfg: BigramSubnetworksConfig, split: str, max_tokens: int | None) -> TokenBatches:
    sc = StreamConfig(split=split, max_tokens=max_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, shuffle_docs=max_tokens is not None, seed=cfg.seed)
    return corpus_batches(model, corpus, sc)


def _bigram_model(model: HookedTransformer, train: TokenBatches, cfg: BigramSubnetworksConfig) -> BigramModel:
    d = scratch_dir("bigram")
    saved = BigramModel.try_load(d) if d is not None else None
    if saved is not None:
        return saved
    bg = BigramModel.from_batches(train, model.cfg.d_vocab, cfg.min_count, progress=True)
    if d is not None:
        bg.save(d)
    return bg


def _evaluate(model: HookedTransformer, masks: dict | None, eval_b: TokenBatches, bigram: BigramModel, desc: str) -> BigramCorrelation:
    """r against the bigram model with a 95% interval from a bootstrap over whole sequences."""
    block = eval_b.spec.seq_len - 1  # the (t, t+1) pairs of one sequence
    if masks is None:
        return bigram_correlation(model_surprisals(model, eval_b, desc), bigram, block=block)
    with masks_applied(model, masks):
        return bigram_correlation(model_surprisals(model, eval_b, desc), bigram, block=block)


def _train(model, train_b, target_fn, cfg: BigramSubnetworksConfig, kind: str, lam: float, identity: dict) -> MaskRun:
    label = _label(kind, lam)
    mcfg = MaskTrainConfig(lam=lam, max_steps=cfg.max_steps, lr=cfg.lr, weight_decay=cfg.weight_decay, temp_growth=cfg.temp_growth,
                           stop_fraction=cfg.stop_fraction, resume_every=cfg.resume_every, seed=cfg.seed)
    return once_on_rank0(  # a sharded run trains each mask once and every rank streams with rank 0's
        lambda: train_mask(model, seeded_batch_fn(train_b, cfg.seed), target_fn, mcfg, scratch_dir(f"mask-{kind}-{lam:g}"),
                           label, identity={**identity, "kind": kind}),
        pack_mask_run, unpack_mask_run)


def _contexts(b: TokenBatch) -> np.ndarray:
    """Context tokens of every (t, t+1) pair inside a batch."""
    return b.tokens[:, :-1][b.valid[:, :-1] & b.valid[:, 1:]].numpy()


def select_lambda(sweep: pd.DataFrame, tolerance: float) -> str:
    """The sparsest bigram run whose r is within `tolerance` of lambda 0 (or of the best r)."""
    b = sweep[sweep["kind"] == "bigram"]
    ref = b.loc[b["lam"] == 0, "r"]
    ref_r = float(ref.iloc[0]) if len(ref) else float(b["r"].max())
    ok = b[b["r"] >= ref_r - tolerance]
    if ok.empty:
        ok = b.loc[[b["r"].idxmax()]]
    return str(ok.sort_values(["kept", "lam"], ascending=[True, False])["label"].iloc[0])


def run(model: HookedTransformer, corpus: Corpus, config: BigramSubnetworksConfig) -> BigramSubnetworksResult:
    info = model_info(model)
    if info.numerics != "raw":
        raise ConfigError("bigram subnetworks mask raw weights: load the model with numerics='raw'")
    est = announce_memory(model, config)
    slots = mask_slots(model)
    total = sum(s.numel for s in slots)
    train_b = _batches(model, corpus, config, config.train_split, None)
    eval_b = _batches(model, corpus, config, config.eval_split, config.eval_tokens)
    bigram = _bigram_model(model, train_b, config)
    V = model.cfg.d_vocab
    identity = {"model": info.key, "data": train_b.describe(), "min_count": config.min_count}

    full = _evaluate(model, None, eval_b, bigram, "eval full model")
    rows, kept_rows, logs, masks, sums = [], [], [], {}, {}

    def record(run: MaskRun, kind: str, lam: float) -> None:
        ev = _evaluate(model, run.masks, eval_b, bigram, f"eval {run.label}")
        k = kept(run.masks)
        sums[run.label] = ev.sums
        rows.append({"label": run.label, "kind": kind, "lam": lam, "r": ev.r, "r_lo": ev.r_lo, "r_hi": ev.r_hi,
                     "r_clamped": ev.r_clamped, "lm_loss": ev.lm_loss,
                     "kept": k, "maskable": total, "kept_frac": k / total, "steps": run.steps, "stopped": run.stopped,
                     "temperature": run.temperature, "train_seconds": run.seconds})
        kept_rows.append(kept_table(run.masks, slots, run.label))
        logs.append(run.log.assign(run=run.label))
        for n, m in run.masks.items():
            masks[f"{run.label}/{n}"] = m.bool().cpu()

    def bigram_target(batch: TokenBatch) -> torch.Tensor:
        return bigram.target_rows(batch.tokens, vocab_size=V)

    for lam in config.lambdas:
        record(_train(model, train_b, bigram_target, config, "bigram", lam, identity), "bigram", lam)
    sweep = pd.DataFrame(rows)
    selected = select_lambda(sweep, config.r_tolerance)
    sel_lam = float(sweep.loc[sweep["label"] == selected, "lam"].iloc[0])

    opt_label = None
    if config.optimal:
        def own_target(batch: TokenBatch) -> torch.Tensor:
            return torch.softmax(model(batch.tokens, return_type="logits").float(), dim=-1)

        lam = config.optimal_lambda if config.optimal_lambda is not None else sel_lam
        run_opt = _train(model, train_b, own_target, config, "optimal", lam, identity)
        record(run_opt, "optimal", lam)
        opt_label = run_opt.label
    sweep = pd.DataFrame(rows)
    sweep["selected"] = sweep["label"] == selected
    margin = r_difference(sums[selected], full.sums)  # paired over the same held-out sequences

    sub = {n: masks[f"{selected}/{n}"] for n in (s.name for s in slots)}
    opt = {n: masks[f"{opt_label}/{n}"] for n in (s.name for s in slots)} if opt_label else None
    ablation = _ablation(model, eval_b, sub, opt, full.lm_loss, config.n_random, config.seed, selected, opt_label)

    overlap, null = {}, torch.empty(0)
    if opt is not None:
        ov, null_np = overlap_with_null(sub, opt, config.overlap_samples, config.seed)
        overlap = {**asdict(ov), "a": selected, "b": opt_label}
        null = torch.from_numpy(null_np.astype(np.float32))

    rotation = pd.DataFrame()
    if config.rotation_tokens > 0:
        rot_b = _batches(model, corpus, config, config.eval_split, config.rotation_tokens)
        parts = [rotation_table(model, rot_b, "full", config.rotation_alpha)]
        for label, m in ((selected, sub), (opt_label, opt)):
            if m is not None:
                with masks_applied(model, m):
                    parts.append(rotation_table(model, rot_b, label, config.rotation_alpha))
        rotation = pd.concat(parts, ignore_index=True)

    eval_ctx = np.concatenate([_contexts(eval_b.batch(i)) for i in range(len(eval_b))])
    return BigramSubnetworksResult(
        meta={"memory_estimate": est, "train_slice": train_b.describe(), "eval_slice": eval_b.describe(), "paper": PAPER},
        sweep=sweep, kept=pd.concat(kept_rows, ignore_index=True), ablation=ablation, rotation=rotation,
        train_log=pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(),
        full_model={**full.stored(), "margin": margin.value, "margin_lo": margin.lo, "margin_hi": margin.hi, "margin_of": selected},
        bigram={"vocab_size": bigram.vocab_size, "n_pairs": bigram.n_pairs, "n_distinct": int(bigram.counts.nnz),
                "min_count": bigram.min_count, "seen_contexts": int((bigram.row_totals > 0).sum()),
                "eval_unseen_context_rate": bigram.unseen_context_rate(eval_ctx),
                "eval_inf_surprisal_rate": full.n_inf_bigram / max(full.n, 1)},
        overlap=overlap, overlap_null=null, masks=masks,
    )


def _ablation(model, eval_b, sub, opt, full_loss, n_random, seed, sub_label, opt_label) -> pd.DataFrame:
    """LM loss with a subnetwork zeroed out (or kept alone), against count-matched random masks."""
    rows = [{"condition": "full model", "loss": full_loss, "loss_sd": 0.0, "n": 1, "zeroed": 0}]

    def loss_with(keep_masks: dict, desc: str) -> float:
        with masks_applied(model, keep_masks):
            return lm_loss(model, eval_b, desc)

    def add(name: str, keep_masks: dict) -> None:
        rows.append({"condition": name, "loss": loss_with(keep_masks, name), "loss_sd": 0.0, "n": 1, "zeroed": kept(complement(keep_masks))})

    def add_random(name: str, like: dict, ablate: bool) -> None:
        vals = []
        for i in range(n_random):
            r = random_like(like, seed + 1 + i)
            vals.append(loss_with(complement(r) if ablate else r, f"{name} #{i}"))
        zeroed = kept(like) if ablate else kept(complement(like))
        rows.append({"condition": name, "loss": float(np.mean(vals)), "loss_sd": float(np.std(vals)), "n": n_random, "zeroed": zeroed})

    add(f"ablate {sub_label}", complement(sub))
    add_random("ablate random (count-matched)", sub, ablate=True)
    if opt is not None:
        add(f"ablate {opt_label}", complement(opt))
        add_random("ablate random (matched to optimal)", opt, ablate=True)
    add(f"only {sub_label}", sub)
    add_random("only random (count-matched)", sub, ablate=False)
    return pd.DataFrame(rows)


def cost(config: BigramSubnetworksConfig, model_cfg) -> float | None:
    """Forward token-passes: every lambda's mask training (forward and backward: 3 passes per
    token, at most max_steps steps), the evaluations of each mask and the random masks, and the
    rotation statistics (on the model and on the selected subnetwork)."""
    train = len(config.lambdas) * config.max_steps * config.batch_size * config.seq_len * 3
    evals = config.eval_tokens * (len(config.lambdas) + config.n_random + 2)
    return float(train + evals + 2 * config.rotation_tokens)


SPEC = register(ProbeSpec(
    name="bigram-subnetworks",
    description="Continuous-sparsification masks that make the model predict bigrams: lambda sweep, optimal subnetwork, "
                "bigram r, where the weights sit, ablation, overlap and rotation (Chang & Bergen 2025).",
    config_cls=BigramSubnetworksConfig,
    result_cls=BigramSubnetworksResult,
    run=run,
    cost=cost,
))
