"""Every probe module imports, registers, and reads like every other."""

from __future__ import annotations

import dataclasses

import probes
from workbench.probe_api import list_probes
from workbench.results import Result

EXPECTED = {
    "residual-norms", "attention-sinks", "function-tokens", "bigram-subnetworks",
    "linguistic-collapse", "key-space", "sae-circuits",
}


def test_every_analysis_package_imports():
    assert set(probes.ANALYSES) == {"attention_sinks", "bigram_subnetworks", "cross_analysis", "function_tokens", "key_space",
                                    "linguistic_collapse", "residual_norms", "sae_circuits"}


def test_every_probe_has_the_standard_shape():
    specs = list_probes()
    assert EXPECTED <= {s.name for s in specs}
    for spec in specs:
        assert dataclasses.is_dataclass(spec.config_cls), spec.name
        assert issubclass(spec.result_cls, Result), spec.name
        assert spec.numerics in ("raw", "processed"), spec.name
        spec.config_cls()  # defaults construct
        assert callable(spec.run) and spec.description
