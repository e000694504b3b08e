"""Workbench checkpoints: a directory with the model config (JSON), weights (safetensors) and
tokenizer. No pickle: configs are JSON, tensors are safetensors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.io import read_json, read_tensors, write_json, write_tensors
from workbench.models.patches import apply_model_patches, patches_in

CONFIG_FILE = "workbench_model.json"
WEIGHTS_FILE = "model.safetensors"


def config_to_json(cfg: HookedTransformerConfig) -> dict[str, Any]:
    """The init fields of a TransformerLens config, JSON-safe (dtype as a string, no device)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if f.name == "device":
            continue
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        out[f.name] = v
    return out


def config_from_json(d: dict[str, Any], device: str = "cpu") -> HookedTransformerConfig:
    d = dict(d)
    if isinstance(d.get("dtype"), str):
        d["dtype"] = getattr(torch, d["dtype"])
    d["device"] = device
    d["init_weights"] = False
    return HookedTransformerConfig(**d)


def save_checkpoint(model: HookedTransformer, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write config, weights and tokenizer to the directory `path`, all at once: they are written
    into a temporary directory that then replaces `path`, so a killed save leaves the old
    checkpoint or none, never a mix."""
    from workbench.io import replace_dir

    with replace_dir(path) as tmp:
        write_tensors(tmp / WEIGHTS_FILE, {k: v for k, v in model.state_dict().items() if not _is_buffer_key(k)})
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        write_json(tmp / CONFIG_FILE, {"config": config_to_json(model.cfg), "meta": meta or {}})
    return Path(path)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).exists() and (Path(path) / WEIGHTS_FILE).exists()


def checkpoint_fingerprint(path: str | Path) -> str:
    """Short content identity of a checkpoint's weights (cached SHA-256, see `workbench.identity`)."""
    from workbench.identity import file_digest

    return file_digest(Path(path) / WEIGHTS_FILE)[:12]


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[HookedTransformer, dict[str, Any]]:
    """Rebuild the model saved by `save_checkpoint`; returns (model in raw numerics, meta)."""
    from transformers import AutoTokenizer

    path = Path(path)
    blob = read_json(path / CONFIG_FILE)
    cfg = config_from_json(blob["config"], device=device)
    tok_dir = path / "tokenizer"
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir)) if tok_dir.exists() else None
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")
    state = read_tensors(path / WEIGHTS_FILE)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_buffer_key(k)]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.to(device).eval()
    apply_model_patches(model, patches_in(blob.get("meta", {})))
    return model, blob.get("meta", {})


def _is_buffer_key(k: str) -> bool:
    return k.endswith(("IGNORE", ".mask", "rotary_cos", "rotary_sin"))
