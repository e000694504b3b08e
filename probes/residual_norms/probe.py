"""Residual norms and logit-lens accuracy per layer: the built-in end-to-end analysis.

For every layer l (0 = embeddings, l = blocks.{l-1}.hook_resid_post), over a corpus slice:
- the mean and std of ||x|| over non-BOS positions, and the mean ||x|| at the first (BOS) position;
- logit lens: ln_final then unembed applied to the residual, scored against the next token
  (top-1 accuracy and cross-entropy). To bound cost the lens is applied to `lens_positions`
  evenly spaced positions per sequence (all positions when it is 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.config import StreamConfig, setting
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.cost import unembed_share
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.slices import stream_corpus


@dataclass
class ResidualNormsConfig(StreamConfig):
    lens_positions: int = setting(32, min=0, max=8192, why="positions per sequence")  # positions per sequence scored by the logit lens; 0 = all

    def validate(self) -> None:
        super().validate()
        if self.lens_positions < 0:
            raise ConfigError(f"lens_positions must be >= 0, got {self.lens_positions}")


@dataclass
class ResidualNormsResult(Result):
    table: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per layer

    def summary(self) -> dict:
        t = self.table
        if t.empty:
            return {}
        last = t.iloc[-1]
        return {
            "layers": int(len(t) - 1),
            "final_top1": round(float(last["lens_top1"]), 4),
            "final_ce": round(float(last["lens_ce"]), 4),
            "max_bos_to_rest_ratio": round(float((t["bos_norm"] / t["mean_norm"]).max()), 2),
            "tokens": int(self.meta.get("slice", {}).get("n_positions", 0)),
        }


class ResidualNormsAccumulator:
    """Streaming sums per layer; float64 for the norm moments."""

    needs_logits = False

    def __init__(self, model: HookedTransformer, lens_positions: int):
        self.model = model
        self.n_layers = model.cfg.n_layers
        self.lens_positions = lens_positions
        self.hook_names = [hooks.EMBED] + ([hooks.POS_EMBED] if model.cfg.positional_embedding_type in ("standard", "shortformer") else []) + [
            hooks.resid_post(l) for l in range(self.n_layers)
        ]
        L = self.n_layers + 1
        dev = next(model.parameters()).device
        z = lambda: torch.zeros(L, dtype=torch.float64, device=dev)  # noqa: E731
        self.state = {"norm_sum": z(), "norm_sq": z(), "count": z(), "bos_sum": z(), "bos_count": z(),
                      "lens_correct": z(), "lens_ce": z(), "lens_count": z()}

    def identity(self) -> str:
        return f"lens{self.lens_positions}"

    def _layers(self, acts: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        resid0 = acts[hooks.EMBED] + acts.get(hooks.POS_EMBED, 0)
        return [resid0] + [acts[hooks.resid_post(l)] for l in range(self.n_layers)]

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        s = self.state
        body = batch.valid & ~batch.is_bos
        # next-token targets: position t predicts t+1 when both are valid
        has_next = torch.zeros_like(batch.valid)
        has_next[:, :-1] = batch.valid[:, :-1] & batch.valid[:, 1:]
        lens_mask = has_next.clone()
        T = batch.tokens.shape[1]
        if self.lens_positions and self.lens_positions < T - 1:
            keep = torch.zeros(T, dtype=torch.bool, device=lens_mask.device)
            keep[torch.linspace(0, T - 2, self.lens_positions, device=lens_mask.device).round().long()] = True
            lens_mask &= keep
        targets = batch.tokens[:, 1:][lens_mask[:, :-1]]
        for l, x in enumerate(self._layers(acts)):
            norms = x.norm(dim=-1).double()
            s["norm_sum"][l] += norms[body].sum()
            s["norm_sq"][l] += (norms[body] ** 2).sum()
            s["count"][l] += body.sum()
            s["bos_sum"][l] += norms[batch.is_bos & batch.valid].sum()
            s["bos_count"][l] += (batch.is_bos & batch.valid).sum()
            if targets.numel():
                lens_logits = self.model.unembed(self.model.ln_final(x[lens_mask][None]))[0].float()
                s["lens_correct"][l] += (lens_logits.argmax(-1) == targets).sum()
                s["lens_ce"][l] += F.cross_entropy(lens_logits, targets, reduction="sum").double()
                s["lens_count"][l] += targets.numel()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    def table(self) -> pd.DataFrame:
        s = {k: v.cpu() for k, v in self.state.items()}
        mean = s["norm_sum"] / s["count"].clamp(min=1)
        var = (s["norm_sq"] / s["count"].clamp(min=1) - mean**2).clamp(min=0)
        return pd.DataFrame({
            "layer": list(range(self.n_layers + 1)),
            "site": ["embed"] + [hooks.resid_post(l) for l in range(self.n_layers)],
            "mean_norm": mean.numpy(),
            "std_norm": var.sqrt().numpy(),
            "bos_norm": (s["bos_sum"] / s["bos_count"].clamp(min=1)).numpy() if s["bos_count"][0] > 0 else float("nan"),
            "lens_top1": (s["lens_correct"] / s["lens_count"].clamp(min=1)).numpy(),
            "lens_ce": (s["lens_ce"] / s["lens_count"].clamp(min=1)).numpy(),
            "n_tokens": s["count"].numpy(),
            "n_lens": s["lens_count"].numpy(),
        })


def run(model: HookedTransformer, corpus: Corpus, config: ResidualNormsConfig) -> ResidualNormsResult:
    acc = ResidualNormsAccumulator(model, config.lens_positions)
    stats, slice_info = stream_corpus(model, corpus, config, acc, desc="residual-norms")
    return ResidualNormsResult(meta={"slice": slice_info}, table=acc.table())


def cost(config: ResidualNormsConfig, model_cfg) -> float | None:
    """Forward token-passes: the slice, plus the logit lens (lens_positions of every seq_len
    positions unembedded at every layer)."""
    if config.max_tokens is None:
        return None
    lens = min(config.lens_positions or config.seq_len, config.seq_len) / config.seq_len
    return config.max_tokens * (1 + lens * (model_cfg.n_layers + 1) * unembed_share(model_cfg))

SPEC = register(ProbeSpec(
    name="residual-norms",
    description="Per-layer residual norms (BOS against the rest) and logit-lens top-1 accuracy over a corpus slice.",
    config_cls=ResidualNormsConfig,
    result_cls=ResidualNormsResult,
    run=run,
    cost=cost,
))
