"""Attention sinks, value-state drains, residual-state peaks and active/dormant heads
(Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token
Phenomena in LLMs").

Per head (every layer, every query head), on a streamed corpus slice of each domain:
- sink mass: mean attention weight on position 0 over valid query positions q >= 1;
- Δlogit: score(q, 0) minus the mean score(q, k) over keys k = 1..q-1 (q >= 2), as a mean and as
  10/50/90% quantiles from a per-head histogram (scores are TransformerLens's `hook_attn_scores`,
  already divided by √d_head);
- value norms after W_O: ||v_t W_O^h|| per position t, with query head h reading the value of its
  KV group h // (n_heads / n_kv_heads) (grouped-query attention); b_O is not attributable to a
  position and is left out;
- zero-ablation: the change of next-token loss when the head's output z is zeroed, on a small
  slice of the domain (chunks spread evenly over the survey slice). Each layer is re-run from a
  cached resid_pre with the batch repeated once per head (copy h has head h zeroed), so a layer
  costs one batched forward of the layers above it.
Per layer: the residual norm at position 0 against the mean over the other positions
(layer 0 = embeddings, layer l = output of block l-1).

A head is dormant on a domain when its sink mass is at least `dormant_sink` and zeroing it moves
the loss by at most `dormant_loss` nats (thresholds are parameters; the paper gives none for LMs).

On a Bigram-Backcopy model (a checkpoint from `workbench.tasks`), the same measurements run on a
fixed, seeded batch of BB sequences, with the paper's split by query type (trigger / non-trigger;
its sink mass is over non-trigger queries), the backcopy and bigram risks with the exact optimum
and with the oracle risk (the true transition matrix's cross-entropy on the same bigram positions,
the paired reference: the batch's own oracle risk varies by several percent around the optimum),
the paper's ablations (all attention or all MLPs removed), the token-level active/dormant test
(input [⟨s⟩, all non-triggers, tok]; tok is active when the last position's attention on ⟨s⟩ is
below `dormant_threshold`), and the same quantities at every saved checkpoint of the training run.

Deviation from the paper: the LM domains are Brown (prose) and the Python standard library (code)
instead of Wikipedia and GitHub, and the slices are small (CPU budget); BOS handling is recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.config import StreamConfig, setting
from workbench.corpora import known_corpora, load_corpus
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.errors import ConfigError, PromptTooLongError
from workbench.models.info import model_info
from workbench.probe_api import ProbeSpec, register
from workbench.progress import progress_bar
from workbench.results import Result
from workbench.slices import corpus_batches, stream_corpus

QUANTILES = (0.1, 0.5, 0.9)
# BB results: the summary's risk keys (results stored before the paired comparison lack the last two)
BB_SUMMARY_KEYS = ("backcopy_risk", "bigram_risk", "bigram_optimum", "bigram_oracle_risk", "bigram_paired_gap")
N_BINS = 240


@dataclass
class AttentionSinksConfig(StreamConfig):
    max_tokens: int | None = 8192  # survey positions per domain
    domains: list[str] = setting(default_factory=lambda: ["python-stdlib"], names="corpus", max_items=8, why="each domain is surveyed and ablated")  # besides the given corpus
    ablation_tokens: int = setting(1024, min=0, max=1_000_000, why="one forward pass per head per batch")  # per domain; 0 = no head ablation
    dormant_sink: float = setting(0.7, min=0.0, max=1.0, why="a share of attention")
    dormant_loss: float = setting(0.01, min=0.0, max=100.0, why="a loss change in nats")
    delta_range: float = setting(30.0, min=0.1, max=1000.0, why="the histogram range in logits")  # Δlogit histogram covers [-range, range]; outside values go to the edge bins
    example_len: int = setting(32, min=1, max=8192, why="longer than any supported context")  # positions kept of one example attention pattern per domain
    bb_sequences: int = setting(64, min=1, max=4096, why="one evaluation batch in memory")  # BB models: size of the fixed evaluation batch (sequences of 256)
    dynamics_sequences: int = setting(32, min=1, max=4096, why="one evaluation batch in memory")  # BB models: the first this many of them, at every checkpoint
    bb_seed: int = setting(2024, min=0, max=2**31 - 1, why="seeds are 31-bit")
    dormant_threshold: float = setting(0.89, min=0.0, max=1.0, why="a share of attention")  # BB token-level test (paper: 0.89)
    dynamics: bool = True  # BB models: measure every saved checkpoint of the run

    def validate(self) -> None:
        super().validate()
        if self.ablation_tokens < 0 or self.bb_sequences < 1 or self.dynamics_sequences < 1 or self.example_len < 2:
            raise ConfigError("ablation_tokens must be >= 0, bb_sequences and dynamics_sequences >= 1, example_len >= 2")
        for name in ("dormant_sink", "dormant_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.delta_range <= 0 or self.dormant_loss < 0:
            raise ConfigError("delta_range must be positive and dormant_loss non-negative")


@dataclass
class AttentionSinksResult(Result):
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (domain, layer, head)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (domain, layer)
    profiles: dict[str, torch.Tensor] = field(default_factory=dict)  # "sink|<domain>", "value|<domain>": [L, H, T]
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # <domain>: [L, H, Te, Te] pattern
    example_tokens: dict[str, list[str]] = field(default_factory=dict)
    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # BB: token-level active/dormant
    dynamics: pd.DataFrame = field(default_factory=pd.DataFrame)  # BB: per (step, layer)
    bb: dict[str, Any] = field(default_factory=dict)  # BB: risks, optimum, oracle risk, paired gap, ablations

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(self.heads["domain"])) if not self.heads.empty else []

    def summary(self) -> dict:
        out: dict[str, Any] = {}
        for d in self.domains:
            h = self.heads[self.heads["domain"] == d]
            out[f"{d}:mean_sink"] = round(float(h["sink_mass"].mean()), 4)
            if h["delta_loss"].notna().any():
                out[f"{d}:dormant_heads"] = int(h["dormant"].sum())
        if self.bb:
            out.update({k: round(float(v), 5) for k, v in self.bb.items() if k in BB_SUMMARY_KEYS})
        if not self.tokens.empty:
            last = self.tokens[self.tokens["layer"] == self.tokens["layer"].max()]
            out["token_rule_agreement"] = round(float(last["agrees"].mean()), 4)
        return out


# ----------------------------------------------------------------------------- per-batch reductions


def delta_logit(scores: torch.Tensor) -> torch.Tensor:
    """[..., Q, K] masked scores -> [..., Q]: score to key 0 minus the mean score to keys 1..q-1
    (NaN where q < 2). Queries are the last Q of the K positions."""
    n_q, n_k = scores.shape[-2], scores.shape[-1]
    q = torch.arange(n_k - n_q, n_k, device=scores.device)
    k = torch.arange(n_k, device=scores.device)
    others = (k[None, :] >= 1) & (k[None, :] < q[:, None])
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    mean_others = torch.where(others, scores, zero).sum(-1) / (q - 1).clamp(min=1).to(scores.dtype)
    out = scores[..., 0] - mean_others
    return torch.where(q >= 2, out, torch.full((), float("nan"), dtype=out.dtype, device=out.device))


def head_groups(n_heads: int, n_value_heads: int) -> torch.Tensor:
    """Query head -> index of the value head it reads (TransformerLens repeats KV heads with
    repeat_interleave, so query head h reads KV head h // (n_heads / n_kv))."""
    if n_heads % n_value_heads:
        raise ConfigError(f"{n_heads} query heads cannot share {n_value_heads} value heads evenly")
    return torch.arange(n_heads) // (n_heads // n_value_heads)


def value_norms(v: torch.Tensor, W_O: torch.Tensor) -> torch.Tensor:
    """||v_t W_O^h|| for v [B, T, n_kv, d_head] and W_O [H, d_head, d_model] -> [B, T, H]."""
    groups = head_groups(W_O.shape[0], v.shape[2]).to(v.device)
    return torch.einsum("bthd,hde->bthe", v[:, :, groups], W_O.to(v.dtype)).norm(dim=-1)


class SinkHooks:
    """Hooks that reduce each layer's attention to small per-batch tensors as the forward runs:
    sink weight [B, H, T], Δlogit [B, H, T], value norms [B, T, H], residual norms [B, T]."""

    def __init__(self, model: HookedTransformer, example_len: int = 0):
        self.model, self.example_len = model, example_len
        self.L = model.cfg.n_layers
        self.pending: dict[str, dict[int, torch.Tensor]] = {}
        self.example: dict[int, torch.Tensor] = {}
        self.want_example = example_len > 0
        # named boolean key masks, [B, K] (the same keys for every query) or [B, Q, K]: each query's
        # attention on its masked keys is also summed, as its own reduction under that name
        self.masks: dict[str, torch.Tensor] = {}
        self.clear()

    def clear(self) -> None:
        self.pending = {"sink": {}, "dl": {}, "vn": {}, "rn": {}}

    def hooks(self) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = [(hooks.resid_pre(0), self._resid(0))]
        for l in range(self.L):
            out += [
                (hooks.attn_scores(l), self._scores(l)),
                (hooks.attn_pattern(l), self._pattern(l)),
                (hooks.attn_v(l), self._values(l)),
                (hooks.resid_post(l), self._resid(l + 1)),
            ]
        return out

    def _scores(self, l: int):
        def fn(scores: torch.Tensor, hook) -> None:
            self.pending["dl"][l] = delta_logit(scores.float())
        return fn

    def _pattern(self, l: int):
        def fn(pattern: torch.Tensor, hook) -> None:
            self.pending["sink"][l] = pattern[..., 0].float()
            for name, mask in self.masks.items():
                m = mask.to(pattern.device).float()
                m = m[:, None, None, :] if m.dim() == 2 else m[:, None]  # -> [B, 1, 1 or Q, K]
                self.pending.setdefault(name, {})[l] = (pattern.float() * m).sum(-1)
            if self.want_example:
                te = min(self.example_len, pattern.shape[-1])
                self.example[l] = pattern[0, :, :te, :te].detach().float().clone()
        return fn

    def _values(self, l: int):
        W_O = self.model.blocks[l].attn.W_O

        def fn(v: torch.Tensor, hook) -> None:
            self.pending["vn"][l] = value_norms(v.float(), W_O.float())
        return fn

    def _resid(self, i: int):
        def fn(x: torch.Tensor, hook) -> None:
            self.pending["rn"][i] = x.float().norm(dim=-1)
        return fn

    def stacked(self) -> dict[str, torch.Tensor]:
        """This batch's reductions: sink/dl [L, B, H, T], vn [L, B, H, T], rn [L+1, B, T], and one
        [L, B, H, T] per named key mask (each query's attention on its masked keys)."""
        p = self.pending
        return {**{name: torch.stack([p[name][l] for l in range(self.L)]) for name in self.masks},
            "sink": torch.stack([p["sink"][l] for l in range(self.L)]),
            "dl": torch.stack([p["dl"][l] for l in range(self.L)]),
            "vn": torch.stack([p["vn"][l].transpose(1, 2) for l in range(self.L)]),
            "rn": torch.stack([p["rn"][i] for i in range(self.L + 1)]),
        }


# ----------------------------------------------------------------------------- LM survey accumulator


class HeadSurveyAccumulator:
    """Per-head running sums over a streamed slice (float64): nothing of size tokens x d_model or
    any attention pattern outlives its batch. Its `SinkHooks` must be active during the stream."""

    hook_names: list[str] = []  # the reductions come from `self.sink_hooks`, not from captures
    needs_logits = True  # the clean next-token loss of the domain

    def __init__(self, model: HookedTransformer, seq_len: int, delta_range: float, example_len: int):
        cfg = model.cfg
        self.L, self.H, self.T = cfg.n_layers, cfg.n_heads, seq_len
        self.groups = head_groups(cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads)
        self.delta_range = delta_range
        self.sink_hooks = SinkHooks(model, example_len)
        dev = next(model.parameters()).device
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
        L, H, T = self.L, self.H, self.T
        self.state = {
            "sink_sum": z(L, H), "sink_pos": z(L, H, T), "q_count": z(T),
            "dl_sum": z(L, H), "dl_sq": z(L, H), "dl_count": z(1), "dl_hist": z(L, H, N_BINS),
            "v_first": z(L, H), "v_rest": z(L, H), "v_pos": z(L, H, T), "pos_count": z(T),
            "r_first": z(L + 1), "r_rest": z(L + 1), "r_rest_sq": z(L + 1), "first_count": z(1), "rest_count": z(1),
            "loss_sum": z(1), "loss_count": z(1),
            "example": z(L, H, example_len, example_len), "example_tokens": z(example_len) - 1,
        }

    def identity(self) -> str:
        return f"T{self.T}-r{self.delta_range}-b{N_BINS}-e{self.sink_hooks.example_len}"

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        s, r = self.state, self.sink_hooks.stacked()
        self.sink_hooks.clear()
        valid = batch.valid
        T = valid.shape[1]
        pos = torch.arange(T, device=valid.device)
        query = valid & (pos >= 1)
        first = valid & (pos == 0)
        qf = query.double()
        s["sink_sum"] += torch.einsum("lbht,bt->lh", r["sink"].double(), qf)
        s["sink_pos"][..., :T] += torch.einsum("lbht,bt->lht", r["sink"].double(), qf)
        s["q_count"][:T] += qf.sum(0)
        dmask = valid & (pos >= 2)
        dl = r["dl"].double().nan_to_num(0.0)
        dm = dmask.double()
        s["dl_sum"] += torch.einsum("lbht,bt->lh", dl, dm)
        s["dl_sq"] += torch.einsum("lbht,bt->lh", dl**2, dm)
        s["dl_count"] += dm.sum()
        sel = dl.permute(0, 2, 1, 3)[:, :, dmask]  # [L, H, n]
        bins = ((sel + self.delta_range) / (2 * self.delta_range) * N_BINS).floor().clamp(0, N_BINS - 1).long()
        s["dl_hist"].scatter_add_(2, bins, torch.ones_like(sel))
        vf, vr = first.double(), query.double()
        vn = r["vn"].double()
        s["v_first"] += torch.einsum("lbht,bt->lh", vn, vf)
        s["v_rest"] += torch.einsum("lbht,bt->lh", vn, vr)
        s["v_pos"][..., :T] += torch.einsum("lbht,bt->lht", vn, valid.double())
        s["pos_count"][:T] += valid.double().sum(0)
        rn = r["rn"].double()
        s["r_first"] += torch.einsum("lbt,bt->l", rn, vf)
        s["r_rest"] += torch.einsum("lbt,bt->l", rn, vr)
        s["r_rest_sq"] += torch.einsum("lbt,bt->l", rn**2, vr)
        s["first_count"] += vf.sum()
        s["rest_count"] += vr.sum()
        if logits is not None:
            has_next = valid[:, :-1] & valid[:, 1:]
            ce = F.cross_entropy(logits[:, :-1][has_next].float(), batch.tokens[:, 1:][has_next], reduction="sum")
            s["loss_sum"] += ce.double()
            s["loss_count"] += has_next.sum()
        if self.sink_hooks.want_example and self.sink_hooks.example:
            te = self.sink_hooks.example[0].shape[-1]
            s["example"][:, :, :te, :te] = torch.stack([self.sink_hooks.example[l] for l in range(self.L)]).double()
            s["example_tokens"][:te] = batch.tokens[0, :te].double()
            self.sink_hooks.want_example = False

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}
        self.sink_hooks.want_example = bool((self.state["example_tokens"] < 0).all())

    # ----- tables
    def head_table(self, domain: str) -> pd.DataFrame:
        s = {k: v.cpu() for k, v in self.state.items()}
        n_q = s["q_count"].sum().clamp(min=1)
        n_dl = s["dl_count"].clamp(min=1)
        dl_mean = s["dl_sum"] / n_dl
        dl_std = (s["dl_sq"] / n_dl - dl_mean**2).clamp(min=0).sqrt()
        qs = histogram_quantiles(s["dl_hist"], self.delta_range, QUANTILES)
        rows = []
        for l in range(self.L):
            for h in range(self.H):
                rows.append({
                    "domain": domain, "layer": l, "head": h, "kv_group": int(self.groups[h]),
                    "sink_mass": float(s["sink_sum"][l, h] / n_q),
                    "delta_logit": float(dl_mean[l, h]), "delta_logit_std": float(dl_std[l, h]),
                    "delta_logit_q10": float(qs[l, h, 0]), "delta_logit_q50": float(qs[l, h, 1]), "delta_logit_q90": float(qs[l, h, 2]),
                    "value_norm_first": float(s["v_first"][l, h] / s["first_count"].clamp(min=1)),
                    "value_norm_rest": float(s["v_rest"][l, h] / s["rest_count"].clamp(min=1)),
                })
        return pd.DataFrame(rows)

    def layer_table(self, domain: str) -> pd.DataFrame:
        s = {k: v.cpu() for k, v in self.state.items()}
        n_r = s["rest_count"].clamp(min=1)
        mean = s["r_rest"] / n_r
        std = (s["r_rest_sq"] / n_r - mean**2).clamp(min=0).sqrt()
        first = s["r_first"] / s["first_count"].clamp(min=1)
        return pd.DataFrame({
            "domain": domain, "layer": np.arange(self.L + 1),
            "site": ["embed"] + [hooks.resid_post(l) for l in range(self.L)],
            "resid_first": first.numpy(), "resid_rest": mean.numpy(), "resid_rest_std": std.numpy(),
            "ratio": (first / mean.clamp(min=1e-12)).numpy(),
        })

    def profiles(self) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.state
        sink = s["sink_pos"] / s["q_count"].clamp(min=1)
        val = s["v_pos"] / s["pos_count"].clamp(min=1)
        return sink.float().cpu(), val.float().cpu()


def histogram_quantiles(hist: torch.Tensor, rng: float, qs: tuple[float, ...]) -> torch.Tensor:
    """Quantiles from [..., n_bins] counts over [-rng, rng], interpolated within the bin."""
    cdf = hist.cumsum(-1)
    total = cdf[..., -1:].clamp(min=1)
    width = 2 * rng / hist.shape[-1]
    out = []
    for q in qs:
        target = q * total
        idx = torch.searchsorted(cdf.contiguous(), target.contiguous()).clamp(max=hist.shape[-1] - 1)
        below = torch.where(idx > 0, cdf.gather(-1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
        inside = hist.gather(-1, idx).clamp(min=1e-12)
        frac = ((target - below) / inside).clamp(0, 1)
        out.append(-rng + (idx.double() + frac) * width)
    return torch.cat(out, -1)


# ----------------------------------------------------------------------------- head zero-ablation


def _chunked_token_ce(model: HookedTransformer, resid: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                      rows: int = 8) -> torch.Tensor:
    """Per-token next-token CE from final residuals ([rows, T], 0 where `mask` is 0), unembedding
    `rows` sequences at a time."""
    out = []
    for i in range(0, resid.shape[0], rows):
        logits = model.unembed(model.ln_final(resid[i : i + rows])).float()
        ce = F.cross_entropy(logits.transpose(1, 2), targets[i : i + rows], reduction="none")
        out.append(ce * mask[i : i + rows])
    return torch.cat(out)


Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs [B, T], targets [B, T], scored [B, T]


class HeadAblation(NamedTuple):
    """Zero-ablation of every head: the clean mean loss, the mean loss with each head zeroed
    ([L, H]), the standard error of each head's loss change ([L, H]; per scored token, treating
    tokens as independent, so it understates the spread when nearby tokens move together) and the
    cost of the run."""

    clean: float
    ablated: torch.Tensor
    delta_se: torch.Tensor
    cost: dict[str, float]


def next_token_chunk(tokens: torch.Tensor, valid: torch.Tensor) -> Chunk:
    """Inputs, next-token targets and the positions that have a valid next token."""
    targets = torch.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    scored = torch.zeros_like(valid)
    scored[:, :-1] = valid[:, :-1] & valid[:, 1:]
    return tokens, targets, scored


@torch.inference_mode()
def head_ablation(model: HookedTransformer, chunks: list[Chunk], desc: str, progress: bool = True) -> HeadAblation:
    """Mean loss on the scored positions, clean and with each head's z zeroed ([L, H]), over
    `chunks`, with the per-token standard error of each loss change. Layer l re-runs only blocks
    l.. from the cached resid_pre, with the batch repeated once per head (copy h has head h zeroed)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    device = next(model.parameters()).device
    clean_sum, count = 0.0, 0
    abl_sum = torch.zeros(L, H, dtype=torch.float64)
    diff_sq = torch.zeros(L, H, dtype=torch.float64)  # sum over scored tokens of (ablated - clean CE)^2
    n_block_runs = 0
    t0 = time.perf_counter()
    bar = progress_bar(len(chunks) * L, desc, unit="layer", enabled=progress)
    try:
        for tokens, targets, scored in chunks:
            tokens, targets, mask = tokens.to(device), targets.to(device), scored.to(device).float()
            B = tokens.shape[0]
            resid: dict[int, torch.Tensor] = {}

            def keep(x: torch.Tensor, hook) -> None:
                resid[int(hook.name.split(".")[1])] = x

            with model.hooks(fwd_hooks=[(hooks.resid_pre(l), keep) for l in range(L)]):
                final = model(tokens, stop_at_layer=L)
            clean_ce = _chunked_token_ce(model, final, targets, mask)
            clean_sum += float(clean_ce.sum())
            count += int(mask.sum())
            keep_heads = torch.ones(H * B, 1, H, 1, device=device, dtype=final.dtype)
            for c in range(H):
                keep_heads[c * B : (c + 1) * B, 0, c, 0] = 0.0
            for l in range(L):
                x = resid[l].repeat(H, 1, 1)

                def zero_head(z: torch.Tensor, hook) -> torch.Tensor:
                    return z * keep_heads.to(z.dtype)

                with model.hooks(fwd_hooks=[(hooks.attn_z(l), zero_head)]):
                    out = model(x, start_at_layer=l, stop_at_layer=L)
                ce = _chunked_token_ce(model, out, targets.repeat(H, 1), mask.repeat(H, 1)).view(H, B, -1)
                abl_sum[l] += ce.sum((1, 2)).double().cpu()
                diff_sq[l] += ((ce - clean_ce[None]) ** 2).sum((1, 2)).double().cpu()
                n_block_runs += (L - l) * H * B
                bar.update(1)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    n_seqs = sum(c[0].shape[0] for c in chunks)
    cost = {"ablation_seconds": seconds, "ablation_sequences": n_seqs,
            "forward_equivalents": n_block_runs / max(L * n_seqs, 1) + 1.0}
    n = max(count, 1)
    mean_diff = abl_sum / n - clean_sum / n
    var = (diff_sq / n - mean_diff**2).clamp(min=0) * n / max(n - 1, 1)
    return HeadAblation(clean_sum / n, abl_sum / n, (var / n).sqrt(), cost)


def spread_chunks(batches, n_chunks: int) -> list[Chunk]:
    """`n_chunks` sequences taken evenly over all chunks of a TokenBatches, regrouped into batches."""
    B = batches.spec.batch_size
    picks = np.unique(np.linspace(0, batches.n_chunks - 1, min(n_chunks, batches.n_chunks)).round().astype(int))
    toks, vals, cache = [], [], {}
    for c in picks:
        b, r = divmod(int(c), B)
        if b not in cache:
            cache = {b: batches.batch(b)}
        toks.append(cache[b].tokens[r])
        vals.append(cache[b].valid[r])
    return [next_token_chunk(torch.stack(toks[i : i + B]), torch.stack(vals[i : i + B])) for i in range(0, len(toks), B)]


# ----------------------------------------------------------------------------- domains


def parse_domain(spec: str) -> tuple[str, list[str] | None]:
    """'name' or '<built-in name>:g1,g2' (a genre filter, e.g. 'brown:j')."""
    name, _, genres = spec.partition(":")
    if genres and name in known_corpora():
        return name, [g for g in genres.split(",") if g]
    return spec, None


def domain_label(corpus: Corpus) -> str:
    return corpus.name + (":" + ",".join(corpus.genres) if corpus.genres else "")


def load_domain(spec: str) -> Corpus:
    name, genres = parse_domain(spec)
    corpus = load_corpus(name)
    return corpus.filter_genres(genres) if genres else corpus


def survey_domain(model: HookedTransformer, corpus: Corpus, config: AttentionSinksConfig) -> dict[str, Any]:
    """The streamed per-head survey and the head ablation of one domain."""
    label = domain_label(corpus)
    acc = HeadSurveyAccumulator(model, config.seq_len, config.delta_range, config.example_len)
    with model.hooks(fwd_hooks=acc.sink_hooks.hooks()):
        stats, slice_info = stream_corpus(model, corpus, config, acc, desc=f"sinks-{label}")
    heads, layers = acc.head_table(label), acc.layer_table(label)
    clean = float(acc.state["loss_sum"] / acc.state["loss_count"].clamp(min=1))
    heads["loss_clean_survey"] = clean
    cost: dict[str, float] = {}
    if config.ablation_tokens > 0:
        batches = corpus_batches(model, corpus, config)
        chunks = spread_chunks(batches, max(1, config.ablation_tokens // config.seq_len))
        abl = head_ablation(model, chunks, f"head ablation {label}")
        cost = abl.cost
        heads["loss_clean"] = abl.clean
        heads["loss_ablated"] = abl.ablated.flatten().numpy()
        heads["delta_loss"] = heads["loss_ablated"] - abl.clean
        heads["delta_loss_se"] = abl.delta_se.flatten().numpy()
    else:
        heads["loss_clean"] = heads["loss_ablated"] = heads["delta_loss"] = heads["delta_loss_se"] = float("nan")
    heads["dormant"] = (heads["sink_mass"] >= config.dormant_sink) & (heads["delta_loss"].abs() <= config.dormant_loss)
    sink_prof, val_prof = acc.profiles()
    ex_ids = acc.state["example_tokens"].long().cpu()
    ex_ids = ex_ids[ex_ids >= 0]
    tok = model.tokenizer
    ex_tokens = [tok.decode([int(i)]) for i in ex_ids] if tok is not None else [str(int(i)) for i in ex_ids]
    te = len(ex_tokens)
    return {
        "label": label, "heads": heads, "layers": layers, "sink": sink_prof, "value": val_prof,
        "example": acc.state["example"][:, :, :te, :te].float().cpu(), "example_tokens": ex_tokens,
        "meta": {**slice_info, **cost, "survey_tokens_per_s": stats.tokens_per_s},
    }


def domain_contrast(heads: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per head: sink mass and zero-ablation loss change on domains a and b, and their differences,
    sorted by how much the head's dormancy differs (|Δ sink mass|, then |Δ loss change|)."""
    cols = ["layer", "head", "sink_mass", "delta_loss", "dormant"] + (["delta_loss_se"] if "delta_loss_se" in heads else [])
    ha = heads[heads["domain"] == a][cols].set_index(["layer", "head"]).add_suffix("_a")
    hb = heads[heads["domain"] == b][cols].set_index(["layer", "head"]).add_suffix("_b")
    if ha.empty or hb.empty:
        raise ConfigError(f"domains {a!r} and {b!r} must both be in the result; it has {sorted(heads['domain'].unique())}")
    t = ha.join(hb)
    t["sink_diff"] = t["sink_mass_b"] - t["sink_mass_a"]
    t["delta_loss_diff"] = t["delta_loss_b"] - t["delta_loss_a"]
    t["flips"] = t["dormant_a"] != t["dormant_b"]
    t["score"] = t["sink_diff"].abs() + t["delta_loss_diff"].abs().fillna(0)
    return t.reset_index().sort_values("score", ascending=False, ignore_index=True)


def survey(model: HookedTransformer, corpus: Corpus, config: AttentionSinksConfig) -> AttentionSinksResult:
    if model.tokenizer is None:
        raise ConfigError("the head survey needs a model with a tokenizer")
    domains = {domain_label(corpus): corpus}
    for spec in config.domains:
        c = load_domain(spec)
        domains.setdefault(domain_label(c), c)
    parts = [survey_domain(model, c, config) for c in domains.values()]
    res = AttentionSinksResult(
        heads=pd.concat([p["heads"] for p in parts], ignore_index=True),
        layers=pd.concat([p["layers"] for p in parts], ignore_index=True),
        profiles={**{f"sink|{p['label']}": p["sink"] for p in parts}, **{f"value|{p['label']}": p["value"] for p in parts}},
        examples={p["label"]: p["example"] for p in parts},
        example_tokens={p["label"]: p["example_tokens"] for p in parts},
    )
    info = model_info(model)
    res.meta.update({"domains": {p["label"]: p["meta"] for p in parts}, "prepend_bos": config.prepend_bos,
                     "bos_token_id": info.bos_token_id, "kind": "lm"})
    return res


# ----------------------------------------------------------------------------- BB models


def _batched(x: torch.Tensor, size: int) -> Iterator[torch.Tensor]:
    for i in range(0, x.shape[0], size):
        yield x[i : i + size]


@torch.inference_mode()
def reduce_inputs(model: HookedTransformer, inputs: torch.Tensor, targets: torch.Tensor | None = None,
                  batch_size: int = 32, key_mask: torch.Tensor | None = None, same_token: bool = False) -> dict[str, torch.Tensor]:
    """The SinkHooks reductions over all rows of `inputs` (small fixed batches: BB data, prompts),
    with `targets` the per-token cross-entropy "ce" [N, T] from the same forward pass, with
    `key_mask` [N, T] the attention each query puts on the masked keys ("km"), and with
    `same_token` the attention each query puts on keys holding its own token, itself included ("st")."""
    sinks = SinkHooks(model)
    device = next(model.parameters()).device
    parts: list[dict[str, torch.Tensor]] = []
    with model.hooks(fwd_hooks=sinks.hooks()):
        for i, x in enumerate(_batched(inputs, batch_size)):
            if key_mask is not None:
                sinks.masks["km"] = key_mask[i * batch_size : i * batch_size + x.shape[0]]
            if same_token:
                sinks.masks["st"] = x[:, :, None] == x[:, None, :]
            logits = model(x.to(device), return_type="logits" if targets is not None else None)
            part = {k: v.cpu() for k, v in sinks.stacked().items()}
            if targets is not None:
                y = targets[i * batch_size : i * batch_size + x.shape[0]].to(device)
                part["ce"] = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").cpu()[None]
            parts.append(part)
            sinks.clear()
    out = {k: torch.cat([p[k] for p in parts], dim=1) for k in parts[0]}
    if "ce" in out:
        out["ce"] = out["ce"][0]
    return out


def _quantiles(x: torch.Tensor) -> list[float]:
    if x.numel() == 0:
        return [float("nan")] * len(QUANTILES)
    return torch.quantile(x.double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()


def bb_snapshot(model: HookedTransformer, task, data: torch.Tensor,
                same_token: bool = False) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """One row per (layer, head): the paper's four quantities on a fixed batch of BB sequences
    `data` [N, T+1], split by query type (the residual norms are those after the row's block;
    `embed_*` before block 0), the backcopy and bigram risks from the same forward pass, and the
    per-position reductions they come from (with "st", see `reduce_inputs`, if `same_token`)."""
    inputs = data[:, :-1]
    trig, bigram = task.position_masks(inputs)
    r = reduce_inputs(model, inputs, targets=data[:, 1:], key_mask=trig, same_token=same_token)
    risks = {"backcopy_risk": float(r["ce"][trig].double().mean()), "bigram_risk": float(r["ce"][bigram].double().mean()),
             "loss": float(r["ce"].double().mean())}
    T = inputs.shape[1]
    pos = torch.arange(T)
    dl_ok = pos >= 2
    first, rest = pos == 0, pos >= 1
    rows = []
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            sink, dl, vn = r["sink"][l, :, h], r["dl"][l, :, h], r["vn"][l, :, h]
            q_nt, q_t = _quantiles(dl[bigram & dl_ok]), _quantiles(dl[trig & dl_ok])
            rows.append({
                "layer": l, "head": h,
                "sink_mass": float(sink[bigram].mean()), "sink_mass_trigger": float(sink[trig].mean()),
                # ⟨s⟩'s weight on itself: 1 under softmax, the raw ReLU(score) under ReLU attention (i = 1)
                "sink_self_weight": float(sink[:, 0].mean()),
                "trigger_key_mass": float(r["km"][l, :, h][bigram].mean()),
                "delta_logit": float(dl[bigram & dl_ok].mean()), "delta_logit_trigger": float(dl[trig & dl_ok].mean()),
                "delta_logit_q10": q_nt[0], "delta_logit_q50": q_nt[1], "delta_logit_q90": q_nt[2],
                "delta_logit_trigger_q10": q_t[0], "delta_logit_trigger_q50": q_t[1], "delta_logit_trigger_q90": q_t[2],
                "value_norm_first": float(vn[:, first].mean()), "value_norm_rest": float(vn[:, rest].mean()),
                "resid_first": float(r["rn"][l + 1][:, 0].mean()), "resid_rest": float(r["rn"][l + 1][:, 1:].mean()),
                "embed_first": float(r["rn"][0][:, 0].mean()), "embed_rest": float(r["rn"][0][:, 1:].mean()),
                **risks,
            })
    return pd.DataFrame(rows), r


def token_dormancy(model: HookedTransformer, task, threshold: float) -> pd.DataFrame:
    """The paper's token-level test on [⟨s⟩, all non-triggers, tok]: attention on ⟨s⟩ at the last
    position, per layer; tok is active below `threshold`. The paper's rule: active iff trigger."""
    inputs = task.dormancy_inputs()
    r = reduce_inputs(model, inputs)
    rows = []
    for l in range(model.cfg.n_layers):
        for tok in range(task.n_chars):
            a = float(r["sink"][l, tok, 0, -1])
            trig = bool(task.is_trigger[tok])
            rows.append({"layer": l, "token_id": tok, "token": task.chars[tok], "is_trigger": trig,
                         "sink_last": a, "active": a < threshold, "paper_active": trig, "agrees": (a < threshold) == trig})
    return pd.DataFrame(rows)


def by_input_token(task, inputs: torch.Tensor, columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per (layer, character): the share of the sampled bigram positions whose input is that
    character ("data_share") and, for each named [L, B, H, T] reduction of `reduce_inputs`, its mean
    over those positions (head 0). With the sink weight this is how the pooled sink mass of the
    data splits over query characters; with "st", how much attention each character puts on
    earlier copies of itself (a dormant mode that competes with ⟨s⟩)."""
    _, bigram = task.position_masks(inputs)
    q = inputs[bigram]
    n = torch.bincount(q, minlength=task.n_chars)[: task.n_chars].double()
    L = next(iter(columns.values())).shape[0]
    rows = []
    for l in range(L):
        means = {}
        for name, x in columns.items():
            tot = torch.bincount(q, weights=x[l, :, 0][bigram].double(), minlength=task.n_chars)[: task.n_chars]
            means[name] = torch.where(n > 0, tot / n.clamp(min=1), torch.full_like(tot, float("nan")))
        rows += [{"layer": l, "token_id": t, "data_share": float(n[t] / n.sum()), **{k: float(v[t]) for k, v in means.items()}}
                 for t in range(task.n_chars)]
    return pd.DataFrame(rows)


def bb_ablations(model: HookedTransformer, task, n_seqs: int, seed: int) -> dict[str, float]:
    """Risks with all attention outputs, or all MLP outputs, zeroed (the paper's ablations)."""
    from probes.attention_sinks.bigram_backcopy import bb_risks

    out: dict[str, float] = {}
    for part, site in (("no_attention", hooks.attn_out), ("no_mlp", hooks.mlp_out)):
        zero = [(site(l), lambda x, hook: torch.zeros_like(x)) for l in range(model.cfg.n_layers)]
        with model.hooks(fwd_hooks=zero):
            rk = bb_risks(model, task, n_seqs=n_seqs, seed=seed)
        out[f"{part}_backcopy_risk"], out[f"{part}_bigram_risk"] = rk["backcopy_risk"], rk["bigram_risk"]
    return out


def sibling_checkpoints(model: HookedTransformer) -> dict[int, Path]:
    """The other saved steps of the training run a checkpoint belongs to (up to its own step)."""
    info = model_info(model)
    if info.source != "checkpoint" or not info.path:
        return {}
    here = Path(info.path)
    step = int(info.extra.get("meta", {}).get("step", 10**12))
    found = {}
    for p in sorted(here.parent.glob("step_*")):
        s = int(p.name.split("_")[1])
        if s <= step and (p / "model.safetensors").exists():
            found[s] = p
    return found


def bb_dynamics(model: HookedTransformer, task, data: torch.Tensor) -> pd.DataFrame:
    """`bb_snapshot` (quantities and risks) at every saved checkpoint of the model's run."""
    from workbench.models.checkpoint import load_checkpoint

    ckpts = sibling_checkpoints(model)
    device = str(next(model.parameters()).device)
    frames = []
    bar = progress_bar(len(ckpts), "BB dynamics", unit="ckpt")
    try:
        for step, path in ckpts.items():
            m, _ = load_checkpoint(path, device=device)
            snap, _ = bb_snapshot(m, task, data)
            snap.insert(0, "step", step)
            frames.append(snap)
            bar.update(1)
    finally:
        bar.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def bb_analysis(model: HookedTransformer, task, config: AttentionSinksConfig) -> AttentionSinksResult:
    from probes.attention_sinks.bigram_backcopy import paired_gap

    data = task.sample(config.bb_sequences, model.cfg.n_ctx, config.bb_seed)
    inputs = data[:, :-1]
    snap, r = bb_snapshot(model, task, data, same_token=True)
    scored = torch.ones_like(inputs, dtype=torch.bool)
    chunks = [(inputs[i : i + 32], data[i : i + 32, 1:], scored[i : i + 32]) for i in range(0, inputs.shape[0], 32)]
    abl = head_ablation(model, chunks, "BB head ablation", progress=False)
    cost = abl.cost
    heads = snap.assign(domain="bb", kv_group=snap["head"], loss_clean=abl.clean, loss_ablated=abl.ablated.flatten().numpy())
    heads["delta_loss"] = heads["loss_ablated"] - abl.clean
    heads["delta_loss_se"] = abl.delta_se.flatten().numpy()
    heads["dormant"] = (heads["sink_mass"] >= config.dormant_sink) & (heads["delta_loss"].abs() <= config.dormant_loss)
    L = model.cfg.n_layers
    rn = r["rn"]
    layers = pd.DataFrame({
        "domain": "bb", "layer": np.arange(L + 1), "site": ["embed"] + [hooks.resid_post(l) for l in range(L)],
        "resid_first": rn[:, :, 0].mean(1).numpy(), "resid_rest": rn[:, :, 1:].mean((1, 2)).numpy(),
        "resid_rest_std": rn[:, :, 1:].flatten(1).std(1).numpy(),
    })
    layers["ratio"] = layers["resid_first"] / layers["resid_rest"]
    _, bigram = task.position_masks(inputs)
    q = bigram.double()
    sink_prof = (torch.einsum("lbht,bt->lht", r["sink"].double(), q) / q.sum(0).clamp(min=1)).float()
    val_prof = r["vn"].mean(1)
    risks = {k: float(snap[k].iloc[0]) for k in ("backcopy_risk", "bigram_risk", "loss")}
    oracle = task.oracle_bigram_risk(data)  # same sequences, same bigram positions as risks["bigram_risk"]
    bb = {**risks, "bigram_optimum": task.bigram_optimum(inputs.shape[1]), "bigram_oracle_risk": oracle,
          "bigram_paired_gap": paired_gap(risks["bigram_risk"], oracle),
          **bb_ablations(model, task, config.bb_sequences, config.bb_seed),
          "triggers": [task.chars[i] for i in task.triggers], "corpus": task.corpus, "charset": task.charset,
          "n_chars": task.n_chars}
    te = min(config.example_len, inputs.shape[1])
    ex_in = inputs[:1, :te]
    ex = reduce_pattern(model, ex_in)
    res = AttentionSinksResult(
        heads=heads, layers=layers, profiles={"sink|bb": sink_prof, "value|bb": val_prof},
        examples={"bb": ex}, example_tokens={"bb": [task.token_str(int(i)) for i in ex_in[0]]},
        tokens=token_dormancy(model, task, config.dormant_threshold)
        .merge(by_input_token(task, inputs, {"data_sink": r["sink"], "data_same_token": r["st"]}), on=["layer", "token_id"]),
        dynamics=bb_dynamics(model, task, data[: config.dynamics_sequences]) if config.dynamics else pd.DataFrame(), bb=bb,
    )
    res.meta.update({"kind": "bb", "domains": {"bb": {"sequences": config.bb_sequences, "seed": config.bb_seed, **cost}},
                     "prepend_bos": True, "bos_token_id": task.bos_id})
    return res


@torch.inference_mode()
def reduce_pattern(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """All heads' attention patterns on one short input: [L, H, T, T]."""
    names = [hooks.attn_pattern(l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=names, return_type=None)
    return torch.stack([cache[n][0] for n in names]).float().cpu()


# ----------------------------------------------------------------------------- one prompt (dashboard)


def prompt_tokens(model: HookedTransformer, prompt: str, max_chars: int = 2000) -> torch.Tensor:
    """A prompt as [1, T] token ids (BOS first where the model's default prepends one)."""
    from probes.attention_sinks.bigram_backcopy import task_of_model

    if not prompt:
        raise ConfigError("the prompt is empty")
    if len(prompt) > max_chars:
        raise PromptTooLongError(f"the prompt has {len(prompt)} characters; the limit is {max_chars}")
    task = task_of_model(model)
    tokens = task.encode(prompt)[None] if task is not None else model.to_tokens(prompt)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise PromptTooLongError(f"the prompt is {tokens.shape[1]} tokens; this model's context is {model.cfg.n_ctx}")
    return tokens


def prompt_head(model: HookedTransformer, prompt: str, layer: int, head: int, max_chars: int = 2000) -> dict[str, Any]:
    """One head on one prompt: its pattern, per-position sink weight, Δlogit and value norm, and
    the per-layer residual norms of the first token against the rest."""
    cfg = model.cfg
    if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
        raise ConfigError(f"layer must be in 0..{cfg.n_layers - 1} and head in 0..{cfg.n_heads - 1}, got L{layer}H{head}")
    tokens = prompt_tokens(model, prompt, max_chars)
    r = reduce_inputs(model, tokens)
    pattern = reduce_pattern(model, tokens)[layer, head]
    tok = model.tokenizer
    labels = [tok.decode([int(i)]) for i in tokens[0]] if tok is not None else [str(int(i)) for i in tokens[0]]
    sink = r["sink"][layer, 0, head]
    return {
        "tokens": labels, "pattern": pattern, "sink": sink, "delta_logit": r["dl"][layer, 0, head],
        "value_norms": r["vn"][layer, 0, head], "resid_norms": r["rn"][:, 0],
        "sink_mass": float(sink[1:].mean()) if sink.numel() > 1 else float("nan"),
        "value_ratio": float(r["vn"][layer, 0, head, 0] / r["vn"][layer, 0, head, 1:].mean()) if sink.numel() > 1 else float("nan"),
    }


# ----------------------------------------------------------------------------- entry point


def run(model: HookedTransformer, corpus: Corpus | None, config: AttentionSinksConfig) -> AttentionSinksResult:
    """The LM survey over `corpus` and `config.domains`; on a BB checkpoint, the BB analysis on
    sequences from its task (the corpus is then not used)."""
    from probes.attention_sinks.bigram_backcopy import task_of_model

    task = task_of_model(model)
    if task is not None:
        return bb_analysis(model, task, config)
    if corpus is None:
        raise ConfigError("the attention-sink survey of a language model needs a corpus (e.g. brown)")
    return survey(model, corpus, config)


SPEC = register(ProbeSpec(
    name="attention-sinks",
    description="Attention sinks, value drains and residual peaks per head and layer; active/dormant heads per domain "
                "(zero-ablation); Bigram-Backcopy models: token-level dormancy, risks and training dynamics.",
    config_cls=AttentionSinksConfig,
    result_cls=AttentionSinksResult,
    run=run,
))
