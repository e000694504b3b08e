"""Linguistic collapse (Neural Collapse in (Large) Language Models, arXiv 2405.17767): NC1-NC4 with
next tokens as classes from streamed float64 class statistics, and the model-size sweep.

The public face of the analysis: everything outside this package uses these names."""

from probes.linguistic_collapse.metrics import etf_error_floor
from probes.linguistic_collapse.probe import (
    ClassStatsAccumulator,
    LinguisticCollapseConfig,
    LinguisticCollapseResult,
)
from probes.linguistic_collapse.sweep import (
    EXPECTED_SIGN,
    GRIDS,
    METRICS,
    SWEEP_STUDY,
    SweepConfig,
    SweepResult,
    correlations,
    load_sweep,
    run_sweep,
)

__all__ = [
    "ClassStatsAccumulator",
    "correlations",
    "etf_error_floor",
    "EXPECTED_SIGN",
    "GRIDS",
    "LinguisticCollapseConfig",
    "LinguisticCollapseResult",
    "load_sweep",
    "METRICS",
    "run_sweep",
    "SWEEP_STUDY",
    "SweepConfig",
    "SweepResult",
]
