"""The names of the activations the workbench reads, one function each (TransformerLens's hook
points: one stable name per activation, `fn(tensor, hook)`).

Use these instead of building names by hand, so that a typo is an AttributeError at import and
not a hook that silently never fires.
"""

from __future__ import annotations

import re

EMBED = "hook_embed"
POS_EMBED = "hook_pos_embed"
TOKENS = "hook_tokens"
# What a hook name ends with, for every layer's copy of it (sae configs name hooks by these too)
RESID_PRE, RESID_MID, RESID_POST = "hook_resid_pre", "hook_resid_mid", "hook_resid_post"
ATTN_OUT, MLP_OUT, PATTERN = "hook_attn_out", "hook_mlp_out", "hook_pattern"
D_MODEL_WIDE = (RESID_PRE, RESID_MID, RESID_POST, ATTN_OUT, MLP_OUT)  # d_model-wide states of the residual stream
RESIDUAL_WRITES = (*D_MODEL_WIDE, EMBED, POS_EMBED)  # writes into (or states of) the residual stream
FINAL_NORM = "ln_final.hook_normalized"
FINAL_SCALE = "ln_final.hook_scale"  # the final norm's per-position scale [batch, pos, 1]
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def block(layer: int) -> str:
    """The module name of block `layer` (where its hook points live)."""
    return f"blocks.{layer}"


def resid_pre(layer: int) -> str:
    """The residual stream entering block `layer`."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """The residual stream after block `layer`'s attention, before its MLP."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """The residual stream leaving block `layer`."""
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_scores(layer: int) -> str:
    """Pre-softmax attention scores [batch, head, query, key]."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def attn_pattern(layer: int) -> str:
    """Attention weights [batch, head, query, key]."""
    return f"blocks.{layer}.attn.hook_pattern"


def attn_q(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_q"


def attn_k(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def attn_v(layer: int) -> str:
    """Value vectors [batch, pos, kv_head, d_head]."""
    return f"blocks.{layer}.attn.hook_v"


def attn_z(layer: int) -> str:
    """Each head's output before W_O [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def attn_result(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_result"


def is_attention_weights(name: str) -> bool:
    """Whether a hook holds attention scores or weights ([batch, head, query, key]: no fused kernel)."""
    return name.endswith(("attn.hook_pattern", "attn.hook_attn_scores"))


def is_mlp(name: str) -> bool:
    """Whether a hook sits inside an MLP (its width is d_mlp)."""
    return ".mlp.hook_" in name


def layer_of(name: str) -> int | None:
    """The block index a hook name belongs to (None for embeddings and the final norm)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None

