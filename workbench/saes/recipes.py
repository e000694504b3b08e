"""Where a workbench-trained SAE lives: the training recipe (`SAETrainSpec`, its presets) and the
cache directory it is keyed to (model weights identity, corpus, spec, SAE Lens version), and the
recipe and quality record written beside it. Training itself is `workbench.saes.training`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.corpora import load_corpus
from workbench.corpora.base import SPLITS
from workbench.errors import ConfigError, MissingResourceError
from workbench.io import read_json
from workbench.models.info import model_info
from workbench.paths import cache_dir
from workbench.saes.files import is_sae_dir

RECIPE_FILE = "workbench_sae.json"
Architecture = Literal["topk", "batchtopk", "jumprelu"]


@dataclass(frozen=True)
class SAETrainSpec:
    """Everything that determines a trained SAE (besides model and corpus)."""

    hook_name: str
    architecture: Architecture = "topk"
    d_sae: int | None = None  # default: expansion x the hook's width
    expansion: int = 8
    k: int = 32  # topk / batchtopk: active features per token
    l0_coefficient: float = 2.0  # jumprelu only
    training_tokens: int = 150_000
    train_batch_tokens: int = 512
    context_size: int = 128
    store_batch_prompts: int = 8
    n_batches_in_buffer: int = 16  # mixing buffer holds n_batches_in_buffer x context_size activations
    lr: float = 1e-3
    lr_warm_up_steps: int = 10
    lr_decay_fraction: float = 0.2  # linear decay over the last fraction of steps
    dead_feature_window: int = 50  # steps without firing before TopK's auxiliary loss revives a feature
    n_batches_for_norm_estimate: int = 10
    split: str = "train"
    seed: int = 0
    eval_tokens: int = 10_000  # held-out (validation split) tokens for the quality record
    # None: SAE Lens's LanguageModelSAETrainingRunner streams fresh activations (each token seen once).
    # A number: that many training-split tokens are run through the model once, their activations kept
    # in memory, and SAE Lens's SAETrainer trains on shuffled passes over them (training_tokens
    # samples in all). Several such SAEs on one model share the forward pass (`train_saes`).
    activation_tokens: int | None = None

    def validate(self) -> None:
        if self.architecture not in ("topk", "batchtopk", "jumprelu"):
            raise ConfigError(f"architecture must be topk, batchtopk or jumprelu, got {self.architecture!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in ("expansion", "k", "training_tokens", "train_batch_tokens", "context_size", "store_batch_prompts",
                     "n_batches_in_buffer", "eval_tokens"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.training_tokens < self.train_batch_tokens:
            raise ConfigError(f"training_tokens ({self.training_tokens}) is less than one batch ({self.train_batch_tokens})")
        # SAE Lens's mixing buffer holds n_batches_in_buffer * context_size activations and refuses
        # a training batch larger than that ("Buffer size must be greater than or equal to batch size").
        if self.n_batches_in_buffer * self.context_size < self.train_batch_tokens:
            raise ConfigError(
                f"n_batches_in_buffer x context_size = {self.n_batches_in_buffer * self.context_size} must be at least "
                f"train_batch_tokens = {self.train_batch_tokens} (SAE Lens's mixing buffer); raise n_batches_in_buffer"
            )
        if self.activation_tokens is not None and self.activation_tokens < self.train_batch_tokens:
            raise ConfigError(f"activation_tokens ({self.activation_tokens}) is less than one batch ({self.train_batch_tokens})")
        if self.d_sae is not None and self.architecture != "jumprelu" and self.k >= self.d_sae:
            raise ConfigError(f"k ({self.k}) must be smaller than d_sae ({self.d_sae})")

    @property
    def n_steps(self) -> int:
        return self.training_tokens // self.train_batch_tokens


PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores: one forward pass over 49,152 Brown tokens, then 8 shuffled passes (393,216 samples,
    # 1,536 steps of 256) for a 4x-wide TopK SAE (k = 64) with SAE Lens's dead-latent auxiliary loss; about
    # 4 minutes of SAE training per layer. On SmolLM2, k = 32 reached explained variance 0.89 / 0.93 / 0.77
    # at layers 5 / 15 / 25 with under 1.2% dead latents; k = 64 lifts layer 25 to 0.81 (a quarter of the
    # steps on half the tokens left 66-82% dead, EV 0.5).
    "cpu": dict(expansion=4, k=64, activation_tokens=49_152, training_tokens=393_216, train_batch_tokens=256,
                eval_tokens=4096),
    "gpu": dict(training_tokens=4_000_000, train_batch_tokens=4096, store_batch_prompts=32, n_batches_in_buffer=64,
                lr=4e-4, lr_warm_up_steps=50, dead_feature_window=200, n_batches_for_norm_estimate=50, eval_tokens=100_000),
}


def preset_spec(hook_name: str, preset: str = "cpu", **overrides: Any) -> SAETrainSpec:
    """A spec from a named preset ("cpu" or "gpu") plus field overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown SAE training preset {preset!r}; known: {sorted(PRESETS)}")
    spec = SAETrainSpec(hook_name=hook_name, **{**PRESETS[preset], **overrides})
    spec.validate()
    return spec


def hook_width(model: HookedTransformer, hook: str) -> int:
    """Width of the activation at `hook` (from a 2-token forward pass)."""
    if hook not in model.hook_dict:
        raise ConfigError(f"model {model.cfg.model_name!r} has no hook {hook!r}")
    tokens = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[hook])
    act = cache[hook]
    return int(act.shape[-1] if act.ndim == 3 else act.shape[-2] * act.shape[-1])


def resolved_d_sae(model: HookedTransformer, spec: SAETrainSpec) -> tuple[int, int]:
    d_in = hook_width(model, spec.hook_name)
    return d_in, spec.d_sae or spec.expansion * d_in


def recipe_key(model: HookedTransformer, corpus_id: str, spec: SAETrainSpec) -> str:
    import sae_lens

    blob = json.dumps({"model": model_info(model).key, "corpus": corpus_id, "spec": dataclasses.asdict(spec),
                       "sae_lens": sae_lens.__version__}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def trained_dir(model: HookedTransformer, corpus_id: str, spec: SAETrainSpec) -> Path:
    """Where the recipe's SAE is (or will be) cached."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_info(model).id)[:48]
    hook = spec.hook_name.replace("blocks.", "L").replace(".hook_", "-")
    return cache_dir() / "saes" / f"{slug}-{hook}-{spec.architecture}{spec.d_sae or f'x{spec.expansion}'}-{recipe_key(model, corpus_id, spec)}"


def find_trained(model: HookedTransformer, corpus_name: str, hook: str, preset: str = "cpu") -> Path:
    """The cached SAE of the preset recipe for this model, corpus and hook; error if not trained."""
    corpus = load_corpus(corpus_name)
    path = trained_dir(model, corpus.id, preset_spec(hook, preset))
    if not (is_sae_dir(path) and (path / RECIPE_FILE).exists()):
        raise MissingResourceError(
            f"No workbench-trained SAE for {model_info(model).id} at {hook} on {corpus_name} (preset {preset}). "
            f"Train it with `python -m experiments.train_saes` or `workbench.saes.train_sae(model, corpus, "
            f"preset_spec({hook!r}))`."
        )
    return path


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe and quality record written beside a workbench-trained SAE ({} for others)."""
    p = Path(path) / RECIPE_FILE
    return read_json(p) if p.exists() else {}


def recipe_quality(sae: Any) -> dict[str, Any] | None:
    """The quality measured when the workbench trained this loaded SAE (None for others: an SAE Lens
    release or a directory without a recipe)."""
    path = getattr(sae, "workbench_path", None)
    return read_recipe(path).get("quality") if path else None


def trained_saes(model: HookedTransformer, corpus_name: str, layers: list[int] | tuple[int, ...],
                 hook_suffix: str = hooks.RESID_POST) -> dict[int, Path]:
    """Workbench-trained SAEs of this model (same name and weights) on `corpus_name` in the cache,
    one per wanted layer at `blocks.<layer>.<hook_suffix>` (the first recipe in name order)."""
    info = model_info(model)
    found: dict[int, Path] = {}
    root = cache_dir() / "saes"
    for d in sorted(root.iterdir()) if root.exists() else []:
        r = read_recipe(d) if is_sae_dir(d) else {}
        m = r.get("model", {})
        hook = r.get("spec", {}).get("hook_name", "")
        if m.get("id") != info.id or m.get("weights", info.weights) != info.weights or not hook.endswith(hook_suffix):
            continue
        if not str(r.get("corpus", "")).startswith(f"{corpus_name}@"):
            continue
        layer = int(hook.split(".")[1])
        if layer in layers:
            found.setdefault(layer, d)
    return found
