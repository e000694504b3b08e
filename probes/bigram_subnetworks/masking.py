"""Weight masks over a TransformerLens model: which weights are maskable, masked forward passes
without weight copies, hard masks saved as boolean safetensors, and count-matched random masks.

Maskable weights are every weight matrix inside the blocks: attention W_Q, W_K, W_V, W_O (for
grouped-query attention the stored `_W_K`/`_W_V`, one per KV head) and the MLP's W_in, W_gate
(gated MLPs) and W_out. Biases, embeddings, positional embeddings, unembedding and norms are
always kept. Masks act on the model's own (raw) parameters, elementwise, so the model must be
loaded without TransformerLens's weight processing (folding would mix norms into the weights).

Layout relied on: TransformerLens's converters already split fused projections per head. For
GPT-NeoX/Pythia, `query_key_value.weight` is [(head, qkv, d_head), d_model], i.e. rows interleave
per head; TL's `convert_neox_weights` rearranges it "(i qkv h) m -> qkv i m h", so W_Q/W_K/W_V here
are [n_heads, d_model, d_head] and are the true query/key/value weights. Slicing the fused matrix
into contiguous thirds (as if it were GPT-2's [q | k | v] layout) would mislabel them. GPT-2's
Conv1D `c_attn` is [d_model, (qkv, head, d_head)] and TL splits it the same way.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from transformer_lens import HookedTransformer

from workbench.errors import ConfigError
from workbench.io import write_tensors

_MASKABLE = re.compile(r"^blocks\.(\d+)\.(attn|mlp)\.(W_Q|W_K|W_V|W_O|_W_K|_W_V|W_in|W_gate|W_out)$")
_MATRIX = {"W_Q": "q", "W_K": "k", "_W_K": "k", "W_V": "v", "_W_V": "v", "W_O": "o", "W_in": "in", "W_gate": "gate", "W_out": "out"}
LOGIT_OFF = -1.0e4  # initial logit of weights that are exactly zero: off from the start, as in the public code


@dataclass(frozen=True)
class MaskSlot:
    """One maskable weight: its parameter name, layer, block ('attn' | 'mlp') and matrix kind."""

    name: str
    layer: int
    block: str
    matrix: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))


def mask_slots(model: HookedTransformer) -> list[MaskSlot]:
    """The model's maskable weights, in parameter order."""
    slots = []
    for name, p in model.named_parameters():
        m = _MASKABLE.match(name)
        if m:
            slots.append(MaskSlot(name, int(m.group(1)), m.group(2), _MATRIX[m.group(3)], tuple(p.shape)))
    if not slots:
        raise ConfigError("this model has no maskable weight matrices (expected blocks.L.attn.W_Q ... mlp.W_out)")
    return slots


def n_maskable(model: HookedTransformer) -> int:
    return sum(s.numel for s in mask_slots(model))


def _key(name: str) -> str:
    return name.replace(".", "__")


class MaskLogits(nn.Module):
    """One learnable logit per maskable weight (continuous sparsification).

    Training mask: sigmoid(T * m). Evaluation mask: m > 0.
    """

    def __init__(self, model: HookedTransformer, init: float = 0.0):
        super().__init__()
        self.slots = mask_slots(model)
        self.logits = nn.ParameterDict()
        for s in self.slots:
            w = model.get_parameter(s.name)
            m = torch.full(s.shape, float(init), dtype=torch.float32, device=w.device)
            m[w.detach() == 0] = LOGIT_OFF
            self.logits[_key(s.name)] = nn.Parameter(m)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    def logit(self, name: str) -> torch.Tensor:
        return self.logits[_key(name)]

    def soft(self, temperature: float) -> dict[str, torch.Tensor]:
        return {n: torch.sigmoid(temperature * self.logit(n)) for n in self.names}

    def hard(self) -> dict[str, torch.Tensor]:
        return {n: (self.logit(n) > 0).detach() for n in self.names}

    def mean_soft(self, temperature: float) -> torch.Tensor:
        """mean(sigmoid(T m)) over every maskable weight: the sparsity penalty before lambda."""
        total = sum(torch.sigmoid(temperature * self.logit(n)).sum() for n in self.names)
        return total / sum(s.numel for s in self.slots)

    @torch.no_grad()
    def decided_counts(self, temperature: float, low: float = 0.1, high: float = 0.9) -> torch.Tensor:
        """[n below `low`, n above `high`] of the training mask at `temperature`, as one tensor on
        the masks' device (no host synchronisation: read it together with other step values)."""
        lo = float(np.log(low / (1 - low))) / temperature
        hi = float(np.log(high / (1 - high))) / temperature
        below = sum((self.logit(n) < lo).sum() for n in self.names)
        above = sum((self.logit(n) > hi).sum() for n in self.names)
        return torch.stack([below, above])

    def decided(self, temperature: float, low: float = 0.1, high: float = 0.9) -> tuple[int, int, int]:
        """(n below `low`, n above `high`, n total) of the training mask at `temperature`."""
        below, above = self.decided_counts(temperature, low, high).tolist()
        return int(below), int(above), self.total

    @property
    def total(self) -> int:
        return sum(s.numel for s in self.slots)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {n: self.logit(n).detach() for n in self.names}

    @torch.no_grad()
    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        for n in self.names:
            self.logit(n).copy_(state[n])


def masked_forward(model: HookedTransformer, masks: dict[str, torch.Tensor], tokens: torch.Tensor, **kwargs) -> torch.Tensor:
    """Logits of the model with each maskable weight W0 replaced by W0 * mask (no weight copies kept).

    Uses `torch.func.functional_call`, so gradients flow to the masks while the base weights stay frozen.
    The masks stay float32 (the trained logits keep their precision) and each masked weight is cast
    back to the model's own dtype, so a bfloat16 model runs in bfloat16.
    """
    params = {n: (w * m).to(w.dtype) for n, m in masks.items() for w in (model.get_parameter(n),)}
    kwargs.setdefault("return_type", "logits")
    return torch.func.functional_call(model, params, (tokens,), kwargs, strict=False)


@contextmanager
def masks_applied(model: HookedTransformer, masks: dict[str, torch.Tensor]) -> Iterator[HookedTransformer]:
    """Temporarily zero the weights a (boolean or 0/1) mask removes; restores the originals on exit.

    Unlike `masked_forward`, the model itself is changed for the duration, so hooks, streaming
    and any analysis code see the subnetwork.
    """
    originals: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for n, m in masks.items():
                p = model.get_parameter(n)
                originals[n] = p.data
                p.data = p.data * m.to(device=p.device, dtype=p.dtype)
        yield model
    finally:
        for n, data in originals.items():
            model.get_parameter(n).data = data


@torch.no_grad()
def apply_masks(model: HookedTransformer, masks: dict[str, torch.Tensor]) -> HookedTransformer:
    """Zero masked-out weights in place, permanently (load a subnetwork for later analyses)."""
    check_masks(model, masks)
    for n, m in masks.items():
        p = model.get_parameter(n)
        p.mul_(m.to(device=p.device, dtype=p.dtype))
    return model


def check_masks(model: HookedTransformer, masks: dict[str, torch.Tensor]) -> None:
    """Raise ConfigError unless `masks` covers exactly the model's maskable weights, shape for shape."""
    slots = {s.name: s for s in mask_slots(model)}
    missing, extra = sorted(set(slots) - set(masks)), sorted(set(masks) - set(slots))
    if missing or extra:
        raise ConfigError(f"masks do not fit this model: missing {missing[:4]}, unexpected {extra[:4]}")
    for n, m in masks.items():
        if tuple(m.shape) != slots[n].shape:
            raise ConfigError(f"mask {n} has shape {tuple(m.shape)}, the weight has {slots[n].shape}")


def complement(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: ~m.bool() for n, m in masks.items()}


def kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


def random_like(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random boolean masks with exactly the same number of kept weights in every matrix."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in masks.items():
        k = int(m.sum())
        flat = torch.zeros(m.numel(), dtype=torch.bool)
        flat[torch.randperm(m.numel(), generator=g)[:k]] = True
        out[n] = flat.reshape(m.shape).to(m.device)
    return out


def save_masks(path: str | Path, masks: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> Path:
    """Boolean safetensors, one tensor per maskable weight (keys are parameter names)."""
    write_tensors(path, {n: m.bool() for n, m in masks.items()}, metadata={k: str(v) for k, v in (meta or {}).items()})
    return Path(path)


def load_masks(path: str | Path, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(masks, metadata) from a file written by `save_masks`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=device) as f:
        meta = dict(f.metadata() or {})
        masks = {k: f.get_tensor(k).bool() for k in f.keys()}
    return masks, meta
