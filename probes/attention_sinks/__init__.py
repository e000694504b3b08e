"""Attention sinks, value drains and residual peaks (Active-Dormant Attention Heads, arXiv 2410.13835):
the LM head survey with zero-ablation dormancy, and the Bigram-Backcopy task, its toy models
(AdamW, SGD, ReLU attention) and their training dynamics.

The public face of the analysis: everything outside this package uses these names."""

from probes.attention_sinks.bigram_backcopy import (
    BB_VARIANTS,
    SEQ_LEN,
    BBRecipe,
    BBTask,
    bb_checkpoints,
    bb_model,
    bb_recipe,
    bb_risks,
    bb_train_time,
    install_relu_attention,
    load_bb,
    load_bb_task,
    paired_gap,
    relu_inactive_seed,
    task_of_model,
    train_bb,
)
from probes.attention_sinks.dynamics import BigramBackcopyConfig, BigramBackcopyResult
from probes.attention_sinks.heads import (
    VERDICTS,
    HeadSurveyAccumulator,
    HeadTables,
    dormancy_verdicts,
    head_ablation,
    spread_chunks,
)
from probes.attention_sinks.probe import (
    SPEC,
    AttentionSinksConfig,
    AttentionSinksResult,
    domain_contrast,
    run,
)
from probes.attention_sinks.prompt import prompt_head

__all__ = [
    "VERDICTS", "dormancy_verdicts",
    "AttentionSinksConfig", "AttentionSinksResult", "bb_checkpoints", "bb_model", "bb_recipe", "bb_risks",
    "bb_train_time", "BB_VARIANTS", "BBRecipe", "BBTask", "BigramBackcopyConfig", "BigramBackcopyResult",
    "domain_contrast", "head_ablation", "HeadSurveyAccumulator", "HeadTables", "install_relu_attention",
    "load_bb", "load_bb_task", "paired_gap", "prompt_head", "relu_inactive_seed", "run", "SEQ_LEN", "SPEC",
    "spread_chunks", "task_of_model", "train_bb",
]
