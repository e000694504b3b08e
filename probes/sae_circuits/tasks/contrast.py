"""Contrast sets: paired positive and negative prompts for circuit discovery.

A positive prompt is one the model can complete (its answer is determined by the prompt); its
paired negative has the same length, token for token, with the information that determines the
answer removed. Each positive carries a set of right and a set of wrong answer tokens, and the
task metric on a run is the *set logit difference* at the last position:

    metric = logsumexp(logits[right]) - logsumexp(logits[wrong])

With one right and one wrong token this is the usual logit difference (IOI: IO minus S); with
sets it is the log-odds of the two answer groups (greater-than: later against earlier digits).
The metric of a negative run is measured with its paired positive's answer sets, so the gap
between the two is the effect a causal baseline attributes to heads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from workbench.errors import ConfigError


@dataclass
class ContrastPrompts:
    """Positive and negative token sequences (BOS included when the model uses one), paired by index."""

    task: str
    positive: list[list[int]]
    negative: list[list[int]]
    right: list[list[int]]  # per pair: token ids that count as correct answers on the positive
    wrong: list[list[int]]  # per pair: token ids that count as wrong answers
    positive_text: list[str] = field(default_factory=list)
    negative_text: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.positive)
        if n == 0:
            raise ConfigError(f"task {self.task!r}: no prompts")
        for name in ("negative", "right", "wrong"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"task {self.task!r}: {name} has {len(getattr(self, name))} entries for {n} positives")
        for i, (p, q) in enumerate(zip(self.positive, self.negative)):
            if len(p) != len(q):
                raise ConfigError(f"task {self.task!r}: pair {i} has lengths {len(p)} and {len(q)}; pairs must align token for token")
            if not self.right[i] or not self.wrong[i]:
                raise ConfigError(f"task {self.task!r}: pair {i} has an empty answer set")

    def __len__(self) -> int:
        return len(self.positive)

    def subset(self, n: int) -> "ContrastPrompts":
        """The first `n` pairs (generators shuffle, so a prefix is a random sample)."""
        n = min(n, len(self))
        cut = lambda xs: xs[:n]  # noqa: E731
        return ContrastPrompts(self.task, cut(self.positive), cut(self.negative), cut(self.right), cut(self.wrong),
                               cut(self.positive_text), cut(self.negative_text), dict(self.meta))

    def lengths(self) -> torch.Tensor:
        return torch.tensor([len(p) for p in self.positive], dtype=torch.long)

    def tokens(self, which: str, pad_id: int = 0) -> torch.Tensor:
        """[n, max_len] right-padded tokens of `which` = "positive" | "negative"."""
        seqs = self.positive if which == "positive" else self.negative
        return pad_right(seqs, pad_id)

    def answer_index(self, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded answer ids and masks: (right_ids, right_mask, wrong_ids, wrong_mask), each [n, k]."""
        for ids in (*self.right, *self.wrong):
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ConfigError(f"task {self.task!r}: answer token ids {bad} outside the vocabulary of {vocab}")
        r_ids, r_mask = _pad_sets(self.right)
        w_ids, w_mask = _pad_sets(self.wrong)
        return r_ids, r_mask, w_ids, w_mask


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
    return out


def _pad_sets(sets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    k = max(len(s) for s in sets)
    ids = torch.zeros((len(sets), k), dtype=torch.long)
    mask = torch.zeros((len(sets), k), dtype=torch.bool)
    for i, s in enumerate(sets):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def set_logit_diff(logits: torch.Tensor, right_ids: torch.Tensor, right_mask: torch.Tensor,
                   wrong_ids: torch.Tensor, wrong_mask: torch.Tensor) -> torch.Tensor:
    """logsumexp(logits[right]) - logsumexp(logits[wrong]) per row; logits is [n, vocab] (last position)."""
    neg_inf = torch.finfo(logits.dtype).min
    r = logits.gather(1, right_ids).masked_fill(~right_mask, neg_inf).logsumexp(-1)
    w = logits.gather(1, wrong_ids).masked_fill(~wrong_mask, neg_inf).logsumexp(-1)
    return r - w


def single_token_id(tokenizer: Any, text: str) -> int | None:
    """The id of `text` if the tokenizer encodes it as exactly one token (no special tokens), else None."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def encode(tokenizer: Any, text: str, prepend_bos: bool) -> list[int]:
    """Token ids of `text`, with the tokenizer's BOS in front when the model prepends one."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if prepend_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise ConfigError("the model prepends BOS but its tokenizer has no bos_token_id")
        ids = [bos] + ids
    return ids
