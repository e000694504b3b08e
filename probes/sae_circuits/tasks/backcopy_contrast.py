"""Bigram-Backcopy contrast sets, built from sequences of `BBTask.sample` (the task's own generator).

Positive: a BB sequence cut just after a trigger token at position t (t drawn in
[min_len, max_len]); the next token is the backcopy, the token at t - 1, which the model can
predict exactly. The right answer is that token; the wrong answers are all other characters, so
the metric is the log-odds of the backcopy token.

Negative: the same sequence with every trigger token replaced by a non-trigger character drawn
from the unigram distribution restricted to non-triggers. No position of the negative is a
backcopy position, so the head that does the backcopy has nothing to copy; the pair stays aligned
token for token.

Ground truth on a BB model is the head that does the backcopy: `backcopy_attention` measures, for
every head, the mean attention from trigger positions to the preceding token (the backcopy
mechanism attends there); in a 1-layer model the single head is the backcopy head by construction.
"""

from __future__ import annotations

import numpy as np
import torch
from transformer_lens import HookedTransformer

from probes.attention_sinks import BBTask
from probes.sae_circuits.tasks.contrast import ContrastPrompts, pad_right
from workbench import hooks
from workbench.errors import ConfigError


def backcopy_prompts(task: BBTask, n: int = 250, seed: int = 0, min_len: int = 16, max_len: int = 32) -> ContrastPrompts:
    """`n` positive/negative pairs of lengths min_len + 1 .. max_len + 1 (⟨s⟩ included), seeded."""
    if n < 1 or not 2 <= min_len <= max_len:
        raise ConfigError(f"need n >= 1 and 2 <= min_len <= max_len, got n={n}, min_len={min_len}, max_len={max_len}")
    rng = np.random.default_rng(seed)
    trig = task.is_trigger
    chars = np.arange(task.n_chars)
    non_trig = chars[~trig[: task.n_chars]]
    p_fill = task.unigram[non_trig] / task.unigram[non_trig].sum()
    pos, neg, right, wrong = [], [], [], []
    while len(pos) < n:
        seqs = task.sample(2 * (n - len(pos)) + 8, seq_len=max_len, seed=rng).numpy()
        for s in seqs:
            cuts = [t for t in range(min_len, max_len + 1) if trig[s[t]]]
            if not cuts or len(pos) >= n:
                continue
            t = int(rng.choice(cuts))
            p = s[: t + 1].copy()
            q = p.copy()
            where = np.nonzero(trig[q[1:]])[0] + 1
            q[where] = rng.choice(non_trig, size=len(where), p=p_fill)
            pos.append(p.tolist())
            neg.append(q.tolist())
            right.append([int(p[t - 1])])
            wrong.append([int(c) for c in chars if c != p[t - 1]])
    decode = lambda ids: "".join(task.token_str(i) for i in ids)  # noqa: E731
    return ContrastPrompts(
        "bigram-backcopy", pos, neg, right, wrong, [decode(p) for p in pos], [decode(q) for q in neg],
        meta={"seed": seed, "triggers": [task.token_str(i) for i in task.triggers], "min_len": min_len, "max_len": max_len,
              "metric": "log-odds of the backcopy token (logsumexp over all other characters)"},
    )


@torch.no_grad()
def backcopy_attention(model: HookedTransformer, task: BBTask, prompts: ContrastPrompts, batch_size: int = 32) -> torch.Tensor:
    """[layers, heads] mean attention from trigger positions of the positives to the token before them."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    device = next(model.parameters()).device
    total = torch.zeros(L, H, dtype=torch.float64)
    count = 0
    trig = torch.from_numpy(task.is_trigger)
    for i in range(0, len(prompts), batch_size):
        seqs = prompts.positive[i : i + batch_size]
        tokens = pad_right(seqs, task.delim_id)
        valid = torch.arange(tokens.shape[1])[None] < torch.tensor([len(s) for s in seqs])[:, None]
        query = (trig[tokens] & valid)[:, 1:].to(device)  # trigger inputs at positions 1.., as queries
        _, cache = model.run_with_cache(tokens.to(device), names_filter=lambda n: n.endswith(hooks.PATTERN))
        for l in range(L):
            to_prev = cache[hooks.attn_pattern(l)].diagonal(offset=-1, dim1=-2, dim2=-1)  # [b, heads, T-1]
            total[l] += (to_prev * query[:, None]).sum((0, 2)).double().cpu()
        count += int(query.sum())
    if count == 0:
        raise ConfigError("the prompts hold no trigger positions")
    return (total / count).float()
