"""Models larger than one GPU: TransformerLens's layer-wise placement over `n_devices` GPUs.

The embedding sits on the first device, block i on the device TransformerLens's forward moves the
residual to before block i (`get_device_for_block_index`: the first i * n / n_layers of them),
and the final norm and unembedding on the last block's device. Placing the modules by that same
function keeps the forward's own device moves and the weights in agreement. Captured activations
are moved to the first device (`workbench.activations`), so accumulators see one device.
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

from workbench import hooks
from workbench.errors import ConfigError


def placement_plan(cfg, n_devices: int, first: str = "cuda:0") -> dict[str, torch.device]:
    """Module name -> device for a model of `cfg`'s shape split over `n_devices` devices from `first`."""
    if n_devices < 1:
        raise ConfigError(f"n_devices must be at least 1, got {n_devices}")
    if n_devices > cfg.n_layers:
        raise ConfigError(f"n_devices={n_devices} is more than the model's {cfg.n_layers} layers")
    shadow = _Shape(cfg.n_layers, n_devices, first)
    blocks = {hooks.block(i): get_device_for_block_index(i, shadow) for i in range(cfg.n_layers)}
    head, tail = blocks[hooks.block(0)], blocks[hooks.block(cfg.n_layers - 1)]
    plan = {"embed": head, hooks.EMBED: head, "pos_embed": head, hooks.POS_EMBED: head, **blocks,
            "ln_final": tail, "unembed": tail}
    return plan


class _Shape:
    """The fields of a config that TransformerLens's placement reads."""

    def __init__(self, n_layers: int, n_devices: int, device: str):
        self.n_layers, self.n_devices, self.device = n_layers, n_devices, device


def check_devices(n_devices: int) -> None:
    """Refuse, before anything loads, a split this machine cannot hold."""
    if n_devices < 1:
        raise ConfigError(f"n_devices must be at least 1, got {n_devices}")
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_devices > 1 and have < n_devices:
        raise ConfigError(f"n_devices={n_devices} needs {n_devices} GPUs; this machine has {have}")


def place(model: HookedTransformer, n_devices: int, first: int | None = None) -> HookedTransformer:
    """Spread `model` over `n_devices` GPUs from GPU `first` (default: the current one, which a
    sharded run sets to its rank's own group) by `placement_plan` (in place). Load the model on the
    CPU first: each module then goes straight to its GPU, and no GPU ever holds the whole model."""
    if n_devices == 1:
        return model
    check_devices(n_devices)
    first = torch.cuda.current_device() if first is None else first
    if first + n_devices > torch.cuda.device_count():
        raise ConfigError(f"GPUs {first}..{first + n_devices - 1} asked for; this machine has {torch.cuda.device_count()}")
    plan = placement_plan(model.cfg, n_devices, first=f"cuda:{first}")
    for name, device in plan.items():
        module = getattr(model, name, None) if "." not in name else model.get_submodule(name)
        if module is not None:
            module.to(device)
    model.cfg.n_devices = n_devices
    model.cfg.device = str(plan["embed"])
    return model

