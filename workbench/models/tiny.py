"""Tiny randomly initialised models for tests and toy tasks (any size, seeded)."""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from workbench.tokenizers import byte_tokenizer

# Named presets; any field can be overridden by keyword.
TINY_PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 style: LayerNorm, GELU, learned positions.
    "tiny": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, n_ctx=256, act_fn="gelu", normalization_type="LN"),
    # Llama style: RMSNorm, rotary, gated SiLU MLP, grouped-query attention (4 query / 2 KV heads).
    "tiny-llama": dict(
        n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, n_ctx=256, act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=16, gated_mlp=True,
        n_key_value_heads=2, final_rms=True,
    ),
    "tiny-attn-only": dict(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=256, attn_only=True, normalization_type="LN", act_fn="gelu"),
}


def tiny_config(preset: str = "tiny", *, d_vocab: int | None = None, seed: int = 0, **overrides: Any) -> HookedTransformerConfig:
    """A HookedTransformerConfig from a preset plus overrides."""
    if preset not in TINY_PRESETS:
        raise KeyError(f"Unknown tiny preset {preset!r}; known: {sorted(TINY_PRESETS)}")
    fields = dict(TINY_PRESETS[preset])
    fields.update(overrides)
    fields.setdefault("d_vocab", d_vocab or 259)
    fields.setdefault("seed", seed)
    fields.setdefault("model_name", preset)
    return HookedTransformerConfig(**fields)


def tiny_model(preset: str = "tiny", tokenizer=None, device: str = "cpu", seed: int = 0, **overrides: Any) -> HookedTransformer:
    """A seeded random model. With no tokenizer given, the byte tokenizer (vocab 259) is used."""
    if tokenizer is None and "d_vocab" not in overrides:
        tokenizer = byte_tokenizer()
    if tokenizer is not None:
        overrides.setdefault("d_vocab", len(tokenizer))
    cfg = tiny_config(preset, seed=seed, device=device, **overrides)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=True, default_padding_side="right")
    model.eval()
    return model
