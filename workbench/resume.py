"""Resumable training state, shared by every trainer (the LM trainer, the bigram mask trainer): one
verified file (`workbench.statefile`) holding the trained tensors, the optimizer's state, the
step, the log and the identity of the run it belongs to. No pickle: tensors go to safetensors,
the rest to JSON.

A state whose identity differs belongs to another run: `load_training_state` either ignores it
(the caller starts afresh and overwrites it) or refuses it, as the caller asks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.errors import ConfigError
from workbench.io import _json_default
from workbench.statefile import load_state, save_state


def plain_json(obj: Any) -> Any:
    """`obj` as it reads back from JSON (tuples as lists, paths and dtypes as strings): the form an
    identity is compared in."""
    return json.loads(json.dumps(obj, default=_json_default))


def optimizer_parts(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as tensors (`opt.<param>.<name>`) and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        scalars["state"][str(idx)] = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{k}"] = v
            else:
                scalars["state"][str(idx)][k] = v
    return tensors, scalars


def optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state dict `optimizer_parts` split (for `opt.load_state_dict`)."""
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in scalars["state"].items()}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": scalars["param_groups"]}


@dataclass
class Resumed:
    """What a saved state gives back: the trained tensors (without the optimizer's), the step and the log."""

    tensors: dict[str, torch.Tensor]
    step: int
    log: list[dict[str, Any]]


def save_training_state(path: str | Path, tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer, step: int,
                        log: list[dict[str, Any]], identity: dict[str, Any]) -> None:
    """Write the state atomically (a killed writer leaves the previous one)."""
    opt_t, opt_s = optimizer_parts(opt)
    save_state(path, {**tensors, **opt_t}, {"step": step, "optimizer": opt_s, "log": log, "identity": plain_json(identity)})


def load_training_state(path: str | Path, opt: torch.optim.Optimizer, identity: dict[str, Any],
                        other_run: str = "restart") -> Resumed | None:
    """The saved state for this identity, with `opt` restored; None when there is none (or it is
    unreadable). A state of another identity: None with `other_run="restart"`, ConfigError with
    `"refuse"` (a directory the user named for one run must not silently hold another)."""
    path = Path(path)
    saved = load_state(path)
    if saved is None:
        return None
    tensors, meta = saved
    if plain_json(identity) != meta.get("identity"):
        if other_run == "refuse":
            raise ConfigError(f"{path.parent} holds a training run with a different config or model; "
                              "use a new output directory (or delete this one) instead of resuming it.")
        return None
    opt.load_state_dict(optimizer_state(tensors, meta["optimizer"]))
    return Resumed({k: v for k, v in tensors.items() if not k.startswith("opt.")}, int(meta["step"]), list(meta["log"]))
