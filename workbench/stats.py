"""Statistics for headline numbers: bootstrap confidence intervals, permutation tests, partial
correlation, split-half reliability and the sample size a two-proportion comparison needs.

Every function is seeded and deterministic, works on plain numpy arrays, and is checked in the
tests against scipy or a closed form. Conventions: two-sided tests, 95% intervals, percentile
bootstrap (the resampling unit is whatever the first axis indexes: prompts, tokens, pairs; or
whole clusters of them).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Estimate:
    """A number with its 95% interval (or another level) and how it was obtained."""

    value: float
    lo: float
    hi: float
    n: int
    method: str

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def bootstrap(fn: Callable[[np.ndarray], float], n: int, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> Estimate:
    """Percentile bootstrap of `fn(indices)` over `n` units resampled with replacement (a paired
    resample: `fn` indexes every array it uses with the same indices)."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 units, got {n}")
    rng = np.random.default_rng(seed)
    draws = [fn(rng.integers(0, n, n)) for _ in range(n_boot)]
    return _percentile_interval(float(fn(np.arange(n))), draws, level, n, f"percentile bootstrap, {n_boot} resamples")


def _percentile_interval(value: float, draws: Sequence[float], level: float, n: int, method: str) -> Estimate:
    """`value` with the percentile interval of its finite resampled `draws`."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[np.isfinite(draws)]
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a]) if draws.size else (math.nan, math.nan)
    return Estimate(value, float(lo), float(hi), n, method)


def cluster_bootstrap(fn: Callable[[np.ndarray], float], clusters: Sequence, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> Estimate:
    """Percentile bootstrap of `fn(indices)` that resamples whole clusters: `clusters[i]` names the
    cluster of unit i (units that share a prompt, a word or a seed are not independent), and each
    resample draws as many clusters as there are, with replacement, and passes all their units'
    indices. With one unit per cluster it draws exactly what `bootstrap` draws."""
    labels = np.asarray(clusters)
    groups = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    k = len(groups)
    if k < 2:
        raise ValueError(f"a cluster bootstrap needs at least 2 clusters, got {k}")
    rng = np.random.default_rng(seed)
    draws = [fn(np.concatenate([groups[j] for j in rng.integers(0, k, k)])) for _ in range(n_boot)]
    return _percentile_interval(float(fn(np.arange(len(labels)))), draws, level, k,
                                f"cluster bootstrap over {k} clusters, {n_boot} resamples")


def mean_ci(x: Sequence[float], clusters: Sequence | None = None, **kw) -> Estimate:
    """The mean of `x` with its bootstrap interval (over `clusters` of units when given)."""
    x = np.asarray(x, dtype=float)
    if clusters is not None:
        return cluster_bootstrap(lambda i: x[i].mean(), clusters, **kw)
    return bootstrap(lambda i: x[i].mean(), len(x), **kw)


def permutation_test(a: Sequence[float], b: Sequence[float], n_perm: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Two-sided test that two independent samples share a distribution, on the difference of
    means: (observed difference, p). Every relabelling is enumerated when there are at most
    `n_perm` of them (the exact p); otherwise `n_perm` random ones, with the +1 correction."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pooled, na = np.concatenate([a, b]), len(a)
    observed = a.mean() - b.mean()
    total = math.comb(len(pooled), na)
    tol = 1e-12 * max(1.0, abs(observed))
    if total <= n_perm:
        diffs = []
        for idx in itertools.combinations(range(len(pooled)), na):
            mask = np.zeros(len(pooled), dtype=bool)
            mask[list(idx)] = True
            diffs.append(pooled[mask].mean() - pooled[~mask].mean())
        diffs = np.abs(np.array(diffs))
        return float(observed), float(np.mean(diffs >= abs(observed) - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_perm):
        p = rng.permutation(pooled)
        hits += abs(p[:na].mean() - p[na:].mean()) >= abs(observed) - tol
    return float(observed), float((hits + 1) / (n_perm + 1))


def _residuals(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    design = np.column_stack([np.ones(len(v)), z])
    coef, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ coef


def partial_correlation(x: Sequence[float], y: Sequence[float], covariates: np.ndarray, method: str = "pearson",
                        level: float = 0.95) -> Estimate:
    """Correlation of x and y with the covariates' linear effect removed from both (Spearman: on
    ranks), with a Fisher-z interval on n - 3 - k degrees of freedom."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    z = np.asarray(covariates, dtype=float).reshape(len(x), -1)
    if method == "spearman":
        x, y = sps.rankdata(x), sps.rankdata(y)
        z = np.column_stack([sps.rankdata(c) for c in z.T])
    elif method != "pearson":
        raise ValueError(f"method must be pearson or spearman, got {method!r}")
    n, k = len(x), z.shape[1]
    if n - 3 - k < 1:
        raise ValueError(f"{n} observations are too few for a partial correlation with {k} covariates")
    r = float(np.corrcoef(_residuals(x, z), _residuals(y, z))[0, 1])
    se = 1 / math.sqrt(n - 3 - k)
    q = sps.norm.ppf(0.5 + level / 2)
    zr = math.atanh(max(min(r, 1 - 1e-15), -1 + 1e-15))
    return Estimate(r, math.tanh(zr - q * se), math.tanh(zr + q * se), n, f"partial {method}, Fisher z, {k} covariate(s)")


def partial_correlation_p(r: float, n: int, k: int) -> float:
    """Two-sided p of a partial correlation r from n observations and k covariates (t on n-2-k df)."""
    df = n - 2 - k
    t = r * math.sqrt(df / max(1e-300, 1 - r * r))
    return float(2 * sps.t.sf(abs(t), df))


def split_half_reliability(effects: np.ndarray, n_splits: int = 100, seed: int = 0) -> tuple[float, float]:
    """How reproducible per-unit effects are over items (rows: items such as prompt pairs; columns:
    units such as heads): the mean over random half splits of the Spearman correlation between the
    two halves' mean effects, and its Spearman-Brown correction to the full item count."""
    effects = np.asarray(effects, dtype=float)
    n = effects.shape[0]
    if n < 4:
        raise ValueError(f"split-half reliability needs at least 4 items, got {n}")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        order = rng.permutation(n)
        a, b = effects[order[: n // 2]].mean(0), effects[order[n // 2:]].mean(0)
        rs.append(sps.spearmanr(a, b).statistic)
    r = float(np.nanmean(rs))
    return r, 2 * r / (1 + r)


def two_proportion_sample_size(p1: float, p2: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Observations per group that a two-sided z test needs to tell proportions p1 and p2 apart
    with the given power (the normal-approximation formula)."""
    if p1 == p2:
        raise ValueError("the two proportions are equal: no sample size detects no difference")
    za, zb = sps.norm.ppf(1 - alpha / 2), sps.norm.ppf(power)
    pbar = (p1 + p2) / 2
    n = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / (p1 - p2) ** 2
    return int(math.ceil(n))
