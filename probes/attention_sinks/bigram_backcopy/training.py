"""Training a recipe (resumable, with log-spaced checkpoints), its recorded time, its checkpoints,
and the task a trained model was made for."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.attention_sinks.bigram_backcopy.model import (
    RELU_ATTENTION,
    bb_model,
    install_relu_attention,
)
from probes.attention_sinks.bigram_backcopy.recipes import BBRecipe, bb_dir
from probes.attention_sinks.bigram_backcopy.task import BBTask, load_bb_task
from workbench.errors import ConfigError
from workbench.io import read_json, write_json
from workbench.models import load_model
from workbench.models.info import default_device
from workbench.training import TrainConfig, train


def bb_loss(task: BBTask) -> Callable[[HookedTransformer, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Cross-entropy over all positions, with the backcopy and bigram risks of the batch logged
    (as tensors: the trainer reads them only at logging steps, so a step costs no host sync)."""

    def fn(model: HookedTransformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs, return_type="logits")
        per = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none").view_as(targets)
        backcopy, bigram = task.position_masks(inputs)
        d = per.detach()
        risk = lambda m: (d * m).sum() / m.sum()  # noqa: E731  (a masked mean without boolean indexing)
        return per.mean(), {"backcopy_risk": risk(backcopy), "bigram_risk": risk(bigram)}

    return fn


def train_bb(recipe: BBRecipe, device: str | None = None, progress: bool = True) -> Path:
    """Train (or resume, or reuse) a BB model with the workbench trainer; returns its directory
    (checkpoints under `checkpoints/step_N`, the loss/risk log in `train_log.csv`)."""
    device = device or default_device()
    recipe.validate()
    out = bb_dir(recipe)
    if (out / "checkpoints" / f"step_{recipe.steps:06d}" / "model.safetensors").exists():
        return out
    task = load_bb_task(recipe.corpus, recipe.n_triggers, recipe.charset)
    model = bb_model(task, recipe.n_layers, recipe.d_model, recipe.seed, device, name=recipe.name, init=recipe.init,
                     layernorm_bias=recipe.layernorm_bias)
    if recipe.attention == "relu":
        install_relu_attention(model)
    cfg = TrainConfig(
        steps=recipe.steps, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
        betas=recipe.betas, momentum=recipe.momentum, grad_clip=None, checkpoint_steps=recipe.checkpoint_steps(),
        resume_every=max(25, min(200, recipe.steps // 10)), log_every=max(1, min(10, recipe.steps // 50)), seed=recipe.seed,
    )
    meta = {"bb": {"recipe": dataclasses.asdict(recipe), "task_fingerprint": task.fingerprint, "corpus": task.corpus},
            "attention": recipe.attention, "patches": [RELU_ATTENTION] if recipe.attention == "relu" else []}
    data = task.batch_fn(recipe.batch_size, recipe.seq_len, recipe.seed)
    result = train(model, lambda step: data(step).to(device), cfg, out, loss_fn=bb_loss(task), progress=progress, meta=meta)
    _record_time(out, recipe.steps - result.resumed_from, result.seconds, device)
    return out


def _record_time(out: Path, steps: int, seconds: float, device: str) -> None:
    """Accumulate the training wall time (over resumes) in `train_time.json`, for cost reports."""
    path = out / "train_time.json"
    prev = read_json(path) if path.exists() else {"steps": 0, "seconds": 0.0}
    steps, seconds = prev["steps"] + steps, prev["seconds"] + seconds
    write_json(path, {"steps": steps, "seconds": seconds, "seconds_per_step": seconds / max(steps, 1), "device": device,
                      "threads": torch.get_num_threads()})


def bb_train_time(recipe: BBRecipe) -> dict[str, Any] | None:
    """The recorded training time of a trained recipe (None if it was never trained here)."""
    path = bb_dir(recipe) / "train_time.json"
    return read_json(path) if path.exists() else None


def bb_checkpoints(recipe: BBRecipe) -> dict[int, Path]:
    """Saved checkpoints of a trained recipe, by step."""
    root = bb_dir(recipe) / "checkpoints"
    return {int(p.name.split("_")[1]): p for p in sorted(root.glob("step_*")) if (p / "model.safetensors").exists()}


def load_bb(recipe: BBRecipe, step: int | None = None, device: str | None = None) -> HookedTransformer:
    """A trained recipe's model at `step` (default: final), training it first if needed. Loaded
    through the standard loader, which restores ReLU attention from the checkpoint's metadata."""

    train_bb(recipe, device=device)
    ckpts = bb_checkpoints(recipe)
    step = recipe.steps if step is None else step
    if step not in ckpts:
        raise ConfigError(f"no checkpoint at step {step} for {recipe.name}; saved steps: {sorted(ckpts)}")
    return load_model(str(ckpts[step]), device=device)


def task_of_model(model: HookedTransformer) -> BBTask | None:
    """The BB task a loaded BB checkpoint was trained on (None for other models)."""
    info = getattr(model, "workbench_info", None)
    meta = (info.extra or {}).get("meta", {}) if info is not None else {}
    bb = meta.get("bb")
    if not bb:
        return None
    r = bb["recipe"]
    task = load_bb_task(r["corpus"], r["n_triggers"], r.get("charset", "all"))
    if bb.get("task_fingerprint") not in (None, task.fingerprint):
        raise ConfigError(f"the character statistics of {r['corpus']!r} changed since this BB model was trained")
    return task
