"""SAE circuit discovery (arXiv 2405.12522): discrete SAEs on per-head outputs trained on contrast
pairs (IOI, greater-than, docstring, Bigram-Backcopy), scored against patching baselines.

The public face of the analysis: everything outside this package uses these names."""

from probes.sae_circuits.baselines import head_patching
from probes.sae_circuits.discrete_sae import (
    edge_scores,
    node_scores,
    sae_codes,
    train_sae,
    unique_cooccurrence,
)
from probes.sae_circuits.probe import (
    SPEC,
    SAECircuitsConfig,
    SAECircuitsResult,
    head_outputs,
    make_task,
    roc_auc,
    roc_points,
    run,
)

__all__ = [
    "edge_scores", "head_outputs", "head_patching", "make_task", "node_scores", "roc_auc", "roc_points",
    "run", "sae_codes", "SAECircuitsConfig", "SAECircuitsResult", "SPEC", "train_sae", "unique_cooccurrence",
]
