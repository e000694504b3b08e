"""Docstring completion (Heimersheim & Janiak, 2023) as a contrast set, written for this project.

Positive: a Python method whose reST docstring documents its parameters in order; the prompt
stops after the third ":param" and the model must name the next parameter:

    def {func}(self, {p1}, {p2}, {A}, {B}, {C}, {s1}):
        \"\"\"{w1} {w2} {w3}

        :param {A}: {a1} {a2}
        :param {B}: {b1} {b2}
        :param

The shape follows the paper's setting (two parameters before the three documented ones, one
after, a three-word method description and two-word parameter descriptions). The right answer
is " {C}"; the wrong answers are the other parameters of the signature.

Negative ("random_random" corruption): every parameter name, in the signature and in the
docstring, is replaced by a fresh random name, with the docstring's names distinct from the
signature's and none equal to C. Nothing links the docstring to the signature any more, and the
pair still aligns token for token because every name is a single token with a leading space.
"""

from __future__ import annotations

import random
from typing import Any

from probes.sae_circuits.tasks.contrast import ContrastPrompts, encode, single_token_id
from workbench.errors import ConfigError

PARAM_NAMES = [
    "load", "size", "files", "last", "name", "data", "value", "items", "path", "file", "key", "index", "count",
    "text", "line", "mode", "type", "user", "url", "config", "port", "host", "result", "output", "input",
    "width", "height", "color", "shape", "item", "node", "parent", "child", "source", "target", "label",
    "start", "end", "step", "limit", "offset", "query", "token", "model", "state", "context", "options",
    "message", "error", "code", "number", "length", "format", "filename", "directory", "page", "order",
    "block", "field", "group", "image", "level", "list", "map", "table", "time", "date", "title", "version",
]
WORDS = [
    "oil", "column", "piece", "crime", "population", "unit", "dark", "sector", "gap", "message", "tree",
    "detail", "mine", "river", "market", "glass", "paper", "stone", "music", "energy", "island", "metal",
    "garden", "window", "light", "sound", "fire", "water", "story", "money", "letter", "engine", "system",
]
FUNC_NAMES = ["port", "check", "update", "run", "build", "parse", "read", "write", "send", "load", "fetch", "render"]


def _single_token_words(tokenizer: Any, words: list[str]) -> list[str]:
    return [w for w in words if single_token_id(tokenizer, " " + w) is not None]


def _render(func: str, sig: list[str], doc: list[str], desc: list[str], arg_desc: list[list[str]]) -> str:
    lines = [f"def {func}(self, {', '.join(sig)}):", f'    """{" ".join(desc)}', ""]
    for name, words in zip(doc, arg_desc):
        lines.append(f"    :param {name}: {' '.join(words)}")
    lines.append("    :param")
    return "\n".join(lines)


def docstring_prompts(tokenizer: Any, n: int = 250, seed: int = 0, prepend_bos: bool = True) -> ContrastPrompts:
    """`n` positive/negative pairs, seeded."""
    if n < 1:
        raise ConfigError(f"n must be positive, got {n}")
    names = _single_token_words(tokenizer, PARAM_NAMES)
    words = _single_token_words(tokenizer, WORDS) or WORDS
    if len(names) < 14:
        raise ConfigError(
            f"docstring needs at least 14 parameter names that are single tokens with a leading space; this tokenizer "
            f"has {len(names)}. Use a model with a word-level vocabulary (e.g. smollm2-135m, attn-only-4l)."
        )
    rng = random.Random(seed)
    pos, neg, right, wrong, pos_text, neg_text = [], [], [], [], [], []
    attempts = 0
    while len(pos) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ConfigError("could not build aligned docstring pairs with this tokenizer")
        func = rng.choice(FUNC_NAMES)
        p1, p2, a, b, c, s1 = rng.sample(names, 6)
        desc = [rng.choice(words) for _ in range(3)]
        arg_desc = [[rng.choice(words) for _ in range(2)] for _ in range(2)]
        positive = _render(func, [p1, p2, a, b, c, s1], [a, b], desc, arg_desc)
        # fresh names for the negative: 6 for the signature, 2 for the docstring, none equal to C
        fresh = rng.sample([x for x in names if x != c], 8)
        negative = _render(func, fresh[:6], fresh[6:], desc, arg_desc)
        p_ids, q_ids = encode(tokenizer, positive, prepend_bos), encode(tokenizer, negative, prepend_bos)
        if len(p_ids) != len(q_ids):
            continue
        pos.append(p_ids)
        neg.append(q_ids)
        right.append([single_token_id(tokenizer, " " + c)])
        wrong.append([single_token_id(tokenizer, " " + x) for x in (p1, p2, a, b, s1)])
        pos_text.append(positive)
        neg_text.append(negative)
    return ContrastPrompts(
        "docstring", pos, neg, right, wrong, pos_text, neg_text,
        meta={"seed": seed, "n_names": len(names), "corruption": "random_random",
              "metric": "logit(C) - logsumexp(logits of the other signature parameters)"},
    )
