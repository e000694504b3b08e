"""Named changes to a model's forward pass that a saved model can ask for.

A workbench checkpoint lists them in its metadata (`"patches": ["relu-attention"]`), and
`load_checkpoint` applies each one by name. Analyses register the patches their toy models need
(`register_model_patch`; ReLU attention comes from the attention-sinks package), so the kernel
loads such a model without importing any analysis: an unknown name makes the probe registry
discover the analysis packages once, and only then is it an error.
"""

from __future__ import annotations

from typing import Any, Callable

from transformer_lens import HookedTransformer

from workbench.errors import ConfigError

ModelPatch = Callable[[HookedTransformer], HookedTransformer]
PATCHES: dict[str, ModelPatch] = {}


def register_model_patch(name: str, patch: ModelPatch) -> ModelPatch:
    """Register `patch` under `name` (a second, different patch under the same name is refused)."""
    known = PATCHES.get(name)
    if known is not None and known is not patch and known.__qualname__ != patch.__qualname__:
        raise ConfigError(f"a model patch named {name!r} is already registered ({known.__module__}.{known.__qualname__})")
    PATCHES[name] = patch
    return patch


def patches_in(meta: dict[str, Any]) -> list[str]:
    """The patch names a checkpoint's metadata asks for (older checkpoints say `"attention": "relu"`)."""
    names = list(meta.get("patches") or [])
    if meta.get("attention") == "relu" and "relu-attention" not in names:
        names.append("relu-attention")
    return names


def apply_model_patches(model: HookedTransformer, names: list[str]) -> HookedTransformer:
    for name in names:
        if name not in PATCHES:
            from workbench.probe_api import discover

            discover()
        if name not in PATCHES:
            raise ConfigError(f"the model asks for the patch {name!r}, which no installed analysis registers; "
                              f"known: {sorted(PATCHES)}")
        model = PATCHES[name](model)
    return model
