"""The statistics behind headline numbers, against scipy and closed forms on small inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from workbench.stats import (
    bootstrap,
    cluster_bootstrap,
    mean_ci,
    partial_correlation,
    partial_correlation_p,
    permutation_test,
    split_half_reliability,
    two_proportion_sample_size,
)


def test_bootstrap_interval_agrees_with_scipys_percentile_bootstrap():
    x = np.random.default_rng(1).normal(3.0, 2.0, 200)
    ours = mean_ci(x, n_boot=4000, seed=0)
    theirs = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=0).confidence_interval
    assert ours.value == pytest.approx(x.mean())
    width = theirs.high - theirs.low
    assert abs(ours.lo - theirs.low) < 0.1 * width and abs(ours.hi - theirs.high) < 0.1 * width  # Monte Carlo error only
    # and the textbook interval: mean ± 1.96 s/sqrt(n)
    se = x.std(ddof=1) / math.sqrt(len(x))
    assert abs(ours.lo - (x.mean() - 1.96 * se)) < 0.1 * width


def test_a_paired_bootstrap_resamples_every_array_with_the_same_units():
    x = np.arange(10.0)
    est = bootstrap(lambda i: float(np.mean(x[i] - x[i])), 10, n_boot=200)  # a paired difference of a unit with itself
    assert est.value == est.lo == est.hi == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap(lambda i: 0.0, 1)


def test_cluster_bootstrap_of_equal_clusters_is_the_bootstrap_of_their_means():
    rng = np.random.default_rng(2)
    means = rng.normal(0.0, 1.0, 12)
    x = np.repeat(means, 4) + rng.normal(0.0, 0.1, 48)  # 12 clusters of 4 correlated units
    labels = np.repeat([f"w{i}" for i in range(12)], 4)
    ours = mean_ci(x, clusters=labels, n_boot=500, seed=3)
    per_cluster = x.reshape(12, 4).mean(1)
    ref = bootstrap(lambda i: per_cluster[i].mean(), 12, n_boot=500, seed=3)  # same draws, cluster means by hand
    assert ours.value == pytest.approx(x.mean(), rel=1e-12)
    assert (ours.lo, ours.hi) == pytest.approx((ref.lo, ref.hi), rel=1e-9, abs=1e-12)
    assert ours.n == 12
    naive = mean_ci(x, n_boot=500, seed=3)  # treats 48 correlated units as independent: too narrow
    assert (ours.hi - ours.lo) > 1.5 * (naive.hi - naive.lo)


def test_cluster_bootstrap_with_one_unit_per_cluster_draws_what_the_bootstrap_draws():
    x = np.random.default_rng(4).normal(size=30)
    a = cluster_bootstrap(lambda i: x[i].mean(), list(range(30)), n_boot=300, seed=5)
    b = bootstrap(lambda i: x[i].mean(), 30, n_boot=300, seed=5)
    assert (a.value, a.lo, a.hi) == pytest.approx((b.value, b.lo, b.hi), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2 clusters"):
        cluster_bootstrap(lambda i: 0.0, ["a", "a", "a"])


def test_permutation_test_equals_scipys_exact_test():
    a, b = [2.1, 3.4, 1.9, 5.0, 4.4, 3.3], [1.0, 0.4, 2.2, 1.7, 0.9, 2.8]
    diff, p = permutation_test(a, b)
    ref = sps.permutation_test((a, b), lambda u, v: np.mean(u) - np.mean(v), permutation_type="independent",
                               alternative="two-sided", n_resamples=np.inf)
    assert diff == pytest.approx(np.mean(a) - np.mean(b))
    assert p == pytest.approx(ref.pvalue, abs=1e-12)


def test_sampled_permutation_test_is_close_to_the_exact_one():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.4, 1, 30), rng.normal(0, 1, 30)
    _, p = permutation_test(a, b, n_perm=20_000, seed=1)
    welch = sps.ttest_ind(a, b).pvalue  # large samples: the t test and the permutation test agree closely
    assert abs(p - welch) < 0.03


def test_partial_correlation_equals_the_closed_form_and_ranks_for_spearman():
    rng = np.random.default_rng(0)
    z = rng.normal(size=60)
    x = 2 * z + rng.normal(size=60)
    y = -z + 0.5 * x + rng.normal(size=60)
    est = partial_correlation(x, y, z)
    rxy, rxz, ryz = np.corrcoef(x, y)[0, 1], np.corrcoef(x, z)[0, 1], np.corrcoef(y, z)[0, 1]
    closed = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert est.value == pytest.approx(closed, abs=1e-12)
    assert est.lo < est.value < est.hi
    sp = partial_correlation(x, y, z, method="spearman")
    rx, ry, rz = sps.rankdata(x), sps.rankdata(y), sps.rankdata(z)
    rxy, rxz, ryz = np.corrcoef(rx, ry)[0, 1], np.corrcoef(rx, rz)[0, 1], np.corrcoef(ry, rz)[0, 1]
    assert sp.value == pytest.approx((rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2)), abs=1e-12)
    # the p value: with no covariate it is scipy's Pearson p
    r = np.corrcoef(x, y)[0, 1]
    assert partial_correlation_p(r, 60, 0) == pytest.approx(sps.pearsonr(x, y).pvalue, rel=1e-9)
    with pytest.raises(ValueError, match="too few"):
        partial_correlation(x[:4], y[:4], z[:4])


def test_split_half_reliability_is_high_for_stable_effects_and_near_zero_for_noise():
    rng = np.random.default_rng(0)
    true = rng.normal(size=40)  # 40 heads
    stable = true + 0.3 * rng.normal(size=(64, 40))  # 64 pairs
    noise = rng.normal(size=(64, 40))
    r, corrected = split_half_reliability(stable)
    assert r > 0.9 and corrected == pytest.approx(2 * r / (1 + r)) and corrected >= r
    assert abs(split_half_reliability(noise)[0]) < 0.15
    # one split by hand equals scipy's Spearman of the halves' means
    order = np.random.default_rng(7).permutation(64)
    by_hand = sps.spearmanr(stable[order[:32]].mean(0), stable[order[32:]].mean(0)).statistic
    assert -1 <= by_hand <= 1 and abs(by_hand - r) < 0.1


def test_two_proportion_sample_size_matches_the_formula_and_gives_its_power():
    n = two_proportion_sample_size(0.109, 0.093)
    za, zb = sps.norm.ppf(0.975), sps.norm.ppf(0.8)
    pbar = 0.101
    closed = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(0.109 * 0.891 + 0.093 * 0.907)) ** 2 / 0.016**2
    assert n == math.ceil(closed)
    # simulated power of a z test at a larger gap (fast), at the size the function asks for
    p1, p2 = 0.3, 0.2
    m = two_proportion_sample_size(p1, p2)
    rng = np.random.default_rng(0)
    a, b = rng.binomial(m, p1, 4000) / m, rng.binomial(m, p2, 4000) / m
    pooled = (a + b) / 2
    zstat = (a - b) / np.sqrt(2 * pooled * (1 - pooled) / m)
    assert abs(np.mean(np.abs(zstat) > za) - 0.8) < 0.03
    with pytest.raises(ValueError, match="equal"):
        two_proportion_sample_size(0.2, 0.2)


def test_block_bootstrap_of_pearson_r_from_sums_equals_the_direct_r():
    from probes.bigram_subnetworks.metrics import (
        block_sums,
        pearson_from_sums,
        r_difference,
        r_interval,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    y = 0.6 * x + rng.normal(size=1000)
    keep = rng.random(1000) > 0.1
    s = block_sums(x, np.where(keep, y, 0.0), keep, 50)
    assert s.shape == (20, 6)
    assert pearson_from_sums(s) == pytest.approx(sps.pearsonr(x[keep], y[keep]).statistic, abs=1e-12)
    # a resample of blocks equals r over the concatenated positions of those blocks
    idx = np.array([3, 3, 7, 19, 0])
    pos = np.concatenate([np.arange(b * 50, b * 50 + 50) for b in idx])
    assert pearson_from_sums(s[idx]) == pytest.approx(sps.pearsonr(x[pos][keep[pos]], y[pos][keep[pos]]).statistic, abs=1e-12)
    lo, hi = r_interval(s)
    assert lo < pearson_from_sums(s) < hi
    d = r_difference(s, s)
    assert d.value == d.lo == d.hi == 0.0
