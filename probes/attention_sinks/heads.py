"""What the attention-sink analyses measure per head, shared by the LM survey (`probe`) and the
Bigram-Backcopy analysis (`dynamics`): the hooks that reduce every batch's attention scores,
patterns, values and residuals to per-head statistics (sink mass, Δlogit, value norms after W_O
with grouped-query heads mapped, residual norms), the streaming survey accumulator, and
zero-ablation of each head's output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.corpora.tokenized import TokenBatch
from workbench.distributed import reduce_states, shard, world
from workbench.errors import ConfigError
from workbench.progress import progress_bar
from workbench.results import Result

QUANTILES = (0.1, 0.5, 0.9)
N_BINS = 240


@dataclass
class HeadTables(Result):
    """The per-head and per-layer tables both analyses produce."""

    heads: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (domain, layer, head)
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per (domain, layer)
    profiles: dict[str, torch.Tensor] = field(default_factory=dict)  # "sink|<domain>", "value|<domain>": [L, H, T]
    examples: dict[str, torch.Tensor] = field(default_factory=dict)  # <domain>: [L, H, Te, Te] pattern
    example_tokens: dict[str, list[str]] = field(default_factory=dict)

    @property
    def domains(self) -> list[str]:
        return list(dict.fromkeys(self.heads["domain"])) if not self.heads.empty else []

    def domain_summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for d in self.domains:
            h = self.heads[self.heads["domain"] == d]
            out[f"{d}:mean_sink"] = round(float(h["sink_mass"].mean()), 4)
            if h["delta_loss"].notna().any():
                out[f"{d}:dormant_heads"] = int(h["dormant"].sum())
                if "verdict" in h:
                    out[f"{d}:undecided_heads"] = int((h["verdict"] == "undecided").sum())
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
    # sharded runs: every state is a sum except the example pattern, which is batch 0's (rank 0 streams batch 0)
    merge_rules = {"example": "first", "example_tokens": "first"}

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
    mine = shard(list(range(H)))  # in a sharded run each rank ablates its share of the heads of every layer
    Hr = len(mine)
    clean_sum, count = 0.0, 0
    abl_sum = torch.zeros(L, H, dtype=torch.float64)
    diff_sq = torch.zeros(L, H, dtype=torch.float64)  # sum over scored tokens of (ablated - clean CE)^2
    n_block_runs = 0
    t0 = time.perf_counter()
    bar = progress_bar(len(chunks) * L, desc, unit="layer", enabled=progress and Hr > 0)
    try:
        for tokens, targets, scored in chunks:
            if Hr == 0:  # more ranks than heads
                break
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
            keep_heads = torch.ones(Hr * B, 1, H, 1, device=device, dtype=final.dtype)
            for i, c in enumerate(mine):
                keep_heads[i * B : (i + 1) * B, 0, c, 0] = 0.0
            for l in range(L):
                x = resid[l].repeat(Hr, 1, 1)

                def zero_head(z: torch.Tensor, hook) -> torch.Tensor:
                    return z * keep_heads.to(z.dtype)

                with model.hooks(fwd_hooks=[(hooks.attn_z(l), zero_head)]):
                    out = model(x, start_at_layer=l, stop_at_layer=L)
                ce = _chunked_token_ce(model, out, targets.repeat(Hr, 1), mask.repeat(Hr, 1)).view(Hr, B, -1)
                abl_sum[l, mine] += ce.sum((1, 2)).double().cpu()
                diff_sq[l, mine] += ((ce - clean_ce[None]) ** 2).sum((1, 2)).double().cpu()
                n_block_runs += (L - l) * Hr * B
                bar.update(1)
    finally:
        bar.close()
    if world().sharded:  # every head's row came from exactly one rank: the sum is exact
        merged = reduce_states({"abl": abl_sum, "sq": diff_sq, "clean": torch.tensor([clean_sum, count], dtype=torch.float64)},
                               {"clean": "first"})
        abl_sum, diff_sq = merged["abl"], merged["sq"]
        clean_sum, count = float(merged["clean"][0]), int(merged["clean"][1])
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


@torch.inference_mode()
def reduce_pattern(model: HookedTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """All heads' attention patterns on one short input: [L, H, T, T]."""
    names = [hooks.attn_pattern(l) for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(tokens.to(next(model.parameters()).device), names_filter=names, return_type=None)
    return torch.stack([cache[n][0] for n in names]).float().cpu()


VERDICTS = ("dormant", "active", "undecided", "untested")


def dormancy_verdicts(heads: pd.DataFrame, dormant_sink: float, dormant_loss: float, n_se: float = 2.0) -> pd.Series:
    """One verdict per head from its sink mass and its zero-ablation loss change:
    - "dormant": sink mass >= `dormant_sink` and |Δloss| + n_se·SE <= `dormant_loss` (surely small);
    - "active": sink mass below `dormant_sink`, or |Δloss| - n_se·SE > `dormant_loss` (surely large);
    - "undecided": a sink head whose |Δloss| is within n_se standard errors of the threshold;
    - "untested": no ablation was run (Δloss is NaN).
    Without a standard error (SE NaN) the verdict is the point comparison."""
    sink = heads["sink_mass"] >= dormant_sink
    dl = heads["delta_loss"].abs()
    se = heads["delta_loss_se"].fillna(0.0) if "delta_loss_se" in heads else 0.0
    out = pd.Series("undecided", index=heads.index, dtype="str")
    out[~sink | (dl - n_se * se > dormant_loss)] = "active"
    out[sink & (dl + n_se * se <= dormant_loss)] = "dormant"
    out[heads["delta_loss"].isna()] = "untested"
    return out
