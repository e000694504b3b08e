"""Small language models the workbench trains itself on a corpus (Brown by default), cached by
their full recipe so every analysis that needs "a workbench-trained model" shares them.

A recipe fixes architecture, tokenizer, data slice, optimiser and seed; its hash names the cache
directory, and the directory holds the trainer's checkpoints (`checkpoints/step_N`), its resume
state and its loss log. Asking again for a finished recipe returns at once; an interrupted one
resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.corpora import load_corpus
from workbench.corpora.tokenized import ChunkSpec, TokenBatches, tokenize_corpus
from workbench.models.info import default_device
from workbench.paths import cache_dir
from workbench.tokenizers import load_tokenizer
from workbench.training import TrainConfig, corpus_batch_fn, log_spaced_steps, train


@dataclasses.dataclass(frozen=True)
class LMRecipe:
    """Everything that determines a trained model."""

    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int | None = None  # default 4 * d_model
    act_fn: str = "gelu"
    normalization_type: str = "LN"
    n_ctx: int = 128
    tokenizer: str = "bpe:brown:4096"
    corpus: str = "brown"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0
    n_checkpoints: int = 8  # log-spaced over training, final step included

    @property
    def key(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"brownlm-L{self.n_layers}-d{self.d_model}-s{self.steps}-seed{self.seed}-{self.key}"

    def model_config(self, d_vocab: int) -> HookedTransformerConfig:
        return HookedTransformerConfig(
            n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp or 4 * self.d_model, act_fn=self.act_fn, normalization_type=self.normalization_type,
            n_ctx=self.n_ctx, d_vocab=d_vocab, seed=self.seed, model_name=self.name,
        )


def recipe_dir(recipe: LMRecipe) -> Path:
    return cache_dir() / "zoo" / recipe.name


def train_batches(recipe: LMRecipe, split: str = "train") -> TokenBatches:
    """The recipe's corpus split as [batch, n_ctx] chunks with BOS, using its tokenizer."""
    tok = load_tokenizer(recipe.tokenizer)
    corpus = load_corpus(recipe.corpus, split=split)
    tc = tokenize_corpus(corpus, tok, separator_id=tok.eos_token_id)
    return TokenBatches(tc, ChunkSpec(seq_len=recipe.n_ctx, batch_size=recipe.batch_size, prepend_bos=True), bos_id=tok.bos_token_id, pad_id=tok.pad_token_id or 0)


def train_lm(recipe: LMRecipe, device: str | None = None, progress: bool = True) -> Path:
    """Train (or resume, or reuse) the recipe's model on `device` (default: CUDA when present); returns its directory."""
    device = device or default_device()
    out = recipe_dir(recipe)
    final = out / "checkpoints" / f"step_{recipe.steps:06d}"
    if (final / "model.safetensors").exists():
        return out
    tok = load_tokenizer(recipe.tokenizer)
    torch.manual_seed(recipe.seed)
    model = HookedTransformer(recipe.model_config(len(tok)), tokenizer=tok, move_to_device=False, default_padding_side="right")
    model.to(device)
    batches = train_batches(recipe, "train")
    cfg = TrainConfig(
        steps=recipe.steps, lr=recipe.lr, weight_decay=recipe.weight_decay, warmup_steps=recipe.warmup_steps,
        cosine_decay=True, checkpoint_steps=log_spaced_steps(recipe.steps, recipe.n_checkpoints), seed=recipe.seed,
    )
    meta = {"recipe": dataclasses.asdict(recipe), "tokenizer": recipe.tokenizer}
    fn = corpus_batch_fn(batches, seed=recipe.seed)
    train(model, lambda step: fn(step).to(device), cfg, out, progress=progress, meta=meta)
    return out


def checkpoints(recipe: LMRecipe) -> dict[int, Path]:
    """Saved checkpoints of a trained recipe, by step."""
    root = recipe_dir(recipe) / "checkpoints"
    return {int(p.name.split("_")[1]): p for p in sorted(root.glob("step_*")) if (p / "model.safetensors").exists()}


def load_lm(recipe: LMRecipe, step: int | None = None, device: str | None = None, numerics: str = "raw") -> HookedTransformer:
    """A trained recipe's model at `step` (default: final) through the standard loader."""
    from workbench.models import load_model

    train_lm(recipe, device=device)
    path = checkpoints(recipe)[step if step is not None else recipe.steps]
    return load_model(str(path), numerics=numerics, device=device)  # type: ignore[arg-type]
