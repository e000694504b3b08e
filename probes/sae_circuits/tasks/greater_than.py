"""Greater-than (Hanna et al., 2023) as a contrast set, adapted to how the tokenizer splits years.

Prompt: "The {noun} lasted from the year {XX}{YY} to the year {XX}"; a model that knows the task
puts its probability on end years after the start year. Negatives use YY = 01, where every later
year is valid, so nothing in the prompt constrains the answer.

Two tokenisations are supported, detected from the tokenizer itself:

- two-digit (GPT-2): " 1743" is [" 17", "43"]. The prompt ends with " XX" and the next token is a
  two-digit year "YY'". As in the paper, positives have YY in 02..98; the right answers are the
  tokens YY' > YY and the wrong ones YY' <= YY.
- one digit per token (SmolLM2, Llama-style and byte tokenizers): " 1743" is [" ", "1", "7",
  "4", "3"]. The prompt ends with the century digits and the next token is only the *tens* digit
  d of the end year. Digits d > t (t = the tens digit of YY) make the end year later and d < t
  make it earlier, whatever follows; d = t is undecided at this token and belongs to neither set.
  Both sets must be non-empty, so positives draw YY from 10..89 (t in 1..8) instead of 02..98.
  Negatives keep YY = 01 (t = 0), which constrains nothing.

The metric is the set logit difference log p(right) - log p(wrong) at the last position (the
log-odds version of the paper's probability difference). Centuries XX run over 12..19.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from probes.sae_circuits.tasks.contrast import ContrastPrompts, encode, single_token_id
from workbench.errors import ConfigError

NOUNS = [
    "war", "reign", "drought", "famine", "journey", "expedition", "dynasty", "siege", "campaign", "conflict",
    "alliance", "treaty", "occupation", "rebellion", "revolution", "crisis", "project", "construction",
    "investigation", "trial", "partnership", "friendship", "marriage", "epidemic", "plague", "exile",
    "voyage", "tour", "strike", "boycott", "blockade", "truce", "empire", "regime", "festival", "exhibition",
]
CENTURIES = range(12, 20)
Mode = Literal["digit", "two-digit"]


def year_mode(tokenizer: Any) -> tuple[Mode, dict[str, int]]:
    """Which tokenisation the tokenizer uses for years, and the answer-token ids for it."""
    digits = {str(d): single_token_id(tokenizer, str(d)) for d in range(10)}
    ids = tokenizer(" 1743", add_special_tokens=False)["input_ids"]
    if all(v is not None for v in digits.values()) and ids[-4:] == [digits[c] for c in "1743"]:
        return "digit", digits  # type: ignore[return-value]
    pairs = {f"{y:02d}": single_token_id(tokenizer, f"{y:02d}") for y in range(100)}
    century = single_token_id(tokenizer, " 17")
    if century is not None and all(v is not None for v in pairs.values()) and ids == [century, pairs["43"]]:
        return "two-digit", pairs  # type: ignore[return-value]
    raise ConfigError(
        "greater-than needs a tokenizer that writes years either one digit per token or as "
        f"[' XX', 'YY'] tokens; this one encodes ' 1743' as {ids}"
    )


def greater_than_prompts(tokenizer: Any, n: int = 250, seed: int = 0, prepend_bos: bool = True) -> ContrastPrompts:
    """`n` positive/negative pairs with YY cycling through its range (balanced, as in the paper)."""
    if n < 1:
        raise ConfigError(f"n must be positive, got {n}")
    mode, answer_ids = year_mode(tokenizer)
    yy_range = list(range(10, 90)) if mode == "digit" else list(range(2, 99))
    rng = random.Random(seed)
    pos, neg, right, wrong, pos_text, neg_text, yys = [], [], [], [], [], [], []
    for i in range(n):
        yy = yy_range[i % len(yy_range)]
        xx = rng.choice(CENTURIES)
        noun = rng.choice(NOUNS)
        p = f"The {noun} lasted from the year {xx}{yy:02d} to the year {xx}"
        q = f"The {noun} lasted from the year {xx}01 to the year {xx}"
        p_ids, q_ids = encode(tokenizer, p, prepend_bos), encode(tokenizer, q, prepend_bos)
        if len(p_ids) != len(q_ids):
            raise ConfigError(f"greater-than prompts {p!r} and {q!r} tokenise to different lengths")
        if mode == "digit":
            t = yy // 10
            r = [answer_ids[str(d)] for d in range(t + 1, 10)]
            w = [answer_ids[str(d)] for d in range(0, t)]
        else:
            r = [answer_ids[f"{y:02d}"] for y in range(yy + 1, 100)]
            w = [answer_ids[f"{y:02d}"] for y in range(0, yy + 1)]
        pos.append(p_ids)
        neg.append(q_ids)
        right.append(r)
        wrong.append(w)
        pos_text.append(p)
        neg_text.append(q)
        yys.append(yy)
    idx = list(range(n))
    rng.shuffle(idx)
    pick = lambda xs: [xs[i] for i in idx]  # noqa: E731
    return ContrastPrompts(
        "greater-than", pick(pos), pick(neg), pick(right), pick(wrong), pick(pos_text), pick(neg_text),
        meta={"seed": seed, "mode": mode, "yy": pick(yys),
              "metric": "log p(later) - log p(earlier) at the next year token"},
    )
