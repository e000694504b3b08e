"""Cross-analysis: measurements that connect two analyses on the same model. The probe
`sinks-by-token-kind` splits each head's attention on the first position by query kind (function
or content token); the study `cross-analysis` composes it with the attention-sinks survey, a
stored bigram-subnetworks result, residual norms and the key-space clustering.

The public face of the analysis: everything outside this package uses these names."""

from probes.cross_analysis.study import (
    NAME,
    CrossAnalysisConfig,
    CrossAnalysisResult,
)
from probes.cross_analysis.token_kind import (
    SinksByTokenKindConfig,
    SinksByTokenKindResult,
)

__all__ = [
    "CrossAnalysisConfig",
    "CrossAnalysisResult",
    "NAME",
    "SinksByTokenKindConfig",
    "SinksByTokenKindResult",
]
