"""The explorer's tools on a prompt: direct logit attribution (its terms sum to the logit) and
activation patching (each batched patch equals the same patch run alone, the exact endpoints),
and the token-level attention view's data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.tolerances import EPS32, rounding
from workbench import hooks
from workbench.errors import ConfigError
from workbench.logit_attribution import direct_logit_attribution
from workbench.models import load_model
from workbench.models.tiny import tiny_model
from workbench.patching import activation_patching, patch_prompts, single_token

PRESETS = ["tiny", "tiny-llama", "tiny-attn-only"]


@pytest.mark.parametrize("preset", PRESETS)
def test_direct_logit_attribution_terms_sum_to_the_logit(preset):
    model = tiny_model(preset, seed=3)
    tokens = torch.randint(0, model.cfg.d_vocab, (14,), generator=torch.Generator().manual_seed(1))
    for pos, tok, against in [(-1, 5, None), (6, 40, None), (9, 5, 77)]:
        d = direct_logit_attribution(model, tokens, pos, tok, against=against)
        terms = torch.cat([d.heads.flatten(), d.attn_bias, d.mlps, torch.tensor([d.embed, d.constant])]).abs()
        assert abs(d.total() - d.logit) <= rounding(float(terms.sum()), 4 * len(terms), eps=EPS32), (preset, pos)
        assert d.heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
        assert d.heads.abs().sum() > 0
    # the difference against another token is the difference of the two attributions (linearity)
    a, b, ab = (direct_logit_attribution(model, tokens, -1, 5), direct_logit_attribution(model, tokens, -1, 77),
                direct_logit_attribution(model, tokens, -1, 5, against=77))
    torch.testing.assert_close(ab.heads, a.heads - b.heads, atol=1e-5, rtol=1e-4)


def test_direct_logit_attribution_on_a_loaded_model_with_the_fast_path_and_a_head_by_hand():
    model = load_model("tiny", device="cpu")
    tokens = torch.randint(0, model.cfg.d_vocab, (10,), generator=torch.Generator().manual_seed(2))
    d = direct_logit_attribution(model, tokens, -1, 11)
    assert abs(d.total() - d.logit) <= 1e-4 * (1 + abs(d.logit))
    # one head by hand: its output at the last position, centred, over the final scale, through w * W_U
    _, cache = model.run_with_cache(tokens[None])
    out = cache[hooks.attn_z(1)][0, -1, 2] @ model.W_O[1, 2]
    out = out - out.mean()
    by_hand = (out / cache[hooks.FINAL_SCALE][0, -1]) @ (model.ln_final.w * model.W_U[:, 11])
    assert abs(float(by_hand) - float(d.heads[1, 2])) <= 1e-5 * (1 + abs(float(by_hand)))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        direct_logit_attribution(model, tokens, -1, 10**7)
    with pytest.raises(ConfigError, match="outside the prompt"):
        direct_logit_attribution(model, tokens, 10, 1)


def _one_patch(model, clean, corrupted, answer, wrong, kind, layer, index):
    """The same patch alone, from the tokens, through run_with_hooks: the independent computation."""
    name = {"resid_pre": hooks.resid_pre, "attn_out": hooks.attn_out, "head": hooks.attn_z}[kind](layer)
    _, cache = model.run_with_cache(clean[None])

    def patch(x, hook):
        x = x.clone()
        if kind == "head":
            x[0, :, index] = cache[name][0, :, index]
        else:
            x[0, index] = cache[name][0, index]
        return x

    logits = model.run_with_hooks(corrupted[None], fwd_hooks=[(name, patch)])
    return float(logits[0, -1, answer] - logits[0, -1, wrong])


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_batched_patching_equals_each_patch_alone(preset):
    model = tiny_model(preset, seed=5)
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(0, model.cfg.d_vocab, (9,), generator=g)
    corrupted = clean.clone()
    corrupted[3] = (corrupted[3] + 17) % model.cfg.d_vocab
    answer, wrong = 12, 30
    for kind in ("resid_pre", "attn_out", "head"):
        r = activation_patching(model, clean, corrupted, answer, wrong, kind)
        span = r.clean_diff - r.corrupted_diff
        n = model.cfg.n_heads if kind == "head" else clean.shape[0]
        assert r.effect.shape == (model.cfg.n_layers, n)
        for layer in range(model.cfg.n_layers):
            for i in range(n):
                alone = (_one_patch(model, clean, corrupted, answer, wrong, kind, layer, i) - r.corrupted_diff) / span
                assert abs(alone - float(r.effect[layer, i])) <= 1e-4 * (1 + abs(alone)) * max(1.0, 1 / abs(span)), (kind, layer, i)
    # the endpoints are exact: patching the embeddings' residual at the changed position gives the clean run,
    # anywhere else the corrupted one
    r = activation_patching(model, clean, corrupted, answer, wrong, "resid_pre")
    assert abs(float(r.effect[0, 3]) - 1) < 1e-4
    others = torch.cat([r.effect[0, :3], r.effect[0, 4:]])
    assert others.abs().max() < 1e-4


def test_patching_refuses_what_it_cannot_compare():
    model = load_model("tiny", device="cpu")
    with pytest.raises(ConfigError, match="same number of tokens"):
        patch_prompts(model, "ab", "abc", "x", "y")
    with pytest.raises(ConfigError, match="same logit difference"):
        patch_prompts(model, "abc", "abc", "x", "y")
    with pytest.raises(ConfigError, match="2 tokens"):
        single_token(model, "xy")
    with pytest.raises(ConfigError, match="unknown patching kind"):
        activation_patching(model, torch.tensor([1, 2]), torch.tensor([1, 3]), 1, 2, "mlp")


def test_attention_view_carries_each_heads_rows_and_the_mean():
    from dashboards.figures.attention_view import AttentionView, attention_view_html
    from workbench.prompt_analysis import analyse_prompt

    model = load_model("tiny", device="cpu")
    a = analyse_prompt(model, "Hello there", lens=False)
    page = AttentionView(a, layer=1)._repr_html_()
    data = json.loads(re.search(r"data = (\{.*?\});\n", page).group(1))
    pat = a.attn[1].float().numpy()
    assert len(data["heads"]) == model.cfg.n_heads and len(data["tokens"]) == a.n_tokens
    q = a.n_tokens - 1
    np.testing.assert_allclose(data["heads"][2][q], pat[2, q, : q + 1] / pat[2, q, : q + 1].sum(), atol=6e-4)
    np.testing.assert_allclose(data["mean"][q], pat[:, q, : q + 1].mean(0), atol=6e-4)
    assert all(len(row) == i + 1 for i, row in enumerate(data["mean"]))  # causal rows only
    # a long prompt shows only the last positions, and says so
    long = attention_view_html(np.full((2, 300, 300), 1 / 300, dtype=np.float32), ["x"] * 300, 0)
    assert "The last 128 of 300 positions are shown" in long
