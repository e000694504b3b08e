"""What the workbench knows about a loaded model, recorded with every result."""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Iterator, Literal

import torch
from transformer_lens import HookedTransformer

from workbench.identity import tensors_digest
from workbench.scoped import scoped

Numerics = Literal["raw", "processed"]
NUMERICS: tuple[str, ...] = ("raw", "processed")

# TransformerLens's default weight processing, applied in "processed" mode.
PROCESSING_FLAGS = {
    "raw": dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False),
    "processed": dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True),
}


@dataclass
class ModelInfo:
    """Identity and provenance of a loaded model.

    `id` names the model for people; `weights` identifies what its weights hold (the GGUF's or the
    weight files' SHA-256, a hub revision, or a digest of the tensors themselves). Store keys use
    `model_key`, which adds the live dtype and device type and notices weights changed in place.
    """

    id: str
    source: str  # embedded | transformer-lens | hf-local | tiny | checkpoint | user
    numerics: Numerics
    tied_embeddings: bool | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    tokenizer: str | None = None
    path: str | None = None
    n_params: int = 0
    weights: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The weights' identity as loaded: name, numerics and content (no dtype or device)."""
        return f"{self.id}|{self.numerics}|w:{self.weights}"

    def to_dict(self) -> dict:
        return asdict(self)


def weight_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's learned tensors in state-dict order (no masks, rotary tables or other buffers)."""
    return [(k, v) for k, v in model.state_dict().items() if not k.endswith(BUFFER_SUFFIXES)]


BUFFER_SUFFIXES = ("IGNORE", ".mask", "rotary_cos", "rotary_sin")


def weights_signature(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Where each parameter lives and its in-place version counter: it changes when an optimiser
    step, `copy_`, `mul_` (under no_grad too) or a `.data` swap touches the weights.

    Writes through `param.data.<op>_()` bypass the version counter; use `torch.no_grad()` instead.
    """
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def attach_info(model: HookedTransformer, info: ModelInfo) -> HookedTransformer:
    """Record `info` on the model (as `model.workbench_info`) and fill derived fields.

    An empty `info.weights` is filled with a digest of the tensors themselves.
    """
    info.n_params = sum(p.numel() for p in model.parameters())
    tok = model.tokenizer
    if tok is not None:
        info.bos_token_id = info.bos_token_id if info.bos_token_id is not None else tok.bos_token_id
        info.eos_token_id = info.eos_token_id if info.eos_token_id is not None else tok.eos_token_id
        info.tokenizer = info.tokenizer or getattr(tok, "name_or_path", type(tok).__name__)
    if not info.weights:
        info.weights = "tensors:" + tensors_digest(weight_tensors(model))
    model.workbench_info = info
    model.workbench_signature = weights_signature(model)
    return model


def model_info(model: HookedTransformer) -> ModelInfo:
    """The model's recorded info, or one derived from its weights for models built by the user."""
    info = getattr(model, "workbench_info", None)
    if info is not None:
        return info
    cfg = model.cfg
    numerics: Numerics = "processed" if cfg.normalization_type in ("LNPre", "RMSPre") else "raw"
    info = ModelInfo(id=f"user:{cfg.model_name}", source="user", numerics=numerics)
    attach_info(model, info)
    return info


def current_weights(model: HookedTransformer) -> str:
    """`model_info(model).weights`, or a digest of the tensors when they changed since loading."""
    info = model_info(model)
    sig = weights_signature(model)
    if sig == getattr(model, "workbench_signature", None):
        return info.weights
    cached = getattr(model, "workbench_modified", None)
    if cached is None or cached[0] != sig:
        cached = (sig, "modified:" + tensors_digest(weight_tensors(model)))
        model.workbench_modified = cached
    return cached[1]


def model_key(model: HookedTransformer, device: bool = True) -> str:
    """Everything about a model that can change a result computed on it: name, numerics, the
    weights' content (re-digested if they were changed in place), dtype, whether the fast path
    computes its forward pass (its sums run in another order) and, unless `device=False` (caches
    of trained artifacts), the device type."""
    info = model_info(model)
    p = next(model.parameters())
    path = "fast" if getattr(model, "workbench_fast_path", False) else "explicit"  # see workbench.models.fast_path
    parts = [info.id, info.numerics, f"w:{current_weights(model)}", str(p.dtype).removeprefix("torch."), path]
    if device:
        parts.append(p.device.type)
    return "|".join(parts)


def default_device() -> str:
    """CUDA when present, else MPS on Apple silicon, else CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ----- precision: one decision per run, like the device -----
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
_DTYPE: contextvars.ContextVar[str | None] = contextvars.ContextVar("wb_dtype", default=None)


def parse_dtype(value: "str | torch.dtype | None") -> torch.dtype:
    """torch dtype of "float32" / "bfloat16" / "float16" (or "fp32", "bf16", "fp16", a torch dtype);
    ConfigError for anything else."""
    from workbench.errors import ConfigError

    if isinstance(value, torch.dtype):
        if str(value).removeprefix("torch.") not in DTYPES:
            raise ConfigError(f"dtype must be one of {DTYPES}, got {value}")
        return value
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(str(value).lower(), str(value).lower().removeprefix("torch."))
    if name not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {str(value)[:40]!r}")
    return getattr(torch, name)


def default_dtype() -> torch.dtype:
    """The precision models load in when a caller names none: what `using_dtype` set (the CLI's
    `--dtype`), else WORKBENCH_DTYPE, else float32."""
    return parse_dtype(_DTYPE.get() or os.environ.get("WORKBENCH_DTYPE") or "float32")


@contextmanager
def using_dtype(dtype: "str | torch.dtype | None") -> Iterator[None]:
    """Models loaded inside (without a dtype of their own) load in `dtype` (None: no change)."""
    if dtype is None:
        yield
        return
    with scoped(_DTYPE, str(parse_dtype(dtype)).removeprefix("torch.")):
        yield
