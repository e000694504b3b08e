"""The fast path (fused attention, no per-call weight copies) against TransformerLens's explicit
forward: logits within relative 1e-4 and every hooked activation within float32 round-off, on
tiny models of each architecture the workbench supports and on the embedded model; the pattern is
computed explicitly wherever a hook asks for it; grouped-query K/V are not repeated; gradients
agree."""

from __future__ import annotations

import pytest
import torch
from tolerances import EPS32

from workbench import hooks
from workbench.models import load_model
from workbench.models.fast_path import explicit_path, fusable, uses_fast_path

LOGIT_RTOL = 1e-4  # the stated bound (float32)
ARCHS = {  # LayerNorm / RMSNorm, MHA / GQA, learned / rotary positions, with and without MLPs
    "tiny": {},
    "tiny-llama": {},
    "tiny-attn-only": {},
    "tiny-llama-mha": {"n_key_value_heads": None},
    "tiny-rotary-ln": {"positional_embedding_type": "rotary", "rotary_dim": 16},
}


def model_of(name: str):
    base = {"tiny-llama-mha": "tiny-llama", "tiny-rotary-ln": "tiny"}.get(name, name)
    return load_model(base, device="cpu", **ARCHS[name])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def both_paths(model, tokens, names=None):
    names = names or (lambda n: not n.endswith(("hook_pattern", "hook_attn_scores")))
    with torch.inference_mode():
        fast, fast_cache = model.run_with_cache(tokens, names_filter=names)
        with explicit_path(model):
            ref, ref_cache = model.run_with_cache(tokens, names_filter=names)
    return fast, fast_cache, ref, ref_cache


@pytest.mark.parametrize("arch", list(ARCHS))
def test_logits_and_every_activation_match_the_explicit_path(arch):
    model = model_of(arch)
    assert uses_fast_path(model)
    tokens = torch.randint(3, 250, (3, 37), generator=torch.Generator().manual_seed(1))
    fast, fc, ref, rc = both_paths(model, tokens)
    assert rel(fast, ref) < LOGIT_RTOL
    assert set(fc) == set(rc) and len(fc) > 20
    worst = max(rel(fc[k], rc[k]) for k in rc)
    # every activation within float32 round-off of a computation of this depth (a few hundred sums)
    assert worst < 256 * EPS32, (arch, worst)


def test_the_pattern_is_explicit_exactly_where_a_hook_asks_for_it():
    model = model_of("tiny-llama")
    attn = model.blocks[1].attn
    tokens = torch.randint(3, 250, (2, 20), generator=torch.Generator().manual_seed(2))
    assert fusable(attn)
    seen = {}
    with model.hooks(fwd_hooks=[(hooks.attn_pattern(1), lambda p, hook: seen.setdefault("p", p.clone()))]):
        assert not fusable(attn) and fusable(model.blocks[0].attn)  # only the hooked layer falls back
        with torch.inference_mode():
            fast = model(tokens)
    with torch.inference_mode(), explicit_path(model):
        ref, cache = model.run_with_cache(tokens, names_filter=hooks.attn_pattern(1))
    assert rel(seen["p"], cache[hooks.attn_pattern(1)]) < 1e-5  # explicit here (from layer 0's fused output)
    assert torch.allclose(seen["p"].sum(-1), torch.ones(1), atol=1e-5)
    assert rel(fast, ref) < LOGIT_RTOL
    assert fusable(attn)  # the hook is gone: fused again


def test_relu_attention_models_keep_their_explicit_patterns(tmp_path):
    from probes.attention_sinks.bigram_backcopy import install_relu_attention

    model = model_of("tiny")
    install_relu_attention(model)
    assert not any(fusable(b.attn) for b in model.blocks)
    tokens = torch.randint(3, 250, (1, 12))
    with torch.inference_mode():
        fast, cache = model.run_with_cache(tokens, names_filter=hooks.attn_pattern(0))
        with explicit_path(model):
            ref, ref_cache = model.run_with_cache(tokens, names_filter=hooks.attn_pattern(0))
    assert torch.equal(cache[hooks.attn_pattern(0)], ref_cache[hooks.attn_pattern(0)]) and rel(fast, ref) < LOGIT_RTOL
    assert not torch.allclose(cache[hooks.attn_pattern(0)].sum(-1), torch.ones(1))  # ReLU rows do not sum to 1


def test_grouped_query_keys_and_values_are_not_repeated(monkeypatch):
    model = model_of("tiny-llama")
    assert model.cfg.n_key_value_heads < model.cfg.n_heads
    calls = []
    real = torch.repeat_interleave
    monkeypatch.setattr(torch, "repeat_interleave", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        model(torch.randint(3, 250, (1, 16)))
    assert calls == []
    with torch.inference_mode(), explicit_path(model):
        model(torch.randint(3, 250, (1, 16)))
    assert calls  # the explicit path does repeat them


def test_gradients_through_the_fast_path_match():
    model = model_of("tiny-llama")
    tokens = torch.randint(3, 250, (2, 24), generator=torch.Generator().manual_seed(3))

    def grads():
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads()
    with explicit_path(model):
        ref = grads()
    assert set(fast) == set(ref)
    assert max(rel(fast[n], ref[n]) for n in ref) < 1e-4


def test_weights_changed_in_place_are_used_at_once():
    """The zero-bias check is cached per weight version: a bias set after a forward pass counts."""
    model = model_of("tiny-llama")
    tokens = torch.randint(3, 250, (1, 10))
    with torch.inference_mode():
        before = model(tokens)
    with torch.no_grad():
        model.blocks[0].mlp.b_out.fill_(0.5)
        model.unembed.b_U.fill_(-0.25)
    with torch.inference_mode():
        after = model(tokens)
        with explicit_path(model):
            ref = model(tokens)
    assert rel(after, ref) < LOGIT_RTOL and not torch.allclose(after, before)


@pytest.mark.slow
def test_the_embedded_model_matches_at_a_long_context(smollm2):
    tokens = torch.randint(100, 40000, (1, 512), generator=torch.Generator().manual_seed(4))
    names = lambda n: n.endswith(("hook_resid_post", "hook_z", "hook_rot_q", "hook_post", "ln_final.hook_normalized"))  # noqa: E731
    fast, fc, ref, rc = both_paths(smollm2, tokens, names)
    assert rel(fast, ref) < LOGIT_RTOL
    assert max(rel(fc[k], rc[k]) for k in rc) < 1e-4


@pytest.mark.parametrize("window,n_pos", [(4, 32), (256, 300), (300, 300), (1, 10)])
def test_local_attention_layers_keep_their_window_on_the_fast_path(window, n_pos):
    """Sliding-window layers (GPT-Neo, Mistral, Phi-3, Gemma-2/3): the fused call gets the band
    mask. Before, the fast path ignored the window: 1.11 relative at (4, 32), 0.11 at (256, 300)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from workbench.models.fast_path import install_fast_path

    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=512, d_vocab=100, act_fn="gelu",
                                  attn_types=["local", "global"], window_size=window, use_local_attn=True, seed=0)
    model = install_fast_path(HookedTransformer(cfg).eval())
    tokens = torch.randint(0, 100, (2, n_pos), generator=torch.Generator().manual_seed(0))
    fast, _, ref, _ = both_paths(model, tokens, names=lambda n: n.endswith("hook_z"))
    assert rel(fast, ref) < LOGIT_RTOL


def test_half_precision_on_the_cpu_multiplies_by_the_transposed_copy(monkeypatch):
    """On a CPU, `x @ W` in bfloat16 with W stored [in, out] falls to a slow kernel (42 s against 0.75 s
    for SmolLM2's unembedding on an AVX2 CPU), so there the gated MLP and the unembedding take
    TransformerLens's own forward (a transposed copy, then `F.linear`); float32 keeps the copy-free one."""
    from transformer_lens.components.mlps.gated_mlp import GatedMLP
    from transformer_lens.components.unembed import Unembed

    calls = {"mlp": 0, "unembed": 0}
    mlp_forward, unembed_forward = GatedMLP.forward, Unembed.forward

    def counting(kind, fn):
        def wrapped(self, x):
            calls[kind] += 1
            return fn(self, x)
        return wrapped

    monkeypatch.setattr(GatedMLP, "forward", counting("mlp", mlp_forward))
    monkeypatch.setattr(Unembed, "forward", counting("unembed", unembed_forward))
    tokens = torch.randint(3, 250, (2, 9), generator=torch.Generator().manual_seed(2))
    for dtype, expect in ((torch.float32, 0), (torch.bfloat16, 1)):
        calls.update(mlp=0, unembed=0)
        model = load_model("tiny-llama", device="cpu", dtype=dtype)
        with torch.inference_mode():
            model(tokens)
        assert calls == {"mlp": expect * model.cfg.n_layers, "unembed": expect}, (dtype, calls)
