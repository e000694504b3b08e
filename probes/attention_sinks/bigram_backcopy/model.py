"""The small transformers trained on the Bigram-Backcopy task: their config and init, frozen biases,
and ReLU attention (registered as the model patch a checkpoint can ask for)."""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from probes.attention_sinks.bigram_backcopy.task import SEQ_LEN, BBTask
from workbench import hooks
from workbench.errors import ConfigError
from workbench.models.info import default_device
from workbench.models.patches import register_model_patch

FROZEN_BIAS_SUFFIXES = (".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", "unembed.b_U")
LAYERNORM_BIAS_SUFFIXES = ("ln1.b", "ln2.b", "ln_final.b")
BB_INITS = ("tl", "torch")  # see the package docstring

def bb_model_config(n_layers: int, d_vocab: int, d_model: int = 256, n_ctx: int = SEQ_LEN, seed: int = 0,
                    name: str = "bb") -> HookedTransformerConfig:
    """The paper's BB transformer as a TransformerLens config (1 head, pre-LN, ReLU MLP 4d)."""
    if n_layers < 1:
        raise ConfigError(f"n_layers must be >= 1, got {n_layers}")
    return HookedTransformerConfig(
        n_layers=n_layers, d_model=d_model, n_heads=1, d_head=d_model, d_mlp=4 * d_model, act_fn="relu",
        normalization_type="LN", positional_embedding_type="standard", n_ctx=n_ctx, d_vocab=d_vocab,
        d_vocab_out=d_vocab, seed=seed, model_name=name, default_prepend_bos=True,
    )


def bb_model(task: BBTask, n_layers: int = 1, d_model: int = 256, seed: int = 0, device: str | None = None,
             name: str = "bb", init: str = "tl", layernorm_bias: bool = True) -> HookedTransformer:
    """A freshly initialised BB model: N(0,1) embeddings, linear biases zeroed and frozen (and the
    LayerNorm biases unless `layernorm_bias`), the other weights as `init` says (a key of
    BB_INITS; see the module docstring)."""
    check_init(init)
    cfg = bb_model_config(n_layers, task.d_vocab, d_model, seed=seed, name=name)
    torch.manual_seed(seed)
    model = HookedTransformer(cfg, tokenizer=task.tokenizer(), move_to_device=False, default_padding_side="right")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.embed.W_E.copy_(torch.randn(model.embed.W_E.shape, generator=gen))
        model.pos_embed.W_pos.copy_(torch.randn(model.pos_embed.W_pos.shape, generator=gen))
        if init == "torch":
            for pname, p in model.named_parameters():
                fan_in = _linear_fan_in(pname, p)
                if fan_in:
                    torch.nn.init.uniform_(p, -fan_in ** -0.5, fan_in ** -0.5, generator=gen)
    freeze_biases(model, layernorm=not layernorm_bias)
    return model.to(device or default_device())


def check_init(init: str) -> None:
    if init not in BB_INITS:
        raise ConfigError(f"unknown BB init {init!r}; choose one of {list(BB_INITS)}")


def _linear_fan_in(name: str, p: torch.Tensor) -> int | None:
    """The fan-in the paper's nn.Linear layer would have for a TransformerLens weight (None for
    embeddings, norms and biases). W_Q/W_K/W_V are [head, d_model, d_head], W_O [head, d_head, d_model],
    W_in/W_out/W_U [in, out]."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("W_Q", "W_K", "W_V"):
        return p.shape[1]
    if leaf == "W_O":
        return p.shape[0] * p.shape[1]
    if leaf in ("W_in", "W_out", "W_U"):
        return p.shape[0]
    return None


def freeze_biases(model: HookedTransformer, layernorm: bool = False) -> list[str]:
    """Zero and freeze every linear bias (attention, MLP, unembedding), and the LayerNorm biases
    too if `layernorm`; returns their names."""
    suffixes = FROZEN_BIAS_SUFFIXES + (LAYERNORM_BIAS_SUFFIXES if layernorm else ())
    frozen = []
    for name, p in model.named_parameters():
        if name.endswith(suffixes):
            with torch.no_grad():
                p.zero_()
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def relu_attention_pattern(scores: torch.Tensor) -> torch.Tensor:
    """ReLU(scores) / i with i the 1-based query position and masked entries exactly 0.

    `scores` are TransformerLens's `hook_attn_scores` ([batch, head, query, key], already divided
    by √d_head, masked entries -inf); queries are the last `query` of the `key` positions."""
    n_q, n_k = scores.shape[-2], scores.shape[-1]
    q_pos = torch.arange(n_k - n_q, n_k, device=scores.device)
    k_pos = torch.arange(n_k, device=scores.device)
    keep = (k_pos[None, :] <= q_pos[:, None]) & torch.isfinite(scores)
    weights = torch.where(keep, scores, torch.zeros((), dtype=scores.dtype, device=scores.device)).relu()
    return weights / (q_pos + 1).to(scores.dtype)[:, None]


def install_relu_attention(model: HookedTransformer) -> HookedTransformer:
    """Make every layer use ReLU attention, with permanent hooks (they survive `reset_hooks()` and
    `model.hooks(...)` contexts): `hook_attn_scores` is read and `hook_pattern` replaced. Later hooks
    on `hook_pattern` see the ReLU weights; a later edit of `hook_attn_scores` does not change them."""
    if getattr(model, "workbench_attention", "softmax") == "relu":
        return model
    scores: dict[int, torch.Tensor] = {}

    def keep_scores(s: torch.Tensor, hook) -> None:
        scores[hook.layer()] = s

    def relu_pattern(_pattern: torch.Tensor, hook) -> torch.Tensor:
        return relu_attention_pattern(scores.pop(hook.layer()))

    for layer in range(model.cfg.n_layers):
        model.add_hook(hooks.attn_scores(layer), keep_scores, is_permanent=True)
        model.add_hook(hooks.attn_pattern(layer), relu_pattern, is_permanent=True)
    model.workbench_attention = "relu"
    return model


RELU_ATTENTION = "relu-attention"
register_model_patch(RELU_ATTENTION, install_relu_attention)


@torch.inference_mode()
def bos_self_scores(model: HookedTransformer, bos_id: int) -> list[float]:
    """Per layer, the attention score (already divided by √d_head) of ⟨s⟩ at position 0 on itself,
    head 0. Under ReLU attention ⟨s⟩'s weight on itself is ReLU(this score) / 1: unbounded, and its
    gradient is zero while the score is negative. Position 0 sees only itself, so one token is fed."""
    x = torch.tensor([[bos_id]], device=next(model.parameters()).device)
    wanted = {hooks.attn_scores(layer) for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(x, names_filter=lambda n: n in wanted)
    return [float(cache[hooks.attn_scores(l)][0, 0, 0, 0]) for l in range(model.cfg.n_layers)]
