"""The verdict lines the report's sections open with: each word follows from the intervals, on
synthetic inputs where the right answer is known."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from experiments import (
    attention_sinks,
    function_tokens,
    linguistic_collapse,
    sae_circuits,
)
from experiments.common import verdict_of


def section_verdict(markdown: str) -> str:
    return verdict_of(markdown)[0]


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


def _effects(template_means: list[float], word_noise: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """12 words x the given templates' mean function-token effects at strength 8; content +0.3."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(12)]
    rows = []
    for t, m in enumerate(template_means):
        for i, w in enumerate(words):
            for where, base in (("function", m), ("content", 0.3)):
                rows.append({"pair": t * 12 + i, "template": f"T{t} {{}}", "word_a": w, "strength": 8.0, "position": where,
                             "delta_logp": base + word_noise * rng.normal(), "target_top": False, "target_is_b_top": False})
    return pd.DataFrame(rows)


def _ft_inputs():
    res = types.SimpleNamespace(labels=["L1"], comparison={"L1": {"function_active": 0.9, "content_active": 0.6}})
    loss = pd.DataFrame([{"group": g, "mean_ce": ce, "ce_se": 0.01} for g, ce in
                         (("F->F", 2.0), ("F->C", 5.0), ("C->F", 2.5), ("C->C", 4.0))])
    return res, loss


def test_steering_interval_resamples_words_and_the_verdict_counts_templates():
    effects = _effects([0.4, 0.5, -0.1, 0.2])
    row = function_tokens.steering_summary(effects).iloc[0]
    assert row["function"].n == 12 and "cluster bootstrap over 12 clusters" in row["function"].method
    assert row["function"].lo > 0  # words vary little around the templates' mean: the interval is above zero
    res, loss = _ft_inputs()
    line = function_tokens.function_tokens_verdict(res, loss, effects)
    assert section_verdict(line) == "reproduced"
    assert "rises in 3 of 4 templates" in line
    table = function_tokens.steering_by_template(effects)
    t2 = effects[(effects["template"] == "T2 {}") & (effects["position"] == "function")]["delta_logp"].mean()
    assert f"| `T2 {{}}` | 12 | {t2:+.3f} |" in table and t2 < 0


def test_steering_verdict_is_partly_reproduced_when_no_interval_clears_zero():
    res, loss = _ft_inputs()
    line = function_tokens.function_tokens_verdict(res, loss, _effects([0.0, 0.0, 0.0, 0.0], word_noise=0.5))
    assert section_verdict(line) == "partly reproduced"
    assert "not reproduced: at no strength" in line


def test_steering_that_rises_in_only_half_the_templates_is_inconclusive():
    res, loss = _ft_inputs()
    line = function_tokens.function_tokens_verdict(res, loss, _effects([0.8, 0.6, -0.2, -0.1]))
    assert section_verdict(line) == "partly reproduced"  # coverage and loss hold; steering does not count
    assert "steering at the function token inconclusive" in line and "in only 2 of 4 templates" in line


def _dynamics(ratios_last: list[float]) -> pd.DataFrame:
    """3 layers, steps 0 and 3000; <s>'s residual norm over the others' per layer at the last step."""
    rows = [{"step": 0, "layer": i, "resid_first": 1.0, "resid_rest": 1.0} for i in range(3)]
    rows += [{"step": 3000, "layer": i, "resid_first": 10.0 * r, "resid_rest": 10.0} for i, r in enumerate(ratios_last)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("adam,sgd,ok", [
    ([[2.5, 1.0, 0.9], [3.0, 1.2, 1.0]], [[1.3, 1.1, 1.0], [1.5, 1.0, 1.0]], True),
    ([[2.5, 1.0, 0.9], [1.6, 1.2, 1.0]], [[1.3, 1.1, 1.0], [1.5, 1.0, 1.0]], False),  # one seed below 2x
    ([[2.5, 1.0, 0.9], [3.0, 1.2, 1.0]], [[1.3, 1.1, 1.0], [3.5, 1.0, 1.0]], False),  # SGD peaks higher in one seed
])
def test_the_residual_peak_clause_needs_every_seed(adam, sgd, ok):
    by_seed = {seed: {"adam": _dynamics(a), "sgd": _dynamics(s)} for seed, a, s in zip((0, 2), adam, sgd)}
    text, got = attention_sinks.residual_peak_finding(by_seed)
    assert got is ok and text.startswith("Adam-driven residual peak " + ("reproduced" if ok else "inconclusive"))
    assert f"{max(adam[0]):.2f}× / {max(adam[1]):.2f}×" in text and "(seeds 0, 2, largest layer)" in text
