"""Half precision end to end: every probe that runs on a tiny model gives, in bfloat16, a summary
within the derived tolerance of float32's (`workbench.precision`: 2 x the measured logit gap x
max(|v|, 1) per value), and its accumulators stay in float32/float64."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.corpora.base import validation_document
from workbench.models import load_model
from workbench.precision import logit_gap, summary_differences

PROBES = {
    "residual-norms": {},
    "attention-sinks": {"ablation_tokens": 64, "example_len": 16, "domains": []},
    "linguistic-collapse": {"heldout_max_tokens": 256},
    "sae-features": {},
    "function-tokens": {},
    "function-token-loss": {},
    "sinks-by-token-kind": {},
    "function-token-steering": {},
    "bigram-subnetworks": dict(lambdas=[0.0, 20.0], max_steps=15, lr=0.02, temp_growth=1.25, seq_len=32, eval_tokens=512,
                               rotation_tokens=512, n_random=2, overlap_samples=200),
}
STREAM = {"max_tokens": 600, "seq_len": 32, "batch_size": 4}


@pytest.fixture(scope="module")
def setting(brown, tmp_path_factory):
    from sae_standins import saved_sae

    m32 = load_model("tiny-llama", device="cpu")
    m16 = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    val = [d for d in brown.documents if validation_document(d.doc_id)][:4]
    train = [d for d in brown.documents if not validation_document(d.doc_id)][:8]
    corpus = type(brown)("brown-precision", brown.version, train + val, genre_names=brown.genre_names)
    sae = str(saved_sae(Path(tmp_path_factory.mktemp("sae")) / "s", hook="blocks.1.hook_resid_post", d_in=m32.cfg.d_model,
                        d_sae=48, k=4))
    tokens = torch.randint(3, 250, (4, 64), generator=torch.Generator().manual_seed(0))
    return m32, m16, corpus, sae, logit_gap(m32, m16, tokens)


@pytest.mark.parametrize("probe", list(PROBES))
def test_a_bfloat16_run_agrees_with_float32_within_the_derived_tolerance(setting, probe, store):
    from workbench.config import config_fields
    from workbench.probe_api import get_probe
    from workbench.runner import run_probe

    m32, m16, corpus, sae, gap = setting
    assert 1e-4 < gap < 0.05  # bfloat16 rounding is visible, and small
    spec = get_probe(probe)
    fields = config_fields(spec.config_cls)
    cfg = {k: v for k, v in STREAM.items() if k in fields}
    cfg.update(PROBES[probe])
    for name in ("sae", "saes"):
        if name in fields:
            cfg[name] = [sae] if name == "saes" else sae
    if "feature" in fields:  # the steered feature is chosen by an argmax: compare the same feature in both
        cfg["feature"] = int(run_probe(probe, m32, corpus, cfg, store=store).result.summary()["feature"])
    full = run_probe(probe, m32, corpus, cfg, store=store)
    half = run_probe(probe, m16, corpus, cfg, store=store)
    assert half.key != full.key and not half.reused  # the precision is part of the key
    rows = summary_differences(full.result.summary(), half.result.summary(), gap)
    assert rows, probe
    bad = [r for r in rows if not r["ok"]]
    assert not bad, bad[:3]


def test_streamed_sums_stay_in_float32_or_float64_in_a_bfloat16_run(setting):
    """The accumulators of a bfloat16 model keep wide sums (a bfloat16 sum of 600 norms would lose
    everything past its 8th bit)."""
    from probes.linguistic_collapse.probe import ClassStatsAccumulator
    from probes.residual_norms import ResidualNormsAccumulator

    _, m16, _, _, _ = setting
    for acc in (ResidualNormsAccumulator(m16, lens_positions=8), ClassStatsAccumulator(m16)):
        floats = {k: v.dtype for k, v in acc.state_dict().items() if v.is_floating_point()}
        assert floats and all(d in (torch.float32, torch.float64) for d in floats.values()), floats
