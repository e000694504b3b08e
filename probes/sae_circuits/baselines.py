"""Causal baselines for circuit discovery, the task metric, and the published circuits.

Task metric: the set logit difference at each prompt's last position (see
`probes.sae_circuits.tasks.contrast`), computed from the final residual for the answer tokens only, so no
run ever builds [batch, pos, vocab] logits.

Per-head activation patching (negative into positive): for each head, rerun the positives with
that head's `hook_z` (all positions) taken from the paired negative run, and record the mean
change of the metric. Mean ablation instead writes the head's mean `hook_z` over all negative
prompts and positions. A head at layer l cannot change anything before l, so each patched run
starts from the cached residual at layer l (`start_at_layer`); all heads of a layer run as one
batch. With grouped-query attention `hook_z` is per query head, so every query head is patched
on its own.

Attribution patching (Nanda, 2023) is the first-order version of the same patch: the effect of a
head is sum over positions of (z_negative - z_positive) . d metric / d z_positive, from one forward
and backward pass of the positives, instead of one patched run per head. It is exact for a head
whose path to the metric is linear, and an approximation elsewhere.

Ground truth from the baseline: a head is in the circuit if patching it moves the metric by more
than `threshold` times the total effect |mean(positive) - mean(negative)|, in either direction
(heads that push against the answer, like IOI's negative name movers, belong to the circuit too).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from transformer_lens import HookedTransformer

from probes.sae_circuits.tasks.contrast import ContrastPrompts, pad_right
from workbench import hooks
from workbench.distributed import reduce_states, shard, world
from workbench.errors import ConfigError
from workbench.models.info import model_info
from workbench.progress import progress_bar
from workbench.training import frozen

BaselineMethod = Literal["patching", "mean-ablation", "attribution"]

# Published circuits, as (layer, head); used when the matching model is loaded.
KNOWN_CIRCUITS: dict[tuple[str, str], list[tuple[int, int]]] = {
    ("gpt2", "ioi"): [
        (2, 2), (4, 11),  # previous-token heads
        (0, 1), (3, 0), (0, 10),  # duplicate-token heads
        (5, 5), (6, 9), (5, 8), (5, 9),  # induction heads
        (7, 3), (7, 9), (8, 6), (8, 10),  # S-inhibition heads
        (10, 7), (11, 10),  # negative name movers
        (9, 9), (9, 6), (10, 0),  # name movers
        (10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (11, 9), (11, 3), (9, 7),  # backup name movers
    ],
    ("gpt2", "greater-than"): [(0, 1), (0, 3), (0, 5), (5, 5), (6, 1), (6, 9), (7, 10), (8, 11), (9, 1)],
    ("attn-only-4l", "docstring"): [(0, 5), (1, 0), (1, 4), (2, 0), (3, 0), (3, 6)],
}
_ALIASES = {"gpt2": "gpt2", "gpt2-small": "gpt2", "openai-community/gpt2": "gpt2",
            "attn-only-4l": "attn-only-4l", "NeelNanda/Attn_Only_4L512W_C4_Code": "attn-only-4l"}


def known_circuit(model: HookedTransformer, task: str) -> list[tuple[int, int]] | None:
    """The published circuit for this model and task, if there is one."""
    names = {model_info(model).id, model.cfg.model_name, getattr(model.cfg, "original_architecture", None)}
    for name in names:
        family = _ALIASES.get(str(name))
        if family and (family, task) in KNOWN_CIRCUITS:
            return KNOWN_CIRCUITS[(family, task)]
    return None


# ----------------------------------------------------------------------------- metric


@dataclass
class Answers:
    right_ids: torch.Tensor
    right_mask: torch.Tensor
    wrong_ids: torch.Tensor
    wrong_mask: torch.Tensor

    def select(self, idx: torch.Tensor) -> "Answers":
        return Answers(self.right_ids[idx], self.right_mask[idx], self.wrong_ids[idx], self.wrong_mask[idx])

    def repeat(self, k: int) -> "Answers":
        return Answers(*(t.repeat(k, 1) for t in (self.right_ids, self.right_mask, self.wrong_ids, self.wrong_mask)))

    def to(self, device: torch.device) -> "Answers":
        return Answers(*(t.to(device) for t in (self.right_ids, self.right_mask, self.wrong_ids, self.wrong_mask)))


def answers_of(prompts: ContrastPrompts, model: HookedTransformer) -> Answers:
    return Answers(*prompts.answer_index(model.cfg.d_vocab))


def metric_from_resid(model: HookedTransformer, resid_last: torch.Tensor, ans: Answers) -> torch.Tensor:
    """Set logit difference from the final residual at the last position ([batch, d_model])."""
    x = model.ln_final(resid_last[:, None])[:, 0] if model.cfg.normalization_type is not None else resid_last

    def logits(ids: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("bd,dbk->bk", x, model.W_U[:, ids]) + model.b_U[ids]
        cap = getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0
        return cap * torch.tanh(out / cap) if cap > 0 else out

    r, w = logits(ans.right_ids), logits(ans.wrong_ids)
    neg_inf = torch.finfo(r.dtype).min
    return r.masked_fill(~ans.right_mask, neg_inf).logsumexp(-1) - w.masked_fill(~ans.wrong_mask, neg_inf).logsumexp(-1)


def final_resid(model: HookedTransformer, x: torch.Tensor, start_at_layer: int | None = None, fwd=()) -> torch.Tensor:
    """Residual after the last block (before ln_final); x is tokens, or a residual when starting later."""
    with model.hooks(fwd_hooks=list(fwd)):
        return model(x, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers, padding_side="right")


def last_rows(resid: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    return resid[torch.arange(resid.shape[0], device=resid.device), last]


# ----------------------------------------------------------------------------- patching


@dataclass
class BaselineOutcome:
    method: str
    per_pair: torch.Tensor  # [pairs, layers, heads] change of each pair's metric when the head is patched
    positive_metric: torch.Tensor  # [pairs]
    negative_metric: torch.Tensor  # [pairs]
    seconds: float
    n_pairs: int

    @property
    def effect(self) -> torch.Tensor:
        """[layers, heads] mean change of the metric over pairs."""
        return self.per_pair.mean(0)

    @property
    def total_effect(self) -> float:
        return float(self.positive_metric.mean() - self.negative_metric.mean())

    def share(self) -> torch.Tensor:
        """[layers, heads] effect as a share of the positive-negative gap (1 = the whole gap recovered)."""
        total = self.total_effect
        if abs(total) < 1e-8:
            raise ConfigError("positives and negatives have the same mean metric; the task gives the baseline nothing to explain")
        return -self.effect / total

    def circuit(self, threshold: float) -> torch.Tensor:
        """[layers, heads] bool: heads whose |share| exceeds `threshold`."""
        return self.share().abs() > threshold


def _batches(prompts: ContrastPrompts, batch_size: int, pad_id: int):
    """Pairs sorted by length and cut into batches: (index tensor, pos tokens, neg tokens, last index)."""
    lengths = prompts.lengths()
    order = torch.argsort(lengths, stable=True)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        pos = [prompts.positive[j] for j in idx.tolist()]
        neg = [prompts.negative[j] for j in idx.tolist()]
        yield idx, pad_right(pos, pad_id), pad_right(neg, pad_id), lengths[idx] - 1


def _mean_z(model: HookedTransformer, prompts: ContrastPrompts, batch_size: int, pad_id: int, device) -> list[torch.Tensor]:
    """Per layer, the mean hook_z over all negative prompts and valid positions: [heads, d_head]."""
    L = model.cfg.n_layers
    sums = [torch.zeros(model.cfg.n_heads, model.cfg.d_head, device=device) for _ in range(L)]
    count = 0
    for _, _, neg, last in _batches(prompts, batch_size, pad_id):
        neg = neg.to(device)
        valid = (torch.arange(neg.shape[1], device=device)[None] <= last.to(device)[:, None]).float()
        store: dict[int, torch.Tensor] = {}
        final_resid(model, neg, fwd=[(hooks.attn_z(l), _saver(store, l)) for l in range(L)])
        for l in range(L):
            sums[l] += torch.einsum("bp,bphd->hd", valid, store[l])
        count += int(valid.sum())
    return [s / count for s in sums]


def _saver(store: dict, key) -> Callable:
    def hook(t: torch.Tensor, hook) -> None:
        store[key] = t.detach()
    return hook


@torch.no_grad()
def head_patching(
    model: HookedTransformer,
    prompts: ContrastPrompts,
    method: BaselineMethod = "patching",
    batch_size: int = 16,
    progress: bool = True,
) -> BaselineOutcome:
    """Mean metric change on the positives when each head is patched from the negatives (or mean-ablated)."""
    if method == "attribution":
        return head_attribution(model, prompts, batch_size, progress)
    if method not in ("patching", "mean-ablation"):
        raise ConfigError(f"baseline method must be 'patching', 'mean-ablation' or 'attribution', got {method!r}")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pad_id = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
    ans_all = answers_of(prompts, model)
    means = _mean_z(model, prompts, batch_size, pad_id, device) if method == "mean-ablation" else None
    per_pair = torch.zeros(len(prompts), L, H)
    pos_metric = torch.zeros(len(prompts))
    neg_metric = torch.zeros(len(prompts))
    n_batches = (len(prompts) + batch_size - 1) // batch_size
    mine = shard(list(range(H)))  # in a sharded run each rank patches its share of the heads of every layer
    Hr = len(mine)
    bar = progress_bar(n_batches * L, f"{method} {L * H} heads", unit="layer", enabled=progress and Hr > 0)
    try:
        for idx, pos, neg, last in _batches(prompts, batch_size, pad_id):
            pos, neg, last = pos.to(device), neg.to(device), last.to(device)
            B, T = pos.shape
            ans = ans_all.select(idx).to(device)
            z_neg: dict[int, torch.Tensor] = {}
            resid_pre: dict[int, torch.Tensor] = {}
            r_neg = final_resid(model, neg, fwd=[(hooks.attn_z(l), _saver(z_neg, l)) for l in range(L)])
            r_pos = final_resid(model, pos, fwd=[(hooks.resid_pre(l), _saver(resid_pre, l)) for l in range(L)])
            clean = metric_from_resid(model, last_rows(r_pos, last), ans)
            pos_metric[idx] = clean.float().cpu()
            neg_metric[idx] = metric_from_resid(model, last_rows(r_neg, last), ans).float().cpu()
            if Hr == 0:  # more ranks than heads
                continue
            heads = torch.tensor(mine, device=device)
            copies = torch.arange(Hr, device=device)
            ans_rep, last_rep = ans.repeat(Hr), last.repeat(Hr)
            for l in range(L):
                if means is None:
                    source = z_neg[l].permute(2, 0, 1, 3)[heads]  # [my heads, batch, pos, d_head]
                else:
                    source = means[l][heads][:, None, None, :].expand(Hr, B, T, model.cfg.d_head)

                def patch(z: torch.Tensor, hook, source=source) -> torch.Tensor:
                    z = z.clone()
                    z.view(Hr, B, T, H, -1)[copies, :, :, heads] = source
                    return z

                x = resid_pre[l].repeat(Hr, 1, 1)  # copy k patches head mine[k]
                r = final_resid(model, x, start_at_layer=l, fwd=[(hooks.attn_z(l), patch)])
                patched = metric_from_resid(model, last_rows(r, last_rep), ans_rep).view(Hr, B)
                per_pair[idx[:, None], l, torch.tensor(mine)[None, :]] = (patched - clean[None]).T.float().cpu()
                bar.update(1)
    finally:
        bar.close()
    if world().sharded:  # every head's effect came from exactly one rank (zeros elsewhere): the sum is exact; the metrics agree
        merged = reduce_states({"effect": per_pair, "pos": pos_metric, "neg": neg_metric}, {"pos": "first", "neg": "first"})
        per_pair, pos_metric, neg_metric = merged["effect"], merged["pos"], merged["neg"]
    return BaselineOutcome(method, per_pair, pos_metric, neg_metric, time.perf_counter() - t0, len(prompts))


def head_attribution(model: HookedTransformer, prompts: ContrastPrompts, batch_size: int = 16, progress: bool = True) -> BaselineOutcome:
    """First-order estimate of every head's patching effect from one backward pass per batch."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pad_id = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
    ans_all = answers_of(prompts, model)
    per_pair = torch.zeros(len(prompts), L, H)
    pos_metric = torch.zeros(len(prompts))
    neg_metric = torch.zeros(len(prompts))
    n_batches = (len(prompts) + batch_size - 1) // batch_size
    bar = progress_bar(n_batches, f"attribution {L * H} heads", unit="batch", enabled=progress)
    try:
        for idx, pos, neg, last in _batches(prompts, batch_size, pad_id):
            pos, neg, last = pos.to(device), neg.to(device), last.to(device)
            valid = (torch.arange(pos.shape[1], device=device)[None] <= last[:, None]).float()
            ans = ans_all.select(idx).to(device)
            z_neg: dict[int, torch.Tensor] = {}
            z_pos: dict[int, torch.Tensor] = {}
            with torch.no_grad():
                r_neg = final_resid(model, neg, fwd=[(hooks.attn_z(l), _saver(z_neg, l)) for l in range(L)])
                neg_metric[idx] = metric_from_resid(model, last_rows(r_neg, last), ans).float().cpu()

            def keep(z: torch.Tensor, hook) -> None:
                z.retain_grad()
                z_pos[hook.layer()] = z

            def track(e: torch.Tensor, hook) -> torch.Tensor:
                return e.detach().requires_grad_(True)  # a graph through every activation, none through weights

            with torch.enable_grad(), frozen(model):
                fwd = [(hooks.EMBED, track)] + [(hooks.attn_z(l), keep) for l in range(L)]
                r_pos = final_resid(model, pos, fwd=fwd)
                metric = metric_from_resid(model, last_rows(r_pos, last), ans)
                metric.sum().backward()
            pos_metric[idx] = metric.detach().float().cpu()
            for l in range(L):
                delta = (z_neg[l] - z_pos[l].detach()) * z_pos[l].grad  # [batch, pos, heads, d_head]
                per_pair[idx, l] = torch.einsum("bp,bphd->bh", valid, delta).float().cpu()
            bar.update(1)
    finally:
        bar.close()
    return BaselineOutcome("attribution", per_pair, pos_metric, neg_metric, time.perf_counter() - t0, len(prompts))
