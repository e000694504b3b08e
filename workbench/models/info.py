"""What the workbench knows about a loaded model, recorded with every result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from transformer_lens import HookedTransformer

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

    `id` is stable for the same weights (it goes into store keys together with `numerics`).
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
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.id}|{self.numerics}"

    def to_dict(self) -> dict:
        return asdict(self)


def attach_info(model: HookedTransformer, info: ModelInfo) -> HookedTransformer:
    """Record `info` on the model (as `model.workbench_info`) and fill derived fields."""
    info.n_params = sum(p.numel() for p in model.parameters())
    tok = model.tokenizer
    if tok is not None:
        info.bos_token_id = info.bos_token_id if info.bos_token_id is not None else tok.bos_token_id
        info.eos_token_id = info.eos_token_id if info.eos_token_id is not None else tok.eos_token_id
        info.tokenizer = info.tokenizer or getattr(tok, "name_or_path", type(tok).__name__)
    model.workbench_info = info
    return model


def model_info(model: HookedTransformer) -> ModelInfo:
    """The model's recorded info, or one derived from its config for models built by the user."""
    info = getattr(model, "workbench_info", None)
    if info is not None:
        return info
    cfg = model.cfg
    import hashlib

    digest = hashlib.sha1(repr(sorted(cfg.to_dict().items(), key=str)).encode()).hexdigest()[:10]
    numerics: Numerics = "processed" if cfg.normalization_type in ("LNPre", "RMSPre") else "raw"
    return attach_info(model, ModelInfo(id=f"user:{cfg.model_name}:{digest}", source="user", numerics=numerics))


def default_device() -> str:
    """CUDA when present, else MPS on Apple silicon, else CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
