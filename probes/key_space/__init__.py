"""Key-space correlation and navigation (arXiv 2410.02284): k-means clusters of the unembedding
keys, middle-rank precision, and in-context navigation against a top-k baseline.

The public face of the analysis: everything outside this package uses these names."""

from probes.key_space.gold import gold_lists
from probes.key_space.probe import (
    STOP_STRINGS,
    KeySpaceConfig,
    KeySpaceResult,
    build_prompt,
    cached_cluster_keys,
    default_n_clusters,
    group_table,
    nearest_neighbours,
    numbered_answers,
    probe_typed_instruction,
    prompt_tokens,
    resolve_style,
    single_token_id,
    token_strings,
    unembedding_keys,
)

__all__ = [
    "build_prompt",
    "cached_cluster_keys",
    "default_n_clusters",
    "gold_lists",
    "group_table",
    "KeySpaceConfig",
    "KeySpaceResult",
    "nearest_neighbours",
    "numbered_answers",
    "probe_typed_instruction",
    "prompt_tokens",
    "resolve_style",
    "single_token_id",
    "STOP_STRINGS",
    "token_strings",
    "unembedding_keys",
]
