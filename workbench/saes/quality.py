"""How good an SAE is on held-out text, measured in one streamed pass.

Metrics (over positions that are not BOS, padding or a special token):
- explained variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (the same definition as
  SAE Lens's `ExplainedVarianceCalculator`, accumulated in float64);
- L0: mean number of features above 0 per position;
- dead-feature share: features that never fire on the held-out slice;
- CE increase: next-token cross-entropy with the SAE's reconstruction spliced in at its hook, minus
  the clean cross-entropy; also the zero-ablation CE and "CE loss recovered"
  = (CE_zero - CE_spliced) / (CE_zero - CE_clean).
The splice replaces the activation only at the scored positions: BOS keeps its own residual
(its norm is far outside what the SAE was trained on), and the loss is scored at the positions
whose activation was replaced.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench.config import StreamConfig
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.saes.loading import (
    check_fits,
    encode,
    hook_name,
    prepare,
    reconstruct,
    source_of,
)
from workbench.slices import stream_corpus

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class SAEQuality:
    explained_variance: float
    l0: float
    dead_share: float
    n_dead: int
    d_sae: int
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_increase: float
    ce_loss_recovered: float
    n_tokens: int
    n_predictions: int
    slice: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def special_token_ids(model: HookedTransformer) -> list[int]:
    """BOS, EOS and PAD ids of the model's tokenizer (excluded from SAE training and metrics)."""
    tok = model.tokenizer
    if tok is None:
        return []
    ids = {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}
    return sorted(i for i in ids if i is not None)


def scored_mask(batch: TokenBatch, exclude: torch.Tensor) -> torch.Tensor:
    """Positions an SAE metric counts: valid, not BOS, not an excluded (special) token."""
    return batch.valid & ~batch.is_bos & ~torch.isin(batch.tokens, exclude)


class SAEQualityAccumulator:
    """Streaming sums for `SAEQuality`; every sum is a float64/int64 tensor (checkpointable)."""

    needs_logits = True

    def __init__(self, model: HookedTransformer, sae: "SAE", exclude_ids: Iterable[int]):
        self.model, self.sae = model, sae
        self.hook = hook_name(sae)
        self.hook_names = [self.hook]
        # blocks.L.hook_resid_pre is the input of block L, blocks.L.hook_resid_post the input of block L + 1
        m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", self.hook)
        self._restart = None if m is None else int(m.group(1)) + (m.group(2) == "post")
        dev = next(model.parameters()).device
        self.exclude = torch.tensor(sorted(exclude_ids), dtype=torch.long, device=dev)
        d, f = sae.cfg.d_in, sae.cfg.d_sae
        z = lambda *s, dt=torch.float64: torch.zeros(*s, dtype=dt, device=dev)  # noqa: E731
        self.state = {
            "sum_x": z(d), "sum_sq": z(1), "sum_res": z(1), "n": z(1, dt=torch.int64), "l0_sum": z(1),
            "fired": z(f, dt=torch.bool), "ce": z(3), "n_pred": z(1, dt=torch.int64),
        }

    def identity(self) -> str:
        return source_of(self.sae)

    @torch.no_grad()
    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        s = self.state
        mask = scored_mask(batch, self.exclude)
        x = acts[self.hook][mask].float()
        feats = encode(self.sae, x)
        x_hat = reconstruct(self.sae, x).float()
        x64 = x.double()
        s["sum_x"] += x64.sum(0)
        s["sum_sq"] += x64.pow(2).sum()
        s["sum_res"] += (x64 - x_hat.double()).pow(2).sum()
        s["n"] += x.shape[0]
        active = feats > 0
        s["l0_sum"] += active.sum()
        s["fired"] |= active.any(0)

        pred = mask[:, :-1] & batch.valid[:, 1:]
        targets = batch.tokens[:, 1:][pred]
        if targets.numel() == 0:
            return
        spliced = self._logits_with(batch.tokens, acts[self.hook], mask, lambda v: reconstruct(self.sae, v))
        zeroed = self._logits_with(batch.tokens, acts[self.hook], mask, torch.zeros_like)
        for i, lg in enumerate((logits, spliced, zeroed)):
            s["ce"][i] += F.cross_entropy(lg[:, :-1][pred].float(), targets, reduction="sum").double()
        s["n_pred"] += targets.numel()

    def _logits_with(self, tokens: torch.Tensor, act: torch.Tensor, mask: torch.Tensor, replace) -> torch.Tensor:
        """Logits with the activation replaced at `mask`. A residual-stream hook restarts the forward
        pass from the edited residual (`start_at_layer`), so only the blocks after the hook run again."""
        if self._restart is not None:
            resid = act.clone()
            resid[mask] = replace(act[mask])
            return self.model(resid, start_at_layer=self._restart, tokens=tokens, return_type="logits")

        def hook(act: torch.Tensor, hook) -> torch.Tensor:
            out = act.clone()
            out[mask] = replace(act[mask])
            return out

        return self.model.run_with_hooks(tokens, return_type="logits", fwd_hooks=[(self.hook, hook)])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    def result(self, slice_info: dict) -> SAEQuality:
        s = {k: v.cpu() for k, v in self.state.items()}
        n = int(s["n"])
        mean = s["sum_x"] / max(n, 1)
        total_var = float(s["sum_sq"]) - n * float(mean.pow(2).sum())
        ev = 1.0 - float(s["sum_res"]) / total_var if total_var > 0 else float("nan")
        n_pred = int(s["n_pred"])
        clean, spliced, zero = (float(v) / max(n_pred, 1) for v in s["ce"])
        d_sae = int(s["fired"].numel())
        n_dead = int((~s["fired"]).sum())
        denom = zero - clean
        return SAEQuality(
            explained_variance=ev, l0=float(s["l0_sum"]) / max(n, 1), dead_share=n_dead / d_sae, n_dead=n_dead, d_sae=d_sae,
            ce_clean=clean, ce_spliced=spliced, ce_zero_ablation=zero, ce_increase=spliced - clean,
            ce_loss_recovered=(zero - spliced) / denom if denom != 0 else float("nan"),
            n_tokens=n, n_predictions=n_pred, slice=slice_info,
        )


def evaluate_sae(
    model: HookedTransformer,
    sae: "SAE",
    corpus: Corpus,
    cfg: StreamConfig | None = None,
    progress: bool = True,
) -> SAEQuality:
    """Quality of `sae` in `model` on a held-out slice (default: the validation split, 10k tokens)."""
    cfg = cfg or StreamConfig(split="validation", max_tokens=10_000, seq_len=128, batch_size=8)
    check_fits(sae, model)
    prepare(sae, model)  # its declared preprocessing, honoured on this model
    acc = SAEQualityAccumulator(model, sae, special_token_ids(model))
    _, slice_info = stream_corpus(model, corpus, cfg, acc, desc=f"sae-quality {hook_name(sae)}", progress=progress)
    return acc.result(slice_info)


# What makes an SAE too weak to read features from without a warning: it reconstructs under 90% of
# the activation's variance, more than a tenth of its latents never fire, or splicing it in costs
# more than 0.5 nats of next-token loss (its features then describe a different model).
WEAK_EXPLAINED_VARIANCE = 0.90
WEAK_DEAD_SHARE = 0.10
WEAK_CE_INCREASE = 0.5


def quality_badge(quality: dict | None) -> dict:
    """The badge shown beside an SAE wherever it is used: a one-line text (explained variance, dead
    share, CE increase when spliced in, L0), whether it is weak, and why. Without a measured
    quality the badge says so (weak is None: unknown)."""
    if not quality:
        return {"text": "quality not measured", "weak": None, "reasons": []}
    ev, dead, ce, l0 = (quality.get(k) for k in ("explained_variance", "dead_share", "ce_increase", "l0"))
    parts = [f"explained var. {ev:.3f}" if ev is not None else "", f"dead {dead:.1%}" if dead is not None else "",
             f"CE +{ce:.3f} nats" if ce is not None else "", f"L0 {l0:.1f}" if l0 is not None else ""]
    reasons = [r for r, bad in ((f"explained variance {ev:.3f} < {WEAK_EXPLAINED_VARIANCE}", ev is not None and ev < WEAK_EXPLAINED_VARIANCE),
                                (f"{dead:.0%} of latents dead (> {WEAK_DEAD_SHARE:.0%})" if dead is not None else "",
                                 dead is not None and dead > WEAK_DEAD_SHARE),
                                (f"splicing it in costs {ce:.2f} nats (> {WEAK_CE_INCREASE})" if ce is not None else "",
                                 ce is not None and ce > WEAK_CE_INCREASE)) if bad]
    return {"text": " · ".join(p for p in parts if p), "weak": bool(reasons), "reasons": reasons}
