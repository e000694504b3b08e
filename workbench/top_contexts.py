"""Top activating contexts, kept while streaming: per row (a feature, a neuron, a head), the `m`
highest values seen so far with the token window around each.

The choice is a total order (value, then earliest position), so it does not depend on how the
candidates were batched or sharded over ranks: the top m of a union is the top m of the parts'
top m.
"""

from __future__ import annotations

import torch

NO_POSITION = 2**62  # an empty slot
POSITIONS_PER_BATCH = 2**31  # a position's id = batch index * this + flat index in the batch


def top_contexts(vals: torch.Tensor, pos: torch.Tensor, ctx: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the `m` candidates of highest value, equal values by earliest position."""
    by_pos = torch.argsort(pos, dim=1, stable=True)
    by_val = torch.argsort(torch.gather(vals, 1, by_pos), dim=1, descending=True, stable=True)
    pick = torch.gather(by_pos, 1, by_val)[:, :m]
    return (torch.gather(vals, 1, pick), torch.gather(pos, 1, pick),
            torch.gather(ctx, 1, pick[..., None].expand(-1, -1, ctx.shape[2])))


def token_windows(tokens: torch.Tensor, valid: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """[B*T, before+1+after] token windows around each position of a [B, T] batch (-1 outside valid text)."""
    toks = torch.where(valid, tokens, torch.full_like(tokens, -1))
    padded = torch.nn.functional.pad(toks, (before, after), value=-1)
    return padded.unfold(1, before + 1 + after, 1).reshape(-1, before + 1 + after)


def empty_contexts(rows: int, m: int, width: int, device=None) -> dict[str, torch.Tensor]:
    """The starting state: no context in any slot."""
    return {"top_vals": torch.full((rows, m), -1.0, device=device),
            "top_pos": torch.full((rows, m), NO_POSITION, dtype=torch.int64, device=device),
            "top_ctx": torch.full((rows, m, width), -1, dtype=torch.int32, device=device)}


def batch_top(acts: torch.Tensor, positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of acts [N, rows], the k highest values and their row indices, equal values by
    earliest position: the same total order as `top_contexts`, so which of several equal candidates
    survive does not depend on how the batch was cut (micro-batch halving, ranks). `topk` alone
    breaks ties in no stated order."""
    order = torch.argsort(positions, stable=True)
    vals, pick = torch.sort(acts[order], dim=0, descending=True, stable=True)
    return vals[:k], order[pick[:k]]


def merge_batch(state: tuple[torch.Tensor, torch.Tensor, torch.Tensor], acts: torch.Tensor, windows: torch.Tensor,
                positions: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge one batch's candidates (acts [N, rows] >0 where active, windows [N, W], positions [N])
    into (top_vals, top_pos, top_ctx) of shapes [rows, m], [rows, m], [rows, m, W]."""
    k = min(m, acts.shape[0])
    vals, idx = batch_top(acts, positions, k)  # [k, rows]
    vals = torch.where(vals > 0, vals, torch.full_like(vals, -1.0))  # a context counts only where it fires
    return top_contexts(torch.cat([state[0], vals.T.float()], dim=1), torch.cat([state[1], positions[idx].T], dim=1),
                        torch.cat([state[2], windows[idx].permute(1, 0, 2).to(torch.int32)], dim=1), m)
