"""How far a run in half precision may land from the same run in float32, and the check of it.

A summary of a bfloat16 run differs from float32's because every activation is rounded; how much
depends on the model and the inputs, not on a constant. The scale is measured on the run's own
model: `logit_gap` is the relative difference of the half-precision logits from the float32 ones
on a batch (0.014 for the tiny Llama preset, about 0.03 for SmolLM2 in bfloat16). Each numeric
summary value v may then move by `SUMMARY_FACTOR * gap * max(|v|, 1)`: a mean or a loss moves
with the logits it is computed from (measured: at most 0.92 of gap x max(|v|, 1) over the nine
probes that run on a tiny model, the largest for the bigram masks, which are trained in the
model's precision). A count (an integer in both summaries, such as the number of dormant heads)
moves by whole units where an item's statistic sits within rounding of a threshold: it is
reported, not bounded (on SmolLM2 in bfloat16, 2 of 270 heads changed their dormancy verdict).
"""

from __future__ import annotations

from typing import Any, Iterator

import torch

SUMMARY_FACTOR = 2.0


def logit_gap(reference: Any, half: Any, tokens: torch.Tensor) -> float:
    """Relative difference (to the largest |logit|) of `half`'s logits from `reference`'s on `tokens`."""
    with torch.inference_mode():
        a = reference(tokens).double()
        b = half(tokens).double()
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def numbers(summary: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted path, value) of every number in a summary (bools and strings left out)."""
    if isinstance(summary, dict):
        for k, v in summary.items():
            yield from numbers(v, f"{prefix}{k}.")
    elif isinstance(summary, (list, tuple)):
        for i, v in enumerate(summary):
            yield from numbers(v, f"{prefix}{i}.")
    elif isinstance(summary, (int, float)) and not isinstance(summary, bool):
        yield prefix[:-1], summary


def summary_differences(reference: Any, half: Any, gap: float) -> list[dict[str, Any]]:
    """Per numeric summary value: both values, the allowed difference, whether it holds, and whether
    it is a count (`discrete`: integers in both; reported, and `ok` whatever its change)."""
    ref, other = dict(numbers(reference)), dict(numbers(half))
    rows = []
    for key, v in ref.items():
        if key not in other:
            continue
        w = other[key]
        discrete = isinstance(v, int) and isinstance(w, int)
        allowed = SUMMARY_FACTOR * gap * max(abs(v), 1.0)
        diff = abs(float(w) - float(v))
        rows.append({"key": key, "float32": v, "half": w, "diff": diff, "allowed": allowed, "discrete": discrete,
                     "ok": discrete or diff <= allowed or (v != v and w != w)})
    return rows
