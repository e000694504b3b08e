"""How much a circuit-discovery comparison can be trusted: the reliability of a patching ground
truth over its prompt pairs, and each method's ROC AUC against it with a bootstrap interval.

A patching ground truth is an estimate from a sample of pairs: a head is in the circuit when its
mean effect over the pairs exceeds `threshold` times the mean positive-negative gap. Two halves of
the pairs should agree on it:
- the split-half Spearman correlation of the per-head mean effects (with its Spearman-Brown
  correction to the full pair count), and
- how many heads are *stably* in the circuit: in both halves' circuits in at least `STABLE` of
  random half splits.
Each method's AUC is recomputed on bootstrap resamples of the pairs, with the ground truth
recomputed from the same resample (a paired bootstrap); methods whose score comes from the same
pairs (attribution patching, mean ablation) are resampled with them, and scores that do not depend
on the pairs (the SAE method's, from its own prompts) stay fixed. A ground truth that is exact
(a planted circuit) is fixed too, and only the per-pair methods vary.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from workbench.stats import Estimate, bootstrap, split_half_reliability

STABLE = 0.9  # a head is stably in the circuit when both halves include it in this share of splits


def circuit_of(effects: np.ndarray, positive: np.ndarray, negative: np.ndarray, threshold: float,
               idx: np.ndarray | None = None) -> np.ndarray:
    """[heads] bool: |mean effect| over the pairs `idx` above `threshold` x the mean gap of those pairs."""
    idx = np.arange(len(effects)) if idx is None else idx
    total = positive[idx].mean() - negative[idx].mean()
    if abs(total) < 1e-12:
        return np.zeros(effects.shape[1], dtype=bool)
    return np.abs(effects[idx].mean(0) / total) > threshold


def auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of `scores` for `truth`; NaN when the truth holds one class only."""
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, scores))


def split_half(effects: np.ndarray, positive: np.ndarray, negative: np.ndarray, threshold: float,
               labels: list[str], n_splits: int = 200, seed: int = 0) -> dict[str, Any]:
    """Reliability of a patching ground truth over its pairs (`effects`: [pairs, heads])."""
    r, r_full = split_half_reliability(effects, n_splits, seed)
    rng = np.random.default_rng(seed + 1)
    n = len(effects)
    both = np.zeros(effects.shape[1])
    jaccard = []
    for _ in range(n_splits):
        order = rng.permutation(n)
        a = circuit_of(effects, positive, negative, threshold, order[: n // 2])
        b = circuit_of(effects, positive, negative, threshold, order[n // 2:])
        both += a & b
        union = (a | b).sum()
        jaccard.append((a & b).sum() / union if union else 1.0)
    stable = both / n_splits >= STABLE
    return {"spearman": r, "spearman_brown": r_full, "jaccard": float(np.mean(jaccard)),
            "circuit_size": int(circuit_of(effects, positive, negative, threshold).sum()),
            "stable_heads": int(stable.sum()), "stable": [labels[i] for i in np.flatnonzero(stable)],
            "n_pairs": n, "n_splits": n_splits}


def auc_intervals(truth_effects: np.ndarray | None, positive: np.ndarray, negative: np.ndarray, threshold: float,
                  per_pair: dict[str, np.ndarray], fixed: dict[str, np.ndarray], exact_truth: np.ndarray | None = None,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Estimate]:
    """Each method's AUC with a paired bootstrap interval over the ground truth's pairs.

    `truth_effects` ([pairs, heads]) defines the truth by `circuit_of`, unless `exact_truth` is
    given. `per_pair` methods ([pairs, heads] effects on the same pairs) score heads by |mean
    effect| over the resample; `fixed` methods ([heads] scores) keep their scores."""
    n = len(positive)

    def truth(idx: np.ndarray) -> np.ndarray:
        if exact_truth is not None:
            return exact_truth
        return circuit_of(truth_effects, positive, negative, threshold, idx)

    out: dict[str, Estimate] = {}
    for name, eff in per_pair.items():
        out[name] = bootstrap(lambda idx, eff=eff: auc(truth(idx), np.abs(eff[idx].mean(0))), n, n_boot, seed=seed)
    for name, scores in fixed.items():
        if exact_truth is not None:  # nothing to resample
            v = auc(exact_truth, scores)
            out[name] = Estimate(v, v, v, n, "exact ground truth, fixed scores: no resampling")
        else:
            out[name] = bootstrap(lambda idx, scores=scores: auc(truth(idx), scores), n, n_boot, seed=seed)
    return out
