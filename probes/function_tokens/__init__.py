"""Function tokens (Memory Retrieval and Consolidation in LLMs through Function Tokens, arXiv
2510.08203): the token-feature bipartite graph, the loss split by function/content tokens, and
the reactivation and steering case study.

The public face of the analysis: everything outside this package uses these names."""

from probes.function_tokens.loss import (
    FunctionTokenLossConfig,
    FunctionTokenLossResult,
    LossOverTrainingConfig,
    LossOverTrainingResult,
    loss_over_checkpoints,
)
from probes.function_tokens.probe import (
    BipartiteAccumulator,
    FunctionTokensConfig,
    FunctionTokensResult,
    export_graph,
    function_token_ids,
    sae_labels,
    token_stats,
)
from probes.function_tokens.steering import (
    FunctionTokenSteeringConfig,
    FunctionTokenSteeringResult,
)

__all__ = [
    "BipartiteAccumulator",
    "export_graph",
    "function_token_ids",
    "FunctionTokenLossConfig",
    "FunctionTokenLossResult",
    "FunctionTokensConfig",
    "FunctionTokensResult",
    "FunctionTokenSteeringConfig",
    "FunctionTokenSteeringResult",
    "loss_over_checkpoints",
    "LossOverTrainingConfig",
    "LossOverTrainingResult",
    "sae_labels",
    "token_stats",
]
