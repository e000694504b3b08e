"""Continuous-sparsification mask training (Savarese et al. 2020, as used by Chang & Bergen 2025):
frozen base weights, one logit per maskable weight, soft targets.

Step k uses the mask sigmoid(T_k * m) with T_0 = 1 and T_{k+1} = growth * T_k. The loss is the
soft-target cross-entropy over all valid positions plus lambda * mean(sigmoid(T m)). AdamW
(weight decay on the logits too). Training stops when the number of mask values in (0.1, 0.9)
falls under `stop_fraction` of the number above 0.9 (or when none is left undecided), or at the
step cap. The state (logits, optimiser, step, log) is saved every `resume_every` steps, so a
killed run resumes exactly; a finished run is reused when its identity matches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.bigram_subnetworks.masking import MaskLogits, masked_forward
from workbench.corpora.tokenized import TokenBatch, TokenBatches
from workbench.errors import ConfigError
from workbench.progress import progress_bar
from workbench.resume import load_training_state, plain_json, save_training_state
from workbench.statefile import load_state, save_state
from workbench.training import frozen

TargetFn = Callable[[TokenBatch], torch.Tensor]  # batch -> next-token probabilities [B, T, V]


@dataclass
class MaskTrainConfig:
    lam: float = 0.0
    max_steps: int = 15_000
    lr: float = 5e-5
    weight_decay: float = 0.01
    temp_growth: float = 1.001
    mask_init: float = 0.0
    stop_fraction: float = 0.01
    resume_every: int = 100
    log_every: int = 10
    seed: int = 0

    def validate(self) -> None:
        if self.lam < 0 or not math.isfinite(self.lam):
            raise ConfigError(f"lambda must be finite and >= 0, got {self.lam}")
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be positive, got {self.max_steps}")
        if self.lr <= 0 or self.temp_growth < 1.0:
            raise ConfigError(f"need lr > 0 and temp_growth >= 1, got {self.lr}, {self.temp_growth}")


@dataclass
class MaskRun:
    """A finished mask: boolean masks per weight, the training log and how it stopped."""

    label: str
    masks: dict[str, torch.Tensor]
    log: pd.DataFrame
    steps: int
    stopped: str  # "rule" | "cap"
    temperature: float
    seconds: float


def pack_mask_run(run: MaskRun) -> tuple[dict[str, torch.Tensor], dict]:
    """A finished mask as tensors and JSON (to send it from rank 0 to the other ranks)."""
    return dict(run.masks), {"label": run.label, "log": run.log.to_dict(orient="list"), "steps": run.steps,
                             "stopped": run.stopped, "temperature": run.temperature, "seconds": run.seconds}


def unpack_mask_run(masks: dict[str, torch.Tensor], meta: dict) -> MaskRun:
    return MaskRun(meta["label"], {k: v.bool() for k, v in masks.items()}, pd.DataFrame(meta["log"]), int(meta["steps"]),
                   meta["stopped"], float(meta["temperature"]), float(meta["seconds"]))


def seeded_batch_fn(batches: TokenBatches, seed: int) -> Callable[[int], TokenBatch]:
    """Batch `step` of a seeded per-epoch permutation (the same order as `training.corpus_batch_fn`)."""
    n = len(batches)

    def fn(step: int) -> TokenBatch:
        epoch, i = divmod(step, n)
        order = np.random.default_rng(seed + epoch).permutation(n)
        return batches.batch(int(order[i]))

    return fn


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid positions of -sum_v target_v log softmax(logits)_v."""
    V = target.shape[-1]
    logp = F.log_softmax(logits[..., :V].float(), dim=-1)
    per_pos = -(target * logp).sum(-1)
    return (per_pos * valid).sum() / valid.sum().clamp(min=1)


def mask_step(model: HookedTransformer, logits: MaskLogits, batch: TokenBatch, target: torch.Tensor,
              lam: float, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch: (total, cross-entropy). Gradients reach only the mask logits."""
    out = masked_forward(model, logits.soft(temperature), batch.tokens)
    ce = soft_cross_entropy(out, target, batch.valid.to(out.dtype))
    return ce + lam * logits.mean_soft(temperature), ce


def optimizer_step(model: HookedTransformer, logits: MaskLogits, opt: torch.optim.Optimizer, batch: TokenBatch,
                   target: torch.Tensor, lam: float, temperature: float) -> dict:
    """One mask-training step (forward, backward, AdamW on the logits) and the decided counts after it."""
    loss, ce = mask_step(model, logits, batch, target, lam, temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    counts = logits.decided_counts(temperature)
    # one host synchronisation per step, for the stopping rule and the log together
    loss_v, ce_v, below, above = torch.cat([torch.stack([loss.detach(), ce.detach()]).double(), counts.double()]).tolist()
    below, above, total = int(below), int(above), logits.total
    return {"loss": loss_v, "ce": ce_v, "temperature": temperature,
            "kept_frac": above / total, "undecided_frac": (total - below - above) / total, "above": above, "undecided": total - below - above}


def train_mask(
    model: HookedTransformer,
    batch_fn: Callable[[int], TokenBatch],
    target_fn: TargetFn,
    cfg: MaskTrainConfig,
    state_dir: str | Path | None,
    label: str,
    identity: dict | None = None,
    progress: bool = True,
) -> MaskRun:
    """Train one mask; resume from / reuse `state_dir` when its identity matches."""
    cfg.validate()
    device = next(model.parameters()).device
    # the resume state may continue under a new step cap; a finished run is reused only for the same cap
    ident = plain_json({"cfg": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume_every", "log_every", "max_steps")},
                        **(identity or {})})
    finished_ident = {**ident, "max_steps": cfg.max_steps}
    state_dir = Path(state_dir) if state_dir is not None else None
    done = _load_finished(state_dir, finished_ident, label)
    if done is not None:
        return done

    torch.manual_seed(cfg.seed)
    logits = MaskLogits(model, cfg.mask_init).to(device)
    opt = torch.optim.AdamW(logits.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log: list[dict] = []
    start = _load_state(state_dir, ident, logits, opt, log) if state_dir is not None else 0
    stopped, steps = "cap", start
    t0 = time.perf_counter()
    bar = progress_bar(cfg.max_steps, f"mask {label}", unit="step", enabled=progress, initial=start)
    try:
        with frozen(model):
            model.train()
            for step in range(start, cfg.max_steps):
                T = cfg.temp_growth ** step
                batch = batch_fn(step).to(device)
                with torch.no_grad():
                    target = target_fn(batch)
                out = optimizer_step(model, logits, opt, batch, target, cfg.lam, T)
                above, undecided = out.pop("above"), out.pop("undecided")
                n = steps = step + 1
                entry = {"step": n, **out}
                stop = undecided < cfg.stop_fraction * above or undecided == 0
                if n % cfg.log_every == 0 or n == 1 or n == cfg.max_steps or stop:
                    log.append(entry)
                    bar.bar.set_postfix(ce=f"{entry['ce']:.3f}", kept=f"{entry['kept_frac']:.3f}", undecided=f"{entry['undecided_frac']:.3f}")
                bar.update(1)
                if stop:
                    stopped = "rule"
                    break
                if state_dir is not None and n % cfg.resume_every == 0:
                    _save_state(state_dir, ident, logits, opt, n, log)
    finally:
        bar.close()
        model.eval()
    run = MaskRun(label, {k: v.cpu() for k, v in logits.hard().items()}, pd.DataFrame(log),
                  steps, stopped, cfg.temp_growth ** (steps - 1), time.perf_counter() - t0)
    if state_dir is not None:
        _save_finished(state_dir, finished_ident, run)
    return run


# ----- state on disk (one verified file each, see workbench.statefile) -----
STATE_FILE, FINISHED_FILE = "mask_state.safetensors", "mask_run.safetensors"


def _save_state(d: Path, ident: dict, logits: MaskLogits, opt: torch.optim.Optimizer, step: int, log: list[dict]) -> None:
    save_training_state(d / STATE_FILE, {f"mask.{k}": v for k, v in logits.state_tensors().items()}, opt, step, log, ident)


def _load_state(d: Path, ident: dict, logits: MaskLogits, opt: torch.optim.Optimizer, log: list[dict]) -> int:
    """The step to resume from (0: none, unreadable, or another run's, which is then overwritten).
    On the CPU: the optimizer moves its state to the parameters' device itself."""
    resumed = load_training_state(d / STATE_FILE, opt, ident, other_run="restart")
    if resumed is None:
        return 0
    logits.load_state_tensors({k[5:]: v for k, v in resumed.tensors.items() if k.startswith("mask.")})
    log.extend(resumed.log)
    return resumed.step


def _save_finished(d: Path, ident: dict, run: MaskRun) -> None:
    save_state(d / FINISHED_FILE, {n: m.bool() for n, m in run.masks.items()},
               {"identity": ident, "label": run.label, "steps": run.steps, "stopped": run.stopped,
                "temperature": run.temperature, "seconds": run.seconds, "log": run.log.to_dict("records")})
    (d / STATE_FILE).unlink(missing_ok=True)


def _load_finished(d: Path | None, ident: dict, label: str) -> MaskRun | None:
    saved = load_state(d / FINISHED_FILE, expect={"identity": ident}) if d is not None else None
    if saved is None:
        return None
    masks, meta = saved
    return MaskRun(label, masks, pd.DataFrame(meta["log"]), int(meta["steps"]), meta["stopped"], float(meta["temperature"]), float(meta["seconds"]))
