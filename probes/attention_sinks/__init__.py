"""Attention sinks, value drains and residual peaks (Active-Dormant Attention Heads, arXiv 2410.13835):
the LM head survey with zero-ablation dormancy, and the Bigram-Backcopy task, its toy models
(AdamW, SGD, ReLU attention) and their training dynamics.

The public face of the analysis: everything outside this package uses these names."""

from probes.attention_sinks.bigram_backcopy import (
    SEQ_LEN,
    BBRecipe,
    BBTask,
    bb_recipe,
    bb_train_time,
    load_bb,
    load_bb_task,
    paired_gap,
    relu_inactive_seed,
    task_of_model,
    train_bb,
)
from probes.attention_sinks.dynamics import BigramBackcopyConfig, BigramBackcopyResult
from probes.attention_sinks.heads import (
    HeadSurveyAccumulator,
    dormancy_verdicts,
    head_ablation,
    spread_chunks,
)
from probes.attention_sinks.probe import (
    AttentionSinksConfig,
    AttentionSinksResult,
    domain_contrast,
)
from probes.attention_sinks.prompt import prompt_head

__all__ = [
    "AttentionSinksConfig",
    "AttentionSinksResult",
    "bb_recipe",
    "bb_train_time",
    "BBRecipe",
    "BBTask",
    "BigramBackcopyConfig",
    "BigramBackcopyResult",
    "domain_contrast",
    "dormancy_verdicts",
    "head_ablation",
    "HeadSurveyAccumulator",
    "load_bb",
    "load_bb_task",
    "paired_gap",
    "prompt_head",
    "relu_inactive_seed",
    "SEQ_LEN",
    "spread_chunks",
    "task_of_model",
    "train_bb",
]
