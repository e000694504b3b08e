"""A training recipe (data, init, optimiser, steps) and where its run is cached; the seed whose ⟨s⟩
self-score starts negative, for the ReLU-attention control."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from probes.attention_sinks.bigram_backcopy.model import (
    bb_model,
    bos_self_scores,
    check_init,
)
from probes.attention_sinks.bigram_backcopy.task import (
    SEQ_LEN,
    check_charset,
    load_bb_task,
)
from workbench.errors import ConfigError
from workbench.paths import cache_dir
from workbench.training import log_spaced_steps

# Recipe fields added after models were cached, with the value those models were trained with: a
# recipe that has it leaves the field out of its key.
LEGACY_KEY_VALUES: dict[str, Any] = {"charset": "all", "init": "tl", "layernorm_bias": False}

@dataclasses.dataclass(frozen=True)
class BBRecipe:
    """Everything that determines a trained BB model (paper defaults: batch 512, 10k steps)."""

    n_layers: int = 1
    d_model: int = 256
    attention: Literal["softmax", "relu"] = "softmax"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    batch_size: int = 512
    steps: int = 10_000
    seq_len: int = SEQ_LEN
    corpus: str = "brown"
    charset: str = "all"  # a key of CHARSETS
    n_triggers: int = 3
    n_checkpoints: int = 16  # log-spaced, plus step 0 and the final step
    seed: int = 0
    init: str = "tl"  # a key of BB_INITS: weight init of the linear layers
    layernorm_bias: bool = True  # False: LayerNorm biases frozen at zero (the earlier variant)

    def validate(self) -> None:
        if self.attention not in ("softmax", "relu"):
            raise ConfigError(f"attention must be 'softmax' or 'relu', got {self.attention!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        check_charset(self.charset)
        check_init(self.init)
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")

    @property
    def variant(self) -> str:
        if self.attention == "relu":
            return "relu"
        return "sgd" if self.optimizer == "sgd" else "adam"

    @property
    def key(self) -> str:
        fields = dataclasses.asdict(self)
        for name, legacy in LEGACY_KEY_VALUES.items():  # recipes from before these options keep their keys
            if fields[name] == legacy:
                del fields[name]
        blob = json.dumps(fields, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        cs = "" if self.charset == "all" else f"-{self.charset}"
        return f"bb-L{self.n_layers}{cs}-{self.variant}-b{self.batch_size}-s{self.steps}-seed{self.seed}-{self.key}"

    def checkpoint_steps(self) -> tuple[int, ...]:

        return tuple(sorted({0, *log_spaced_steps(self.steps, self.n_checkpoints), self.steps}))


# The paper's three training variants (AdamW, SGD with momentum, ReLU attention under AdamW).
BB_VARIANTS: dict[str, dict[str, Any]] = {
    "adam": {},
    "sgd": {"optimizer": "sgd", "lr": 0.03},
    "relu": {"attention": "relu"},
}


def bb_recipe(variant: str = "adam", **overrides: Any) -> BBRecipe:
    if variant not in BB_VARIANTS:
        raise ConfigError(f"unknown BB variant {variant!r}; choose one of {sorted(BB_VARIANTS)}")
    recipe = BBRecipe(**{**BB_VARIANTS[variant], **overrides})
    recipe.validate()
    return recipe


def bb_dir(recipe: BBRecipe) -> Path:
    return cache_dir() / "bb" / recipe.name



def relu_inactive_seed(recipe: "BBRecipe", start: int = 1, tries: int = 64) -> int:
    """The first seed >= `start` whose freshly initialised model has a negative ⟨s⟩ self-score in
    block 0: under ReLU attention ⟨s⟩'s self-weight then starts at zero and gets no gradient, the case
    in which ReLU attention cannot grow ⟨s⟩'s residual through its own value. Block 0's scores come
    before any attention pattern, so the softmax model of the recipe's shape (same init) gives them."""
    task = load_bb_task(recipe.corpus, recipe.n_triggers, recipe.charset)
    for seed in range(start, start + tries):
        model = bb_model(task, recipe.n_layers, recipe.d_model, seed, init=recipe.init, layernorm_bias=recipe.layernorm_bias)
        if bos_self_scores(model, task.bos_id)[0] < 0:
            return seed
    raise ConfigError(f"no seed in [{start}, {start + tries}) starts with a negative block-0 <s> self-score")
