"""Synthetic tasks with a known mechanism, used to train toy models whose circuits are known by
construction (ground truth for probes)."""

from workbench.tasks.bigram_backcopy import (
    BB_VARIANTS,
    BBRecipe,
    BBTask,
    bb_checkpoints,
    bb_model,
    bb_model_config,
    bb_recipe,
    bb_risks,
    install_relu_attention,
    load_bb,
    load_bb_task,
    train_bb,
)

__all__ = [
    "BB_VARIANTS", "BBRecipe", "BBTask", "bb_checkpoints", "bb_model", "bb_model_config", "bb_recipe", "bb_risks",
    "install_relu_attention", "load_bb", "load_bb_task", "train_bb",
]
