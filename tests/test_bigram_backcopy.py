"""The Bigram-Backcopy task: generator rules, exact optimum, paired oracle risk, model config, ReLU
attention, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tolerances import rounding

from probes.attention_sinks.bigram_backcopy import (
    BBTask,
    bb_model,
    bb_recipe,
    bb_risks,
    install_relu_attention,
    load_bb_task,
    relu_attention_pattern,
    task_of_model,
    train_bb,
)
from workbench.errors import ConfigError

TEXTS = ["the cat sat on the mat. ", "a tea set; eat at ten! ", "stone tests tent"]


@pytest.fixture(scope="module")
def small_task() -> BBTask:
    return BBTask.from_texts(TEXTS, "unit-texts", n_triggers=2)


@pytest.fixture(scope="module")
def brown_task() -> BBTask:
    return load_bb_task("brown", 3)


def test_counts_match_brute_force(small_task):
    V = small_task.n_chars
    assert small_task.chars == tuple(sorted(set("".join(TEXTS))))
    index = {c: i for i, c in enumerate(small_task.chars)}
    bigram = np.zeros((V, V), dtype=np.int64)
    for t in TEXTS:
        for a, b in zip(t, t[1:]):
            bigram[index[a], index[b]] += 1
    assert (small_task.bigram_counts == bigram).all()
    assert small_task.unigram_counts.sum() == sum(len(t) for t in TEXTS)
    # triggers are the most frequent characters: ' ' and 't' here
    assert {small_task.chars[i] for i in small_task.triggers} == {" ", "t"}


def test_generator_obeys_backcopy_rule_exactly(brown_task):
    x = brown_task.sample(256, 256, seed=3).numpy()
    trig = brown_task.is_trigger
    assert x.shape == (256, 257) and (x[:, 0] == brown_task.bos_id).all()
    assert (x[:, 1:] < brown_task.n_chars).all()  # no BOS / delimiter after position 0
    assert not trig[x[:, 1]].any()  # the first character is never a trigger
    prev_is_trigger = trig[x[:, 1:-1]]  # x[:, t] for t = 1..255
    copied = x[:, 2:] == x[:, :-2]
    assert prev_is_trigger.sum() > 10_000
    assert copied[prev_is_trigger].all()  # after a trigger: exactly the token before it
    # after a non-trigger: a transition with non-zero probability
    P = brown_task.transition
    a, b = x[:, 1:-1][~prev_is_trigger], x[:, 2:][~prev_is_trigger]
    assert (P[a, b] > 0).all()


def test_generator_is_seeded_and_bigram_frequencies_match(small_task):
    a, b = small_task.sample(64, 64, seed=7), small_task.sample(64, 64, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, small_task.sample(64, 64, seed=8))
    x = small_task.sample(4000, 64, seed=0).numpy()
    trig = small_task.is_trigger
    prev, nxt = x[:, 1:-1].ravel(), x[:, 2:].ravel()
    keep = ~trig[prev]
    V = small_task.n_chars
    emp = np.zeros((V, V))
    np.add.at(emp, (prev[keep], nxt[keep]), 1)
    rows = emp.sum(1)
    busy = rows > 2000
    emp = emp[busy] / rows[busy, None]
    assert np.abs(emp - small_task.transition[busy]).max() < 0.04


def test_bigram_optimum_matches_monte_carlo(small_task):
    exact = small_task.bigram_optimum(32)
    H = small_task.row_entropies()
    x = small_task.sample(20_000, 32, seed=1)
    _, bigram = small_task.position_masks(x[:, :-1])
    mc = H[x[:, :-1][bigram].numpy()].mean()
    assert abs(exact - mc) < 0.01
    # and it is the exact conditional entropy: a deterministic chain has optimum 0
    det = BBTask.from_texts(["abcabcabcxyzxyz"], "det", n_triggers=1)
    assert det.bigram_optimum(16) < 0.7 * small_task.bigram_optimum(16)


class _TransitionModel(torch.nn.Module):
    """A stand-in "model" whose logits are exactly log P[x_t] (the true transition row) at every
    character input, and uniform elsewhere."""

    def __init__(self, task: BBTask, scale: float = 1.0):
        super().__init__()
        V = task.n_chars
        logits = torch.zeros(task.d_vocab, task.d_vocab, dtype=torch.float64)
        P = torch.from_numpy(task.transition)
        logits[:V, :V] = torch.where(P > 0, P.log(), torch.tensor(-1e30, dtype=torch.float64)) * scale
        logits[:V, V:] = -1e30
        self.table = torch.nn.Parameter(logits, requires_grad=False)

    def forward(self, inputs: torch.Tensor, return_type: str = "logits") -> torch.Tensor:
        return self.table[inputs]


def test_oracle_bigram_risk_matches_brute_force_and_pairs_to_zero(small_task):
    import math

    data = small_task.sample(6, 40, seed=3)
    P, trig = small_task.transition, small_task.is_trigger
    total, n = 0.0, 0
    for row in data.tolist():
        for t in range(len(row) - 1):  # input position t predicts row[t + 1]
            a, b = row[t], row[t + 1]
            if a < small_task.n_chars and not trig[a]:
                total -= math.log(P[a, b])
                n += 1
    assert n > 50
    oracle = small_task.oracle_bigram_risk(data)
    assert oracle == pytest.approx(total / n, rel=rounding(1.0, n_terms=n))  # two summation orders of n logs
    per = small_task.oracle_bigram_ce(data)
    _, bigram = small_task.position_masks(data[:, :-1])
    assert per[bigram].isfinite().all() and per[~bigram].isnan().all()

    # a model that outputs the transition matrix's log-probs has exactly the oracle risk: paired gap 0
    r = bb_risks(_TransitionModel(small_task), small_task, n_seqs=6, seed=3, seq_len=40)
    assert r["bigram_oracle_risk"] == pytest.approx(oracle, rel=rounding(1.0, n_terms=n))
    assert r["bigram_risk"] == pytest.approx(oracle, rel=1e-9)
    assert abs(r["bigram_paired_gap"]) < 1e-9
    # a tempered (worse) model has a positive paired gap
    worse = bb_risks(_TransitionModel(small_task, scale=0.5), small_task, n_seqs=6, seed=3, seq_len=40)
    assert worse["bigram_oracle_risk"] == r["bigram_oracle_risk"] and worse["bigram_paired_gap"] > 0.01
    # the batch oracle risk is noisy around the population optimum, its expectation
    small = [small_task.oracle_bigram_risk(small_task.sample(4, 40, seed=s)) for s in range(8)]
    assert max(small) - min(small) > 0.01
    big = small_task.oracle_bigram_risk(small_task.sample(10_000, 40, seed=11))
    assert big == pytest.approx(small_task.bigram_optimum(40), abs=0.01)


def test_model_config_matches_paper(brown_task):
    m = bb_model(brown_task, n_layers=3, seed=0)
    cfg = m.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (3, 1, 256, 256, 1024)
    assert cfg.act_fn == "relu" and cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard"
    assert cfg.d_vocab == cfg.d_vocab_out == brown_task.n_chars + 2
    assert m.W_E.std().item() == pytest.approx(1.0, abs=0.03)
    assert m.unembed.W_U.data_ptr() != m.W_E.data_ptr()
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    for n, p in m.named_parameters():
        if n.endswith((".b_Q", ".b_K", ".b_V", ".b_O", ".b_in", ".b_out", "b_U")):
            assert n in frozen and p.abs().max() == 0
    assert len(frozen) == 3 * 6 + 1
    # LayerNorms keep a trainable bias (nn.LayerNorm in the paper's code); TransformerLens's init
    assert {"blocks.0.ln1.b", "blocks.2.ln2.b", "ln_final.b"}.isdisjoint(frozen)
    assert m.W_Q.std().item() == pytest.approx(0.8 / 256 ** 0.5, rel=0.05)
    # the earlier variant freezes the LayerNorm biases at zero as well
    old = bb_model(brown_task, n_layers=3, seed=0, layernorm_bias=False)
    old_frozen = {n for n, p in old.named_parameters() if not p.requires_grad}
    assert len(old_frozen) == 3 * 8 + 2 and "ln_final.b" in old_frozen
    # init="torch": the paper code's nn.Linear default, U(±1/sqrt(fan_in))
    t = bb_model(brown_task, n_layers=3, seed=0, init="torch")
    for name, fan_in in [("blocks.0.attn.W_Q", 256), ("blocks.1.attn.W_O", 256), ("blocks.2.mlp.W_in", 256),
                         ("blocks.2.mlp.W_out", 1024), ("unembed.W_U", 256)]:
        w = dict(t.named_parameters())[name].detach()
        bound = fan_in ** -0.5
        assert 0.99 * bound < w.abs().max() <= bound
        assert w.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.05)  # a uniform's std
    assert t.W_E.std().item() == pytest.approx(1.0, abs=0.03)  # embeddings stay N(0, 1)
    with pytest.raises(ConfigError, match="unknown BB init 'xavier'"):
        bb_model(brown_task, init="xavier")


def test_relu_attention_pattern_masks_and_scales():
    scores = torch.randn(2, 1, 5, 5)
    causal = torch.ones(5, 5).tril().bool()
    scores = scores.masked_fill(~causal, float("-inf"))
    w = relu_attention_pattern(scores)
    assert (w[..., ~causal] == 0).all()
    i = torch.arange(1, 6, dtype=torch.float32)[:, None]
    expected = torch.where(causal, scores.clamp(min=0), torch.zeros(())) / i
    assert torch.allclose(w, expected)


def test_relu_attention_hook_zero_on_masked_entries(brown_task):
    m = bb_model(brown_task, n_layers=1, seed=0)
    install_relu_attention(m)
    x = brown_task.sample(2, 32, seed=0)[:, :-1]
    _, cache = m.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_pattern", "hook_attn_scores")))
    pat, sc = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_attn_scores"]
    upper = ~torch.ones(32, 32).tril().bool()
    assert (pat[..., upper] == 0).all()
    assert torch.allclose(pat, relu_attention_pattern(sc))
    assert not torch.allclose(pat.sum(-1), torch.ones(2, 1, 32))  # not a softmax any more
    m.reset_hooks()  # permanent hooks stay
    _, cache2 = m.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
    assert torch.allclose(cache2["blocks.0.attn.hook_pattern"], pat)


def test_encode_rejects_unknown_characters(small_task):
    assert small_task.encode("cat").tolist() == [small_task.bos_id] + [small_task.chars.index(c) for c in "cat"]
    with pytest.raises(ConfigError, match="not in this BB vocabulary"):
        small_task.encode("cat\u00e9")
    with pytest.raises(ConfigError):
        BBTask.from_texts(TEXTS, "x", n_triggers=0)


def test_fifty_step_training_lowers_loss(tmp_path, monkeypatch, brown_task):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr("probes.attention_sinks.bigram_backcopy.training.load_bb_task", lambda corpus, k, charset="all": brown_task)
    recipe = bb_recipe("adam", d_model=64, batch_size=8, seq_len=64, steps=50, n_checkpoints=4, lr=3e-3)
    out = train_bb(recipe, progress=False)
    import pandas as pd

    log = pd.read_csv(out / "train_log.csv")
    first, last = log.iloc[0], log.iloc[-5:]
    assert last["loss"].mean() < first["loss"] - 0.5
    assert {"backcopy_risk", "bigram_risk"} <= set(log.columns)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts[0] == "step_000000" and ckpts[-1] == "step_000050"
    from probes.attention_sinks.bigram_backcopy import bb_train_time

    timing = bb_train_time(recipe)
    assert timing["steps"] == 50 and timing["seconds_per_step"] > 0
    assert train_bb(recipe, progress=False) == out  # cached: returns at once, no retraining
    assert bb_train_time(recipe)["steps"] == 50
    from workbench.models import load_model

    model = load_model(str(out / "checkpoints" / "step_000050"))
    assert task_of_model(model) is brown_task
    r = bb_risks(model, brown_task, n_seqs=16, seq_len=64)
    assert r["loss"] < float(first["loss"])


def test_relu_variant_checkpoint_reloads_with_relu_attention(tmp_path, monkeypatch, brown_task):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr("probes.attention_sinks.bigram_backcopy.training.load_bb_task", lambda corpus, k, charset="all": brown_task)
    recipe = bb_recipe("relu", d_model=32, batch_size=4, seq_len=32, steps=3, n_checkpoints=2)
    out = train_bb(recipe, progress=False)
    from workbench.models import load_model

    model = load_model(str(out / "checkpoints" / "step_000003"))
    assert getattr(model, "workbench_attention", "softmax") == "relu"
    _, cache = model.run_with_cache(brown_task.sample(1, 16, 0)[:, :-1], names_filter=lambda n: "attn.hook_" in n)
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"], relu_attention_pattern(cache["blocks.0.attn.hook_attn_scores"]))


def test_letters_charset_counts_and_keys():
    """The "letters" charset: lowercase a-z words joined by single spaces, counted like any text;
    "all" recipes keep the keys they had before the option existed; unknown charsets are refused."""
    from probes.attention_sinks.bigram_backcopy import CHARSETS, bb_recipe

    texts = ["Hello, World!  It's 9 a.m.", "Zebra-crossing\nOK"]
    task = BBTask.from_texts(texts, "toy", n_triggers=1, charset="letters")
    norm = ["hello world it s a m", "zebra crossing ok"]
    assert [CHARSETS["letters"](t) for t in texts] == norm
    assert task.chars == tuple(sorted(set("".join(norm))))
    index = {c: i for i, c in enumerate(task.chars)}
    pairs = np.zeros((task.n_chars, task.n_chars), dtype=np.int64)
    for t in norm:
        for a, b in zip(t, t[1:]):
            pairs[index[a], index[b]] += 1
    assert (task.bigram_counts == pairs).all() and task.unigram_counts.sum() == sum(map(len, norm))
    assert task.triggers == (index[" "],)
    assert BBTask.from_json(task.to_json()).fingerprint == task.fingerprint
    assert BBTask.from_texts(texts, "toy", 1).fingerprint != task.fingerprint
    # the key of an "all" recipe does not mention the charset (stored models stay valid)
    # ... nor do recipes of the earlier variant (LayerNorm biases frozen, TransformerLens init)
    assert bb_recipe("adam", steps=1000, batch_size=8, lr=1e-3, layernorm_bias=False).key == "4b47067cc45c"
    assert bb_recipe("adam", steps=1000, batch_size=8, lr=1e-3).key != "4b47067cc45c"
    assert bb_recipe("adam", init="torch").key != bb_recipe("adam").key
    assert bb_recipe("adam", charset="letters").key != bb_recipe("adam").key
    with pytest.raises(ConfigError, match="unknown BB charset 'greek'"):
        bb_recipe("adam", charset="greek")
    with pytest.raises(ConfigError, match="unknown BB charset"):
        BBTask.from_texts(texts, "toy", 1, charset="greek")


def test_bos_self_scores_match_hand_computation_and_pick_an_inactive_seed(monkeypatch, brown_task):
    """The <s> self-score is LN1(e_<s> + p_0) W_Q . LN1(e_<s> + p_0) W_K / sqrt(d_head) per layer; under
    ReLU attention <s>'s weight on itself is ReLU of it; the seed search returns the first seed whose
    block-0 score is negative."""
    from probes.attention_sinks.bigram_backcopy import (
        bos_self_scores,
        relu_inactive_seed,
    )

    m = bb_model(brown_task, n_layers=2, d_model=32, seed=0)
    x = m.embed.W_E[brown_task.bos_id] + m.pos_embed.W_pos[0]
    ln = m.blocks[0].ln1
    h = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + m.cfg.eps) * ln.w + ln.b
    q, k = h @ m.blocks[0].attn.W_Q[0], h @ m.blocks[0].attn.W_K[0]
    scores = bos_self_scores(m, brown_task.bos_id)
    assert len(scores) == 2 and abs(scores[0] - float(q @ k) / 32 ** 0.5) < 1e-4

    install_relu_attention(m)
    _, cache = m.run_with_cache(brown_task.sample(1, 8, 0)[:, :-1], names_filter=lambda n: n.endswith("hook_pattern"))
    assert abs(float(cache["blocks.0.attn.hook_pattern"][0, 0, 0, 0]) - max(scores[0], 0.0)) < 1e-4

    monkeypatch.setattr("probes.attention_sinks.bigram_backcopy.recipes.load_bb_task", lambda corpus, k, charset="all": brown_task)
    recipe = bb_recipe("relu", n_layers=1, d_model=32)
    seed = relu_inactive_seed(recipe, start=0)
    first = [bos_self_scores(install_relu_attention(bb_model(brown_task, 1, 32, s)), brown_task.bos_id)[0] for s in range(seed + 1)]
    assert first[-1] < 0 and all(v >= 0 for v in first[:-1])
