"""A small trainer for TransformerLens models: corpora or synthetic tasks, checkpoints at chosen
steps, and exact resume.

Data come from `batch_fn(step) -> tokens` (deterministic in `step`), so a resumed run sees the
same batches as an uninterrupted one. Resume state (weights, optimiser state, loss log, step) is
one verified file (`workbench.statefile`) written every `resume_every` steps; model checkpoints
for analyses over training are written at `checkpoint_steps` with `save_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from workbench.corpora.tokenized import TokenBatches
from workbench.errors import ConfigError
from workbench.models.checkpoint import save_checkpoint
from workbench.progress import progress_bar
from workbench.resume import load_training_state, save_training_state

BatchFn = Callable[[int], torch.Tensor]
# (loss, extra values to log): extras may be tensors; they are read only at logging steps
LossFn = Callable[[HookedTransformer, torch.Tensor], tuple[torch.Tensor, dict[str, Any]]]


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    momentum: float = 0.9
    warmup_steps: int = 0
    cosine_decay: bool = False
    grad_clip: float | None = 1.0
    checkpoint_steps: tuple[int, ...] = ()
    resume_every: int = 200
    log_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """The model's own weights out of the backward pass (no .grad written into them, for training
    something else through the model: masks, probes, attribution inputs); restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def log_spaced_steps(steps: int, n: int = 12) -> tuple[int, ...]:
    """Checkpoint steps spaced evenly in log(step), always including the last step."""
    pts = np.unique(np.round(np.logspace(0, math.log10(max(steps, 1)), n)).astype(int))
    return tuple(int(p) for p in pts if 1 <= p <= steps)


def next_token_loss(model: HookedTransformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token cross-entropy over all positions."""
    logits = model(tokens, return_type="logits")
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return loss, {}


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, params: list[torch.nn.Parameter] | None = None) -> torch.optim.Optimizer:
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.cosine_decay:
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    log: pd.DataFrame
    checkpoints: dict[int, Path]
    seconds: float
    resumed_from: int


def train(
    model: HookedTransformer,
    batch_fn: BatchFn,
    cfg: TrainConfig,
    out_dir: str | Path,
    loss_fn: LossFn = next_token_loss,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place for `cfg.steps` steps; resume from `out_dir` if a state is there."""
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model.train()
    opt = make_optimizer(model, cfg)
    log: list[dict[str, float]] = []
    identity = _run_identity(cfg, model)
    start = _load_resume_state(model, opt, out_dir, log, identity)
    checkpoints = {s: out_dir / "checkpoints" / f"step_{s:06d}" for s in cfg.checkpoint_steps if (out_dir / "checkpoints" / f"step_{s:06d}").exists()}
    if start == 0 and 0 in cfg.checkpoint_steps:
        checkpoints[0] = save_checkpoint(model, out_dir / "checkpoints" / "step_000000", {**(meta or {}), "step": 0})
    t0 = time.perf_counter()
    bar = progress_bar(cfg.steps, "training", unit="step", enabled=progress, initial=start)
    try:
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            tokens = batch_fn(step)
            loss, extra = loss_fn(model, tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps or done == 1:
                value = float(loss.detach())
                log.append({"step": done, "loss": value, **{k: float(v) for k, v in extra.items()}})
                bar.bar.set_postfix(loss=f"{value:.4f}")
            if done in cfg.checkpoint_steps:
                model.eval()
                checkpoints[done] = save_checkpoint(model, out_dir / "checkpoints" / f"step_{done:06d}", {**(meta or {}), "step": done})
                model.train()
            if done % cfg.resume_every == 0 and done < cfg.steps:
                _save_resume_state(model, opt, out_dir, done, log, identity)
            bar.update(1)
    finally:
        bar.close()
    model.eval()
    _save_resume_state(model, opt, out_dir, cfg.steps, log, identity)
    df = pd.DataFrame(log)
    df.to_csv(out_dir / "train_log.csv", index=False)
    return TrainResult(out_dir, df, dict(sorted(checkpoints.items())), time.perf_counter() - t0, start)


def corpus_batch_fn(batches: TokenBatches, seed: int = 0) -> BatchFn:
    """Cycle through a corpus's chunks in a seeded random order; batch `step` is fixed by `step`."""
    n = len(batches)

    def fn(step: int) -> torch.Tensor:
        epoch, i = divmod(step, n)
        order = np.random.default_rng(seed + epoch).permutation(n)
        return batches.batch(int(order[i])).tokens

    return fn


# ----- resume state (workbench.resume: one verified file) -----

def _run_identity(cfg: TrainConfig, model: HookedTransformer) -> dict[str, Any]:
    """What must match for a resume: everything but the step budget and bookkeeping."""
    skip = {"steps", "checkpoint_steps", "resume_every", "log_every"}
    from workbench.models.checkpoint import config_to_json

    return {"train": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip},
            "model": config_to_json(model.cfg)}


RESUME_FILE = "resume_state.safetensors"


def _save_resume_state(model: HookedTransformer, opt: torch.optim.Optimizer, out_dir: Path, step: int, log: list[dict], identity: dict) -> None:
    weights = {f"model.{k}": v for k, v in model.state_dict().items() if not k.endswith(("IGNORE", ".mask", "rotary_cos", "rotary_sin"))}
    save_training_state(out_dir / RESUME_FILE, weights, opt, step, log, identity)


def _load_resume_state(model: HookedTransformer, opt: torch.optim.Optimizer, out_dir: Path, log: list[dict], identity: dict) -> int:
    resumed = load_training_state(out_dir / RESUME_FILE, opt, identity, other_run="refuse")
    if resumed is None:
        return 0
    device = next(model.parameters()).device
    model.load_state_dict({k[6:]: v.to(device) for k, v in resumed.tensors.items() if k.startswith("model.")}, strict=False)
    log.extend(resumed.log)
    return resumed.step
