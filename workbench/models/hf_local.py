"""Build a HookedTransformer from a local Hugging Face model directory (no hub access)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import transformer_lens.loading_from_pretrained as tl_loading
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from workbench.errors import ConfigError
from workbench.models.conversion import tl_config_for_dir
from workbench.models.info import PROCESSING_FLAGS, Numerics


def check_hf_dir(path: Path) -> dict:
    """The parsed `config.json` of a Hugging Face model directory, or ConfigError naming what is wrong
    with it (empty, not JSON, not an object, no model type), before transformers reads it."""
    cfg = path / "config.json"
    try:
        text = cfg.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"model directory {str(path)!r}: config.json cannot be read ({getattr(e, 'strerror', None) or e})") from None
    if not text.strip():
        raise ConfigError(f"model directory {str(path)!r}: config.json is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"model directory {str(path)!r}: config.json is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("architectures")):
        raise ConfigError(f"model directory {str(path)!r}: config.json names no model_type or architectures, "
                          "so it is not a transformers model config")
    return data


def hf_config_dict(path: Path, n_ctx: int | None = None) -> dict:
    """TransformerLens config for an HF directory, by its own architecture (`workbench.models.conversion`)."""
    cfg = tl_config_for_dir(Path(path), n_ctx)
    cfg["init_weights"] = False  # every weight is overwritten by the checkpoint
    return cfg


def weight_files(path: Path) -> list[Path]:
    """The files that determine a Hugging Face directory's weights: its config and weight shards."""
    files = [path / "config.json"] + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    return [f for f in files if f.is_file()]


def dir_fingerprint(path: Path) -> str:
    """Cheap identity of a model directory: config text plus weight file sizes and mtimes."""
    h = hashlib.sha1()
    cfg = path / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def load_state_into(model: HookedTransformer, state_dict: dict[str, torch.Tensor], numerics: Numerics) -> None:
    """Load TransformerLens-format weights, processed or raw.

    Raw mode loads in a single `load_state_dict` (fast); processed mode goes through
    TransformerLens's own `load_and_process_state_dict` so its folding rules apply.
    """
    if numerics == "raw":
        state_dict = model.fill_missing_keys(_without_zero_norm_biases(model, dict(state_dict)))  # zero biases the source has none of
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.endswith(("IGNORE", "mask", "rotary_cos", "rotary_sin"))]
        if missing or unexpected:
            raise RuntimeError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    else:
        model.load_and_process_state_dict(dict(state_dict), **PROCESSING_FLAGS["processed"])


def _without_zero_norm_biases(model: HookedTransformer, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop norm biases an RMSNorm model has no place for when they are exactly zero (TransformerLens's
    Phi-3 converter emits them); a nonzero one is kept, so loading fails loudly instead."""
    own = set(model.state_dict())
    return {k: v for k, v in state_dict.items()
            if k in own or not (k.endswith((".ln1.b", ".ln2.b", "ln_final.b")) and not bool(v.any()))}


def hooked_from_hf_dir(
    path: str | Path,
    numerics: Numerics = "raw",
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    n_ctx: int | None = 2048,
) -> tuple[HookedTransformer, object]:
    """Load `path` with transformers, convert to TransformerLens, return (model, hf_config)."""
    path = Path(path)
    check_hf_dir(path)
    cfg_dict = hf_config_dict(path, n_ctx)
    cfg_dict.update(device=device, dtype=dtype)
    cfg = HookedTransformerConfig(**cfg_dict)
    hf_model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    state_dict = tl_loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model, dtype=dtype)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False, default_padding_side="right")
    load_state_into(model, state_dict, numerics)
    model.to(device)
    model.eval()
    return model, hf_model.config
