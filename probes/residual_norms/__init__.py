"""Residual norms and logit-lens accuracy per layer: the built-in end-to-end analysis.

The public face of the analysis: everything outside this package uses these names."""

from probes.residual_norms.probe import (
    ResidualNormsAccumulator,
    ResidualNormsConfig,
    ResidualNormsResult,
)

__all__ = [
    "ResidualNormsAccumulator",
    "ResidualNormsConfig",
    "ResidualNormsResult",
]
