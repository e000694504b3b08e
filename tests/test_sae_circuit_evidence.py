"""The planted-circuit model (exact truth), per-pair patching effects, and the evidence a circuit
comparison reports (split-half reliability, paired bootstrap AUC intervals), each against a
brute-force or library computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as sps
import torch
from sklearn.metrics import roc_auc_score

from probes.sae_circuits import SAECircuitsConfig
from probes.sae_circuits.baselines import head_patching
from probes.sae_circuits.evidence import auc, auc_intervals, circuit_of, split_half
from probes.sae_circuits.tasks.planted import (
    BLANK,
    PlantedSpec,
    planted_checkpoint,
    planted_circuit,
    recall_prompts,
)
from workbench.errors import ConfigError
from workbench.models import load_model
from workbench.runner import run_probe

SPEC = PlantedSpec(n_layers=3, n_heads=6, n_circuit=5, seed=1)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    import os

    old = os.environ.get("WORKBENCH_CACHE")
    os.environ["WORKBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        path = planted_checkpoint(SPEC)
        model = load_model(str(path), numerics="processed")
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_CACHE")
        else:
            os.environ["WORKBENCH_CACHE"] = old
    return model


def test_planted_circuit_is_exact(planted):
    """Patching or mean-ablating a head outside the planted set changes no pair's metric at all;
    every planted head changes it; attribution agrees (the planted path is linear in z)."""
    circuit = planted_circuit(planted)
    assert len(circuit) == SPEC.n_circuit and len(set(circuit)) == SPEC.n_circuit
    truth = torch.zeros(SPEC.n_layers, SPEC.n_heads, dtype=torch.bool)
    for l, h in circuit:
        truth[l, h] = True
    prompts = recall_prompts(planted, 24, seed=3)
    assert all(p[0] != BLANK and q[0] == BLANK and p[1:] == q[1:] for p, q in zip(prompts.positive, prompts.negative))
    for method in ("patching", "mean-ablation", "attribution"):
        out = head_patching(planted, prompts, method, batch_size=8, progress=False)
        assert out.per_pair.shape == (24, SPEC.n_layers, SPEC.n_heads)
        assert out.per_pair[:, ~truth].abs().max() == 0.0, method  # no path at all: exactly zero
        assert (out.per_pair[:, truth].abs() > 1e-3).all(), method
        assert out.total_effect > 5


def test_recall_prompts_need_a_planted_model(tiny_llama):
    with pytest.raises(ConfigError, match="planted-circuit model"):
        recall_prompts(tiny_llama, 4)


def test_per_pair_effects_equal_single_pair_runs(planted):
    """Each row of the batched per-pair effects equals patching that pair alone; their mean is the effect."""
    prompts = recall_prompts(planted, 10, seed=4)
    batched = head_patching(planted, prompts, "patching", batch_size=4, progress=False)
    for i in (0, 3, 9):
        one = prompts.subset(i + 1)
        one = type(one)(one.task, one.positive[i:], one.negative[i:], one.right[i:], one.wrong[i:])
        alone = head_patching(planted, one, "patching", batch_size=1, progress=False)
        assert torch.allclose(batched.per_pair[i], alone.per_pair[0], rtol=1e-4, atol=1e-4 * batched.per_pair.abs().max())
    assert torch.allclose(batched.effect, batched.per_pair.mean(0))


def test_circuit_of_matches_the_definition():
    rng = np.random.default_rng(0)
    eff = rng.normal(size=(20, 7))
    pos, neg = rng.normal(3, 1, 20), rng.normal(0, 1, 20)
    idx = rng.integers(0, 20, 20)
    share = eff[idx].mean(0) / (pos[idx].mean() - neg[idx].mean())
    assert (circuit_of(eff, pos, neg, 0.1, idx) == (np.abs(share) > 0.1)).all()


def test_split_half_against_brute_force():
    """Two heads always in the circuit, one only in half the pairs, the rest noise: the stable
    count, and the Spearman mean over splits computed directly with scipy."""
    rng = np.random.default_rng(1)
    n, k = 40, 8
    eff = rng.normal(0, 0.02, size=(n, k))
    eff[:, 0] -= 1.0
    eff[:, 1] -= 0.6
    eff[: n // 2, 2] -= 0.2  # in the full circuit (mean 0.1 > 0.05) but not in every half
    pos, neg = np.full(n, 2.0), np.full(n, 0.0)
    out = split_half(eff, pos, neg, 0.05, [f"h{i}" for i in range(k)], n_splits=50, seed=7)
    assert out["stable"] == ["h0", "h1"] and out["stable_heads"] == 2
    assert out["circuit_size"] == 3
    r = np.random.default_rng(7)
    rs = []
    for _ in range(50):
        o = r.permutation(n)
        rs.append(sps.spearmanr(eff[o[: n // 2]].mean(0), eff[o[n // 2:]].mean(0)).statistic)
    assert out["spearman"] == pytest.approx(np.mean(rs), rel=1e-9)
    assert out["spearman_brown"] == pytest.approx(2 * np.mean(rs) / (1 + np.mean(rs)), rel=1e-9)


def test_auc_intervals():
    rng = np.random.default_rng(2)
    n, k = 30, 12
    truth_eff = rng.normal(0, 0.01, size=(n, k))
    truth_eff[:, :3] -= 1.0
    pos, neg = np.full(n, 1.0), np.full(n, -1.0)
    close = truth_eff + rng.normal(0, 0.3, size=(n, k))  # a noisy per-pair method
    fixed = rng.normal(size=k)
    fixed[:3] += 0.5
    got = auc_intervals(truth_eff, pos, neg, 0.05, {"close": close}, {"fixed": fixed}, n_boot=300, seed=0)
    truth = circuit_of(truth_eff, pos, neg, 0.05)
    assert got["close"].value == pytest.approx(roc_auc_score(truth, np.abs(close.mean(0))))
    assert got["fixed"].value == pytest.approx(roc_auc_score(truth, fixed))
    for e in got.values():
        assert e.lo <= e.value <= e.hi
    # an exact truth: fixed scores get no interval, per-pair scores still vary with the pairs
    exact = np.zeros(k, dtype=bool)
    exact[:3] = True
    got = auc_intervals(None, pos, neg, 0.05, {"close": close}, {"fixed": fixed}, exact_truth=exact, n_boot=300)
    assert got["fixed"].lo == got["fixed"].hi == pytest.approx(roc_auc_score(exact, fixed))
    assert np.isnan(auc(np.ones(3, dtype=bool), np.arange(3.0)))


def test_probe_on_planted_model(planted, store):
    """The probe takes the planted circuit as its truth, scores every method against it with
    intervals, and reports the SAE method's time on the baseline's own pairs."""
    cfg = SAECircuitsConfig(task="planted-recall", n_prompts=24, n_seeds=2, epochs=30, n_features=16, baseline_prompts=12,
                            mean_ablation_too=True, batch_size=8, n_boot=100)
    res = run_probe("sae-circuits", planted, None, cfg, store=store).result
    st = res.stats
    assert st["ground_truth_source"] == "planted" and st["circuit_size"] == SPEC.n_circuit
    assert set(res.pair_effects) == {"patching", "attribution", "mean-ablation"}
    assert res.pair_effects["patching"].shape == (12, SPEC.n_layers * SPEC.n_heads)
    aucs = st["evidence"]["auc"]
    assert aucs["patching"]["value"] == aucs["mean-ablation"]["value"] == 1.0
    assert aucs["sae_node"]["value"] == pytest.approx(roc_auc_score(res.heads["ground_truth"], res.heads["node_score"]))
    assert st["sae_method_s_at_baseline_pairs"] > 0 and st["mean_ablation_s"] > 0
    again = run_probe("sae-circuits", planted, None, cfg, store=store).result
    assert torch.equal(again.pair_effects["patching"], res.pair_effects["patching"])
