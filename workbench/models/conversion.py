"""TransformerLens configs for local Hugging Face model directories, by architecture, never by name.

TransformerLens 3.9's `convert_hf_model_config` branches on the *name* it is given before it reads
the config: a directory whose path contains "llama" takes the Llama branch with no config at all,
one containing "gemma" is read as an official Gemma, and Gemma, OLMo and StableLM directories are
converted only from their hub names. It also reads attributes that transformers 5 moved
(GPT-2's `n_ctx`, Phi's `partial_rotary_factor`) and ignores GPT-Neo's `intermediate_size`.

`tl_config_for_dir` therefore reads the directory's own `config.json` (architecture from it, never
from the path), converts through TransformerLens's converter under a neutral path with the moved
attributes restored, corrects what that converter gets wrong, builds the Gemma family's config from
the directory's own sizes (the switches as TransformerLens sets them for the official Gemmas), and
refuses, with a one-line reason, what it cannot convert faithfully. Every architecture here is
checked against transformers' own forward in `tests/test_conformance.py`.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import transformer_lens.loading_from_pretrained as tl_loading
from transformers import AutoConfig

from workbench.errors import ConfigError

# Architectures TransformerLens 3.9 cannot convert from a local directory, and why.
REFUSED = {
    "OlmoForCausalLM": "TransformerLens 3.9 converts OLMo only from its hub names (allenai/OLMo-*-hf), not from a directory",
    "Olmo2ForCausalLM": "TransformerLens 3.9 converts OLMo-2 only from its hub names (allenai/OLMo-2-*), not from a directory",
    "StableLmForCausalLM": "TransformerLens 3.9 has no StableLM converter",
    "Gemma3ForConditionalGeneration": "a multimodal Gemma-3 checkpoint; load its text model (Gemma3ForCausalLM) instead",
}
NAME_TRIGGERS = ("llama", "gemma")  # substrings TransformerLens's converter matches in a path before reading its config
_LOCK = threading.Lock()


def architecture_of(path: Path) -> str:
    """The architecture a directory's config.json declares (first of `architectures`), else its model_type."""
    hf = AutoConfig.from_pretrained(str(path), local_files_only=True)
    archs = getattr(hf, "architectures", None) or []
    return archs[0] if archs else str(getattr(hf, "model_type", "unknown"))


def tl_config_for_dir(path: Path, n_ctx: int | None = None) -> dict[str, Any]:
    """TransformerLens config dict for the Hugging Face model in `path` (see the module docstring)."""
    hf = AutoConfig.from_pretrained(str(path), local_files_only=True)
    arch = (getattr(hf, "architectures", None) or [""])[0]
    if arch in REFUSED:
        raise ConfigError(f"model directory {str(path)!r} ({arch}): {REFUSED[arch]}")
    if arch in OWN_CONVERTERS:
        cfg = OWN_CONVERTERS[arch](hf)
        cfg["original_architecture"] = arch
        cfg["tokenizer_name"] = str(path)
    else:
        _restore_moved_attributes(hf)
        try:
            with _neutral_name(path) as neutral, _config_is(hf):
                cfg = tl_loading.convert_hf_model_config(neutral)
        except NotImplementedError as e:
            raise ConfigError(f"model directory {str(path)!r}: {e}") from None
        cfg["tokenizer_name"] = str(path)
        _correct(cfg, hf, arch)
    if n_ctx is not None:
        cfg["n_ctx"] = min(cfg["n_ctx"], n_ctx)
    return cfg


def _restore_moved_attributes(hf: Any) -> None:
    """Attributes transformers 5 dropped or moved into `rope_parameters`, where the converter reads them."""
    if hf.model_type == "gpt2" and not hasattr(hf, "n_ctx"):
        hf.n_ctx = hf.n_positions
    rope = getattr(hf, "rope_parameters", None)
    if isinstance(rope, dict) and "partial_rotary_factor" in rope and not hasattr(hf, "partial_rotary_factor"):
        hf.partial_rotary_factor = rope["partial_rotary_factor"]


def _correct(cfg: dict[str, Any], hf: Any, arch: str) -> None:
    """What TransformerLens's converter gets wrong for a directory's own config."""
    if arch == "GPTNeoForCausalLM" and getattr(hf, "intermediate_size", None):
        cfg["d_mlp"] = int(hf.intermediate_size)  # the converter assumes 4 x hidden_size


@contextmanager
def _neutral_name(path: Path) -> Iterator[str]:
    """`path` under a name that contains none of NAME_TRIGGERS (a symlink in a fresh temporary directory)."""
    parent = Path(tempfile.mkdtemp(prefix="wb-model-"))
    if any(t in str(parent).lower() for t in NAME_TRIGGERS):  # a TMPDIR whose own path trips the converter
        parent.rmdir()
        parent = Path(tempfile.mkdtemp(prefix="wb-model-", dir="/tmp" if os.path.isdir("/tmp") else None))
    link = parent / "model"
    os.symlink(Path(path).resolve(), link)
    try:
        yield str(link)
    finally:
        link.unlink()
        parent.rmdir()


@contextmanager
def _config_is(hf: Any) -> Iterator[None]:
    """TransformerLens's converter reads `hf` (with its corrections) instead of the file again."""

    class _Given:
        @staticmethod
        def from_pretrained(*args: Any, **kwargs: Any) -> Any:
            return hf

    with _LOCK:
        saved = tl_loading.AutoConfig
        tl_loading.AutoConfig = _Given
        try:
            yield
        finally:
            tl_loading.AutoConfig = saved


# ----------------------------------------------------------------------------- the Gemma family


def _rope_theta(rope: Any, default: float = 10000.0) -> float:
    return float(rope.get("rope_theta", default)) if isinstance(rope, dict) else default


def _gemma_common(hf: Any) -> dict[str, Any]:
    d_head = int(getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    kv = int(getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads)
    return {
        "d_model": hf.hidden_size, "d_head": d_head, "n_heads": hf.num_attention_heads, "d_mlp": hf.intermediate_size,
        "n_layers": hf.num_hidden_layers, "n_ctx": hf.max_position_embeddings, "eps": hf.rms_norm_eps,
        "d_vocab": hf.vocab_size, "act_fn": getattr(hf, "hidden_activation", None) or hf.hidden_act,
        "initializer_range": hf.initializer_range, "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_dim": d_head, "use_attn_scale": True, "n_key_value_heads": kv if kv != hf.num_attention_heads else None,
        "gated_mlp": True, "final_rms": True,
    }


def _layer_types(hf: Any) -> list[str]:
    types = getattr(hf, "layer_types", None)
    if not types:
        raise ConfigError("this Gemma config has no layer_types; the local and global layers cannot be told apart")
    return ["local" if t == "sliding_attention" else "global" for t in types]


def _gemma(hf: Any) -> dict[str, Any]:
    cfg = _gemma_common(hf)
    cfg["rotary_base"] = _rope_theta(getattr(hf, "rope_parameters", None))
    return cfg


def _gemma2(hf: Any) -> dict[str, Any]:
    cfg = _gemma_common(hf)
    cfg.update(rotary_base=_rope_theta(getattr(hf, "rope_parameters", None)), window_size=hf.sliding_window,
               use_local_attn=True, attn_types=_layer_types(hf), attn_scale=float(hf.query_pre_attn_scalar) ** 0.5,
               attn_scores_soft_cap=hf.attn_logit_softcapping, output_logits_soft_cap=hf.final_logit_softcapping,
               use_normalization_before_and_after=True)
    return cfg


def _gemma3(hf: Any) -> dict[str, Any]:
    cfg = _gemma_common(hf)
    rope = getattr(hf, "rope_parameters", None) or {}
    local, full = rope.get("sliding_attention", {}), rope.get("full_attention", {})
    for part in (local, full):
        if part.get("rope_type", "default") != "default":
            raise ConfigError(f"Gemma-3 with {part.get('rope_type')!r} rope scaling is not converted here (only the default rope)")
    cfg.update(rotary_base=_rope_theta(full, 1e6), rotary_base_local=_rope_theta(local), window_size=hf.sliding_window,
               use_local_attn=True, attn_types=_layer_types(hf), attn_scale=float(hf.query_pre_attn_scalar) ** 0.5,
               use_normalization_before_and_after=True, use_qk_norm=True)
    if getattr(hf, "attn_logit_softcapping", None):
        cfg["attn_scores_soft_cap"] = hf.attn_logit_softcapping
    if getattr(hf, "final_logit_softcapping", None):
        cfg["output_logits_soft_cap"] = hf.final_logit_softcapping
    return cfg


OWN_CONVERTERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "GemmaForCausalLM": _gemma, "Gemma2ForCausalLM": _gemma2, "Gemma3ForCausalLM": _gemma3,
}
