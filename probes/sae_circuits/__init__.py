"""SAE circuit discovery (arXiv 2405.12522): discrete SAEs on per-head outputs trained on contrast
pairs (IOI, greater-than, docstring, Bigram-Backcopy, a planted circuit), scored against patching
baselines with the evidence each comparison carries (split-half reliability, bootstrap intervals).

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
    SAECircuitsConfig,
    SAECircuitsResult,
    head_outputs,
    make_task,
    roc_auc,
    roc_points,
)
from probes.sae_circuits.tasks.planted import TASK as PLANTED_TASK
from probes.sae_circuits.tasks.planted import PlantedSpec, planted_checkpoint

__all__ = [
    "edge_scores",
    "head_outputs",
    "head_patching",
    "make_task",
    "node_scores",
    "planted_checkpoint",
    "PLANTED_TASK",
    "PlantedSpec",
    "roc_auc",
    "roc_points",
    "sae_codes",
    "SAECircuitsConfig",
    "SAECircuitsResult",
    "train_sae",
    "unique_cooccurrence",
]
