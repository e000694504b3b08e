"""The fast path: a HookedTransformer forward pass as fast as the plain model, behind
TransformerLens's own hook points.

Attention: causal attention through `torch.nn.functional.scaled_dot_product_attention`.
TransformerLens computes every attention layer with an explicit [batch, head, query, key] score
matrix, a mask, a softmax, a NaN guard and a second batched matmul. That costs most of a forward
pass at long contexts, and its memory grows with the square of the length. The fused kernel (flash
or memory-efficient on a GPU, a blocked online-softmax kernel on the CPU) computes the same z
without materialising the pattern, and reads grouped-query K/V without repeating them
(`enable_gqa`).

A layer takes the fast path only when nothing needs what it skips: no hook on its
`hook_attn_scores` or `hook_pattern` (`run_with_cache` of a pattern, a probe that reduces
patterns, ReLU attention's permanent hooks), no KV cache, no padding mask, and an architecture
whose attention is plain causal softmax (no ALiBi, relative position bias, soft-capping, attention
sinks, log-n scaling, QKV clipping or per-head results). Otherwise the layer runs TransformerLens's
own code. Local (sliding-window) layers pass the fused kernel a banded causal mask (query i sees
keys i - window < j <= i, TransformerLens's own rule) when the window is shorter than the sequence. `hook_q`, `hook_k`, `hook_v`, `hook_rot_q`, `hook_rot_k`, `hook_z` and everything outside
attention fire with the same values either way (within float32 round-off: relative 1e-4 on logits
is the tested bound; the kernel sums in a different order).

Linear layers: TransformerLens copies the transposed weights of every gated MLP and of the
unembedding on every call (`W.T.contiguous()`, so that bfloat16 sums run in the order of Hugging
Face's nn.Linear), and adds bias vectors that are all zeros for models without biases. The fast
path multiplies by the weights as stored (`x @ W`, no copy) and skips a bias that is all zeros
(checked once per weight version; never while the bias is being trained). Values agree within
float32 round-off, and gradients flow as in TransformerLens's forward.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType
from typing import Any, Iterator

import einops
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer
from transformer_lens.components.abstract_attention import AbstractAttention
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.components.unembed import Unembed

FLAG = "workbench_fast_path"
_EXPLICIT_ONLY_ARCHITECTURES = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")


def _hooked(hook_point: torch.nn.Module) -> bool:
    return bool(hook_point._forward_hooks) or bool(hook_point._forward_pre_hooks)


def fusable(attn: AbstractAttention, past_kv_cache_entry: Any = None, additive_attention_mask: Any = None,
            attention_mask: Any = None, position_bias: Any = None) -> bool:
    """Whether this call of `attn` can take the fused path (see the module docstring)."""
    cfg = attn.cfg
    if past_kv_cache_entry is not None or additive_attention_mask is not None or attention_mask is not None or position_bias is not None:
        return False
    if _hooked(attn.hook_attn_scores) or _hooked(attn.hook_pattern):
        return False
    if (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) != "causal":
        return False
    if cfg.positional_embedding_type in ("alibi", "relative_positional_bias"):
        return False
    if cfg.attn_scores_soft_cap is not None and cfg.attn_scores_soft_cap > 0:
        return False
    return not (cfg.use_attention_sinks or cfg.use_logn_attn or cfg.clip_qkv is not None or cfg.use_attn_result
                or cfg.load_in_4bit or cfg.original_architecture in _EXPLICIT_ONLY_ARCHITECTURES)


def local_window(attn: AbstractAttention, n_pos: int) -> int | None:
    """The window of a local (sliding-window) attention layer when it is shorter than the sequence:
    query i then sees keys i - window < j <= i (GPT-Neo, Mistral, Phi-3, Gemma-2/3 local layers).
    None for global layers and for windows that cover the whole sequence (plain causal)."""
    if getattr(attn, "attn_type", "global") != "local":
        return None
    window = attn.cfg.window_size
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"local attention needs an integer window_size, got {window!r}")
    return window if window < n_pos else None


def banded_causal_mask(n_pos: int, window: int, device: torch.device) -> torch.Tensor:
    """[pos, pos] boolean mask, True where query i may attend key j: i - window < j <= i (exactly
    TransformerLens's local mask)."""
    q = torch.arange(n_pos, device=device)[:, None]
    k = torch.arange(n_pos, device=device)[None, :]
    return (k <= q) & (k > q - window)


def fused_forward(self: AbstractAttention, query_input: torch.Tensor, key_input: torch.Tensor, value_input: torch.Tensor,
                  past_kv_cache_entry: Any = None, additive_attention_mask: Any = None, attention_mask: Any = None,
                  position_bias: Any = None) -> torch.Tensor:
    """`AbstractAttention.forward` with the scores, pattern and z computed by one fused kernel."""
    if not fusable(self, past_kv_cache_entry, additive_attention_mask, attention_mask, position_bias):
        return type(self).forward(self, query_input, key_input, value_input, past_kv_cache_entry,
                                  additive_attention_mask, attention_mask, position_bias)
    q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)  # hook_q / hook_k / hook_v
    if self.cfg.positional_embedding_type == "rotary":
        q = self.hook_rot_q(self.apply_rotary(q, 0, None))
        k = self.hook_rot_k(self.apply_rotary(k, 0, None))
    n_q, n_kv = q.shape[2], k.shape[2]
    window = local_window(self, q.shape[1])
    z = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype),
        attn_mask=None if window is None else banded_causal_mask(q.shape[1], window, q.device),
        is_causal=window is None, scale=1.0 / float(self.attn_scale), enable_gqa=n_kv != n_q,
    )  # [batch, head, pos, d_head]
    z = self.hook_z(z.transpose(1, 2))  # [batch, pos, head, d_head], as TransformerLens's hook_z
    w = einops.rearrange(self.W_O, "head_index d_head d_model -> d_model (head_index d_head)")
    b_O = self.b_O
    if w.device != z.device:
        w, b_O = w.to(z.device), b_O.to(z.device)
    z = z.to(w.dtype).reshape(z.shape[0], z.shape[1], self.cfg.d_head * self.cfg.n_heads)
    if z.device.type == "mps":  # F.linear on MPS with some torch versions: pytorch#161640
        return torch.matmul(z, w.T) + b_O
    return F.linear(z, w, b_O)


def _is_zero(module: torch.nn.Module, name: str) -> bool:
    """Whether parameter `name` of `module` is all zeros and needs no gradient now, so adding it
    can be skipped (cached per storage and version: one device sync per change of the weight)."""
    p = getattr(module, name)
    if p.requires_grad and torch.is_grad_enabled():
        return False  # a bias being trained must stay in the graph, zero or not
    stamp = (p.data_ptr(), p._version)
    cache = module.__dict__.setdefault("_workbench_zero", {})
    if cache.get(name, (None,))[0] != stamp:
        cache[name] = (stamp, not bool(p.detach().any()))
    return cache[name][1]


def _copy_is_faster(x: torch.Tensor) -> bool:
    """Whether TransformerLens's transposed weight copy beats multiplying by the stored weight: on a
    CPU in half precision, `x @ W` with W stored [in, out] falls to a slow kernel where the CPU has
    no native bfloat16 (measured on AVX2: 42 s against 0.75 s for SmolLM2's unembedding on 256
    tokens), while `F.linear` on the [out, in] copy is fast. Float32 and GPUs are fine either way."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def gated_mlp_forward(self: GatedMLP, x: torch.Tensor) -> torch.Tensor:
    """`GatedMLP.forward` without the per-call weight copies and the all-zero bias additions."""
    if self.cfg.is_layer_norm_activation() or self.W_gate.device != x.device or _copy_is_faster(x):
        return type(self).forward(self, x)
    pre_act = self.hook_pre(x @ self.W_gate)
    pre_linear = self.hook_pre_linear(x @ self.W_in)
    post = self.act_fn(pre_act) * pre_linear
    post_act = self.hook_post(post if _is_zero(self, "b_in") else post + self.b_in)
    out = post_act @ self.W_out
    return out if _is_zero(self, "b_out") else out + self.b_out


def unembed_forward(self: Unembed, residual: torch.Tensor) -> torch.Tensor:
    """`Unembed.forward` without copying the transposed W_U (113 MB for SmolLM2) on every call."""
    if residual.device != self.W_U.device or _copy_is_faster(residual):
        return type(self).forward(self, residual)
    residual = self.hook_in(residual)
    out = residual @ self.W_U
    return self.hook_out(out if _is_zero(self, "b_U") else out + self.b_U)


FAST = ((AbstractAttention, fused_forward), (GatedMLP, gated_mlp_forward), (Unembed, unembed_forward))


def _patched(model: HookedTransformer) -> list[tuple[torch.nn.Module, object]]:
    return [(m, fn) for m in model.modules() for cls, fn in FAST if isinstance(m, cls)]


def install_fast_path(model: HookedTransformer) -> HookedTransformer:
    """Route attention, gated MLPs and the unembedding of `model` through the fast path (in place; idempotent)."""
    for module, fn in _patched(model):
        module.forward = MethodType(fn, module)
    setattr(model, FLAG, True)
    return model


def remove_fast_path(model: HookedTransformer) -> HookedTransformer:
    """Back to TransformerLens's own forward everywhere."""
    for module, _ in _patched(model):
        module.__dict__.pop("forward", None)
    setattr(model, FLAG, False)
    return model


def uses_fast_path(model: HookedTransformer) -> bool:
    return bool(getattr(model, FLAG, False))


@contextmanager
def explicit_path(model: HookedTransformer) -> Iterator[HookedTransformer]:
    """TransformerLens's own forward for the duration (a reference, or a benchmark baseline)."""
    was = uses_fast_path(model)
    remove_fast_path(model)
    try:
        yield model
    finally:
        if was:
            install_fast_path(model)


@contextmanager
def fast_path(model: HookedTransformer) -> Iterator[HookedTransformer]:
    """The fast path for the duration, whatever the model used before (for models built by the user)."""
    was = uses_fast_path(model)
    install_fast_path(model)
    try:
        yield model
    finally:
        if not was:
            remove_fast_path(model)
