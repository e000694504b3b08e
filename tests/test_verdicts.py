"""The verdict lines the report's sections open with: each word follows from the intervals, on
synthetic inputs where the right answer is known."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from experiments import linguistic_collapse, sae_circuits
from experiments.run_all import section_verdict


def _corr(intervals: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"metric": k, "partial_rho_loss": r, "partial_lo": lo, "partial_hi": hi} for k, (r, lo, hi) in intervals.items()])


@pytest.mark.parametrize("signs,word", [
    ((1, 1, 1, 1, 1), "reproduced"), ((-1, -1, -1, -1, -1), "contradicted"), ((0, 0, 0, 0, 0), "inconclusive"),
    ((1, 0, 0, -1, 0), "partly reproduced"), ((0, -1, 0, 0, 0), "mixed"),
])
def test_linguistic_collapse_verdict_follows_the_partial_intervals(signs, word):
    """sign +1: the interval lies on the paper's side of zero; -1: the other side; 0: spans zero."""
    rows = {}
    for k, s in zip(linguistic_collapse.HEADLINE, signs):
        e = linguistic_collapse.EXPECTED_SIGN[k]
        rows[k] = (0.5 * s * e, 0.2 * s * e - (0.3 if s == 0 else 0), 0.8 * s * e + (0.3 if s == 0 else 0))
        if s:  # keep lo <= hi
            rows[k] = (rows[k][0], min(rows[k][1:]), max(rows[k][1:]))
    line = linguistic_collapse.lc_verdict(_corr(rows))
    assert section_verdict(line) == word


def test_linguistic_collapse_verdict_without_seeds_is_not_testable():
    line = linguistic_collapse.lc_verdict(_corr({k: (np.nan, np.nan, np.nan) for k in linguistic_collapse.HEADLINE}))
    assert section_verdict(line).startswith("not testable here")


def _run(task: str, node: dict, spearman: float, paper: tuple | None = (0.868, 0.84)):
    stats = {"task": task, "paper_auc": paper, "evidence": {"auc": {"sae_node": node},
                                                            "split_half": {"spearman": spearman}},
             "baseline_s": 100.0, "sae_method_s_at_baseline_pairs": 10.0}
    return types.SimpleNamespace(stats=stats)


@pytest.mark.parametrize("node,spearman,word", [
    ({"value": 0.88, "lo": 0.80, "hi": 0.95}, 0.9, "reproduced"),
    ({"value": 0.60, "lo": 0.55, "hi": 0.65}, 0.9, "contradicted"),
    ({"value": 0.60, "lo": 0.55, "hi": 0.65}, 0.3, "inconclusive"),
    ({"value": 0.95, "lo": 0.90, "hi": 0.99}, 0.9, "reproduced"),  # above the paper's AUC
])
def test_sae_circuit_verdict_per_task(node, spearman, word):
    per = sae_circuits.task_verdicts({"m-ioi": _run("ioi", node, spearman)})
    assert [w for _, w, _ in per] == [word]


def test_sae_circuit_verdict_combines_tasks():
    runs = {"a": _run("ioi", {"value": 0.88, "lo": 0.8, "hi": 0.95}, 0.9),
            "b": _run("greater-than", {"value": 0.5, "lo": 0.4, "hi": 0.6}, 0.9, (0.855, 0.873))}
    line = sae_circuits.verdict_line(runs)
    assert section_verdict(line) == "partly reproduced"
    assert "patching 10.0x the SAE method's time" in line
