"""Metrics of a (masked) model against bigram statistics: surprisal correlation, LM loss, where the
kept weights sit, overlap between two masks against a count-matched null, and the rotation
analysis (ridge maps from each layer's residual to the input embeddings and the final residual).

Everything streams: per batch only scalars per token (surprisals) or d_model x d_model sums
(ridge statistics) are kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.stats
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.bigram_subnetworks.bigrams import BigramModel
from probes.bigram_subnetworks.masking import MaskSlot
from workbench import hooks
from workbench.activations import stream
from workbench.corpora.tokenized import TokenBatch, TokenBatches

LOG2E = 1.0 / math.log(2.0)


# ----------------------------------------------------------------------------- surprisal


class SurprisalAccumulator:
    """Per-position next-token surprisal (bits) of the model, with its context and next token (and
    the batch it came from, so the ranks of a sharded run merge back into the single-run order)."""

    hook_names: list[str] = []
    needs_logits = True

    def __init__(self) -> None:
        self.parts: dict[str, list[torch.Tensor]] = {"surprisal": [], "context": [], "next": [], "batch": []}

    def identity(self) -> str:
        return "surprisal"

    def update(self, batch: TokenBatch, acts: dict, logits: torch.Tensor | None) -> None:
        has_next = batch.valid[:, :-1] & batch.valid[:, 1:]
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nxt = batch.tokens[:, 1:]
        s = -logp.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) * LOG2E
        self.parts["surprisal"].append(s[has_next].double().cpu())
        self.parts["context"].append(batch.tokens[:, :-1][has_next].cpu())
        self.parts["next"].append(nxt[has_next].cpu())
        self.parts["batch"].append(torch.full((int(has_next.sum()),), batch.index, dtype=torch.long))

    def state_dict(self) -> dict[str, torch.Tensor]:
        empty = {"surprisal": torch.float64}  # a rank that streamed nothing still has the right dtypes
        return {k: torch.cat(v) if v else torch.empty(0, dtype=empty.get(k, torch.long)) for k, v in self.parts.items()}

    @staticmethod
    def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Concatenate the ranks' positions and put them back in batch order (a stable sort on the
        batch index: each rank's positions are already in order), exactly the single-run arrays."""
        cat = {k: torch.cat([s[k] for s in states]) for k in states[0]}
        order = torch.sort(cat["batch"], stable=True).indices
        return {k: v[order] for k, v in cat.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.parts = {k: [v] for k, v in state.items()}

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        st = self.state_dict()
        return st["surprisal"].numpy(), st["context"].numpy(), st["next"].numpy()


def model_surprisals(model: HookedTransformer, batches: TokenBatches, desc: str, progress: bool = True) -> SurprisalAccumulator:
    acc = SurprisalAccumulator()
    stream(model, batches, acc, progress=progress, desc=desc)
    return acc


@dataclass
class BigramCorrelation:
    r: float  # Pearson r, positions with infinite bigram surprisal dropped (primary)
    r_clamped: float  # Pearson r, infinite surprisals replaced by the largest finite one
    lm_loss: float  # mean next-token cross-entropy of the model (nats)
    n: int
    n_inf_bigram: int
    n_inf_model: int
    unseen_context_rate: float
    r_lo: float = float("nan")  # 95% interval of r: bootstrap over blocks of `block` consecutive positions
    r_hi: float = float("nan")
    block: int = 0
    sums: np.ndarray | None = field(default=None, repr=False)  # [blocks, 6] per-block sums for paired differences

    def stored(self) -> dict:
        """The numbers a result keeps: every field but the per-block sums."""
        return {k: v for k, v in asdict(self).items() if k != "sums"}


# Per-block sums for Pearson r: n, Σx, Σy, Σx², Σy², Σxy over the kept positions of each block, so a
# bootstrap over blocks (whole sequences: positions within one are not independent) resamples sums.
def block_sums(x: np.ndarray, y: np.ndarray, keep: np.ndarray, block: int) -> np.ndarray:
    """[n_blocks, 6] sums of consecutive `block`-position blocks (positions where `keep`)."""
    ids = np.arange(x.size) // max(1, block)
    nb = int(ids[-1]) + 1 if x.size else 0
    x, y, k = x.astype(np.float64), y.astype(np.float64), keep.astype(np.float64)
    cols = [k, k * x, k * y, k * x * x, k * y * y, k * x * y]
    return np.stack([np.bincount(ids, weights=c, minlength=nb) for c in cols], axis=1)


def pearson_from_sums(s: np.ndarray) -> float:
    """Pearson r from summed block statistics (one row, or summed over rows)."""
    n, sx, sy, sxx, syy, sxy = s if s.ndim == 1 else s.sum(0)
    cov = sxy - sx * sy / n
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    return float(cov / math.sqrt(vx * vy)) if vx > 0 and vy > 0 else float("nan")


def r_interval(sums: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% block-bootstrap interval of Pearson r."""
    from workbench.stats import bootstrap

    if len(sums) < 2:
        return float("nan"), float("nan")
    est = bootstrap(lambda i: pearson_from_sums(sums[i]), len(sums), n_boot=n_boot, seed=seed)
    return est.lo, est.hi


def r_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0):
    """r(a) - r(b) for two models scored on the same positions, with a paired block-bootstrap interval."""
    from workbench.stats import bootstrap

    return bootstrap(lambda i: pearson_from_sums(a[i]) - pearson_from_sums(b[i]), len(a), n_boot=n_boot, seed=seed)


def bigram_correlation(acc: SurprisalAccumulator, bigram: BigramModel, block: int = 0) -> BigramCorrelation:
    """Pearson r between model and bigram surprisals over the accumulated positions.

    Infinite bigram surprisals (a seen context followed by a never-seen token: the bigram model is
    unsmoothed) are dropped for `r`, as in the public code's final metric; `r_clamped` instead
    replaces them by the largest finite value, as in its first metric. Infinite model surprisals
    (probability underflow) are replaced by the model's largest finite surprisal in both.
    """
    s_model, ctx, nxt = acc.arrays()
    s_big = bigram.surprisal(ctx, nxt)
    inf_b, inf_m = np.isinf(s_big), ~np.isfinite(s_model)
    s_model = s_model.copy()
    if inf_m.any():
        s_model[inf_m] = s_model[~inf_m].max()
    keep = ~inf_b
    r = _pearson(s_model[keep], s_big[keep])
    clamped = s_big.copy()
    if inf_b.any() and keep.any():
        clamped[inf_b] = s_big[keep].max()
    out = BigramCorrelation(
        r=r, r_clamped=_pearson(s_model, clamped), lm_loss=float(np.mean(s_model) / LOG2E), n=int(s_model.size),
        n_inf_bigram=int(inf_b.sum()), n_inf_model=int(inf_m.sum()), unseen_context_rate=bigram.unseen_context_rate(ctx),
    )
    if block:
        out.block = block
        out.sums = block_sums(s_model, np.where(keep, s_big, 0.0), keep, block)
        out.r_lo, out.r_hi = r_interval(out.sums)
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(scipy.stats.pearsonr(a, b).statistic)


# ----------------------------------------------------------------------------- LM loss


class LossAccumulator:
    """Mean next-token cross-entropy (nats) over valid pairs."""

    hook_names: list[str] = []
    needs_logits = True

    def __init__(self) -> None:
        self.state = {"sum": torch.zeros((), dtype=torch.float64), "n": torch.zeros((), dtype=torch.float64)}

    def identity(self) -> str:
        return "loss"

    def update(self, batch: TokenBatch, acts: dict, logits: torch.Tensor | None) -> None:
        has_next = batch.valid[:, :-1] & batch.valid[:, 1:]
        ce = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch.tokens[:, 1:].flatten(), reduction="none")
        self.state["sum"] += ce[has_next.flatten()].double().sum().cpu()
        self.state["n"] += has_next.sum().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    @property
    def loss(self) -> float:
        return float(self.state["sum"] / self.state["n"].clamp(min=1))


def lm_loss(model: HookedTransformer, batches: TokenBatches, desc: str, progress: bool = True) -> float:
    acc = LossAccumulator()
    stream(model, batches, acc, progress=progress, desc=desc)
    return acc.loss


# ----------------------------------------------------------------------------- where the weights sit


def kept_table(masks: dict[str, torch.Tensor], slots: list[MaskSlot], label: str) -> pd.DataFrame:
    """One row per maskable matrix: kept and total weights, with the kept fraction and share."""
    rows = []
    for s in slots:
        k = int(masks[s.name].sum())
        rows.append({"run": label, "layer": s.layer, "block": s.block, "matrix": s.matrix, "name": s.name, "kept": k, "total": s.numel})
    df = pd.DataFrame(rows)
    all_kept = max(int(df["kept"].sum()), 1)
    df["kept_frac"] = df["kept"] / df["total"]
    df["share_of_kept"] = df["kept"] / all_kept
    return df


def block_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Kept fraction and share of the subnetwork per (layer, block)."""
    g = table.groupby(["run", "layer", "block"], as_index=False)[["kept", "total"]].sum()
    tot = g.groupby("run")["kept"].transform("sum").clip(lower=1)
    g["kept_frac"] = g["kept"] / g["total"]
    g["share_of_kept"] = g["kept"] / tot
    return g


# ----------------------------------------------------------------------------- overlap


@dataclass
class Overlap:
    observed: float  # |C0 & C1| / maskable
    null_mean: float
    ratio_to_chance: float
    p_value: float  # (1 + #{null >= observed}) / (1 + n_samples)
    contained: float  # |C0 & C1| / |C0|: share of the first mask inside the second
    n_samples: int


def overlap_with_null(m0: dict[str, torch.Tensor], m1: dict[str, torch.Tensor], n_samples: int = 10_000, seed: int = 0) -> tuple[Overlap, np.ndarray]:
    """Overlap of two masks and its null: both masks placed uniformly at random within each matrix,
    keeping every matrix's counts.

    Shuffling both masks independently within a matrix of n weights with k0 and k1 kept gives an
    overlap count that is hypergeometric(n, k0, k1); matrices are independent, so the null is
    sampled exactly as a sum of hypergeometric draws.
    """
    rng = np.random.default_rng(seed)
    total = sum(m.numel() for m in m0.values())
    inter = sum(int((m0[n].bool() & m1[n].bool()).sum()) for n in m0)
    null = np.zeros(n_samples, dtype=np.int64)
    for n in m0:
        N, k0, k1 = m0[n].numel(), int(m0[n].sum()), int(m1[n].sum())
        if k0 and k1:
            null += rng.hypergeometric(k0, N - k0, k1, size=n_samples)
    null_frac = null / total
    obs = inter / total
    k0_all = sum(int(m.sum()) for m in m0.values())
    mean = float(null_frac.mean())
    return Overlap(
        observed=obs, null_mean=mean, ratio_to_chance=obs / mean if mean > 0 else float("nan"),
        p_value=float((1 + np.sum(null_frac >= obs)) / (1 + n_samples)), contained=inter / k0_all if k0_all else float("nan"),
        n_samples=n_samples,
    ), null_frac


# ----------------------------------------------------------------------------- rotation


def median_rotation_deg(coef: np.ndarray) -> float:
    """Median |angle| (degrees) of the eigenvalues of a square linear map."""
    eig = np.linalg.eigvals(np.asarray(coef, dtype=np.float64))
    return float(np.median(np.abs(np.angle(eig, deg=True))))


class RidgeStatsAccumulator:
    """Sufficient statistics for ridge regressions from every layer's residual to the raw token
    embedding (X_in) and to the final pre-norm residual (X_out), over non-BOS positions.

    Layer 0 is the embedding output (blocks.0.hook_resid_pre), layer l the output of block l-1.
    """

    needs_logits = False

    def __init__(self, model: HookedTransformer):
        self.n_layers = model.cfg.n_layers
        self.hook_names = [hooks.resid_pre(0)] + [hooks.resid_post(l) for l in range(self.n_layers)]
        self.W_E = model.W_E.detach()
        d, L = model.cfg.d_model, self.n_layers + 1
        dev = self.W_E.device
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
        self.state = {"n": z(()), "sx": z(L, d), "sxx": z(L, d, d), "sxin": z(L, d, d), "sxout": z(L, d, d),
                      "sin": z(d), "sout": z(d), "sinin": z(d), "soutout": z(d)}

    def identity(self) -> str:
        return "ridge-stats"

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        keep = batch.valid & ~batch.is_bos
        if not bool(keep.any()):
            return
        x_in = self.W_E[batch.tokens[keep]].double()
        x_out = acts[self.hook_names[-1]][keep].double()
        s = self.state
        s["n"] += keep.sum()
        s["sin"] += x_in.sum(0)
        s["sout"] += x_out.sum(0)
        s["sinin"] += (x_in ** 2).sum(0)
        s["soutout"] += (x_out ** 2).sum(0)
        for l, name in enumerate(self.hook_names):
            x = acts[name][keep].double()
            s["sx"][l] += x.sum(0)
            s["sxx"][l] += x.T @ x
            s["sxin"][l] += x.T @ x_in
            s["sxout"][l] += x.T @ x_out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    def coefficients(self, layer: int, target: str, alpha: float = 1.0) -> np.ndarray:
        """Ridge coefficient matrix [n_targets, n_features] (as scikit-learn's `coef_`), with intercept."""
        s = {k: v.cpu().numpy() for k, v in self.state.items()}
        n = float(s["n"])
        mx = s["sx"][layer] / n
        cxx = s["sxx"][layer] - n * np.outer(mx, mx)
        sy = s["sin"] if target == "in" else s["sout"]
        sxy = s["sxin"][layer] if target == "in" else s["sxout"][layer]
        cxy = sxy - n * np.outer(mx, sy / n)
        w = np.linalg.solve(cxx + alpha * np.eye(cxx.shape[0]), cxy)  # [features, targets]
        return w.T


def rotation_table(model: HookedTransformer, batches: TokenBatches, label: str, alpha: float = 1.0, progress: bool = True) -> pd.DataFrame:
    """Median eigen-angle of the ridge map from each layer to X_in and to X_out."""
    acc = RidgeStatsAccumulator(model)
    stream(model, batches, acc, progress=progress, desc=f"rotation {label}")
    rows = []
    for l in range(acc.n_layers + 1):
        rows.append({"run": label, "layer": l,
                     "to_input_deg": median_rotation_deg(acc.coefficients(l, "in", alpha)),
                     "to_output_deg": median_rotation_deg(acc.coefficients(l, "out", alpha)),
                     "n_tokens": int(acc.state["n"])})
    return pd.DataFrame(rows)
