"""Bigram subnetworks (arXiv 2504.15471): continuous-sparsification masks over a lambda sweep, the
optimal subnetwork, and the bigram, ablation, overlap and rotation analyses.

The public face of the analysis: everything outside this package uses these names."""

from probes.bigram_subnetworks.bigrams import BigramModel
from probes.bigram_subnetworks.mask_training import optimizer_step
from probes.bigram_subnetworks.masking import MaskLogits, apply_masks, load_masks
from probes.bigram_subnetworks.probe import (
    PAPER,
    BigramSubnetworksConfig,
    BigramSubnetworksResult,
    announce_memory,
)

__all__ = [
    "announce_memory",
    "apply_masks",
    "BigramModel",
    "BigramSubnetworksConfig",
    "BigramSubnetworksResult",
    "load_masks",
    "MaskLogits",
    "optimizer_step",
    "PAPER",
]
