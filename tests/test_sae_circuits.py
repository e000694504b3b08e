"""SAE circuit discovery: the SAE, the scores against hand and brute-force computation, the
patching baseline against TransformerLens's patching and a planted circuit, and the probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformer_lens import HookedTransformer, HookedTransformerConfig

from probes.sae_circuits import SAECircuitsConfig, SAECircuitsResult
from probes.sae_circuits.baselines import KNOWN_CIRCUITS, answers_of, head_patching
from probes.sae_circuits.discrete_sae import (
    SAESettings,
    edge_scores,
    node_scores,
    sae_codes,
    train_sae,
    unique_cooccurrence,
)
from probes.sae_circuits.probe import run
from probes.sae_circuits.tasks.contrast import ContrastPrompts, set_logit_diff
from workbench import hooks
from workbench.config import config_from_dict
from workbench.errors import ConfigError

# ----------------------------------------------------------------------------- the SAE


def test_sae_codes_deterministic_under_seed():
    acts = torch.randn(30, 6, 16, generator=torch.Generator().manual_seed(0))
    s = SAESettings(n_features=12, l1=0.02, epochs=60, n_train=10)
    a, idx_a, _ = train_sae(acts, s, seed=3)
    b, idx_b, _ = train_sae(acts, s, seed=3)
    c, idx_c, _ = train_sae(acts, s, seed=4)
    assert torch.equal(idx_a, idx_b) and torch.equal(sae_codes(a, acts), sae_codes(b, acts))
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)
    assert not torch.equal(a.W_enc, c.W_enc)
    # the constraints: unit-norm encoder rows and decoder columns; the tied bias moved from 0
    assert torch.allclose(a.W_enc.norm(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(a.W_dec.norm(dim=0), torch.ones(12), atol=1e-5)
    assert a.b.abs().sum() > 0


def test_encoder_and_gradients_follow_the_definition():
    """encode computes ReLU(W_enc (x - b)) (written as W_enc x - W_enc b) with the same gradients."""
    import torch.nn.functional as F

    from probes.sae_circuits.discrete_sae import DiscreteSAE, sae_loss

    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 16, generator=g)
    sae = DiscreteSAE(16, 10, g)
    with torch.no_grad():
        sae.b.copy_(0.5 * torch.randn(16, generator=g))
    f, x_hat = sae(x)
    sae_loss(x, f, x_hat, 0.05).backward()
    got = [p.grad.clone() for p in (sae.W_enc, sae.W_dec, sae.b)]
    for p in sae.parameters():
        p.grad = None
    f_ref = F.relu((x - sae.b) @ sae.W_enc.T)
    assert torch.allclose(f, f_ref, atol=1e-6) and (f_ref > 0).any() and (f_ref == 0).any()
    sae_loss(x, f_ref, f_ref @ sae.W_dec.T + sae.b, 0.05).backward()
    for a, b in zip(got, (sae.W_enc.grad, sae.W_dec.grad, sae.b.grad)):
        assert torch.allclose(a, b, atol=1e-6)


def test_all_zero_rows_get_code_zero():
    acts = torch.randn(4, 3, 8)
    sae, _, _ = train_sae(acts, SAESettings(n_features=5, epochs=1, n_train=2), seed=0)
    with torch.no_grad():
        sae.b.copy_(acts[0, 0] + 100 * sae.W_enc.sum(0))  # push (x - b) far along -W_enc: every feature off
    assert sae.encode(acts[:1, :1]).max() == 0
    assert sae_codes(sae, acts)[0, 0] == 0


# ----------------------------------------------------------------------------- scores

# 3 positives then 3 negatives, 3 heads
HAND_CODES = torch.tensor([
    [1, 0, 2], [1, 3, 6], [4, 3, 2],
    [1, 0, 5], [2, 0, 5], [2, 3, 5],
])
HAND_POS = torch.tensor([True, True, True, False, False, False])


def test_node_scores_hand_table():
    # head 0: {1,4} vs {1,2} -> {4}; head 1: {0,3} vs {0,3} -> none; head 2: {2,6} vs {5} -> {2,6}
    assert node_scores(HAND_CODES, HAND_POS, n_codes=7).tolist() == [1, 0, 2]


def test_unique_cooccurrence_hand_table():
    # (0,1): positives {(1,0),(1,3),(4,3)}, negatives {(1,0),(2,0),(2,3)} -> 2
    # (0,2): {(1,2),(1,6),(4,2)} vs {(1,5),(2,5)} -> 3;  (1,2): {(0,2),(3,6),(3,2)} vs {(0,5),(3,5)} -> 3
    U = unique_cooccurrence(HAND_CODES, HAND_POS, n_codes=7)
    assert U.tolist() == [[0, 2, 3], [2, 0, 3], [3, 3, 0]]


def test_edge_scores_hand_matrix():
    U = torch.zeros(5, 5, dtype=torch.long)
    for (a, b), v in {(0, 1): 9, (1, 2): 8, (3, 4): 7, (0, 4): 6, (2, 3): 1}.items():
        U[a, b] = U[b, a] = v
    # 25 // 2 = 12 entries = the 6 ordered pairs of (0,1), (1,2), (3,4)
    for seed in range(3):
        assert edge_scores(U, seed).tolist() == [2, 4, 2, 2, 2]


def test_edge_scores_ties_are_seeded():
    U = torch.ones(6, 6, dtype=torch.long) - torch.eye(6, dtype=torch.long)  # every pair tied
    a, b = edge_scores(U, 1), edge_scores(U, 1)
    assert torch.equal(a, b) and int(a.sum()) == 36 // 2


def brute_force(codes: np.ndarray, is_pos: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's dense construction: co-occurrence tensors C+/- of shape (heads, heads, codes, codes)."""
    E, H = codes.shape
    C = {True: np.zeros((H, H, n_codes, n_codes)), False: np.zeros((H, H, n_codes, n_codes))}
    for e in range(E):
        for h1 in range(H):
            for h2 in range(H):
                if h1 != h2:
                    C[bool(is_pos[e])][h1, h2, codes[e, h1], codes[e, h2]] += 1
    U = ((C[True] > 0) & ~(C[False] > 0)).sum(axis=(2, 3))
    node = np.array([len(set(codes[is_pos, h]) - set(codes[~is_pos, h])) for h in range(H)])
    return U, node


def test_scores_match_dense_brute_force():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, size=(24, 7))
    is_pos = np.arange(24) < 12
    U_ref, node_ref = brute_force(codes, is_pos, 6)
    c, p = torch.from_numpy(codes), torch.from_numpy(is_pos)
    assert np.array_equal(unique_cooccurrence(c, p, 6).numpy(), U_ref)
    assert np.array_equal(node_scores(c, p, 6).numpy(), node_ref)


# ----------------------------------------------------------------------------- the patching baseline


def test_patching_matches_transformer_lens(tiny_llama):
    """Our layer-skipping, head-batched patching equals TL's get_act_patch_attn_head_out_all_pos (GQA model)."""
    import transformer_lens.patching as tl_patching

    from probes.sae_circuits.tasks.greater_than import greater_than_prompts
    from workbench.models import set_numerics

    model = set_numerics(tiny_llama, "processed")
    prompts = greater_than_prompts(model.tokenizer, n=10, seed=1)
    out = head_patching(model, prompts, batch_size=4, progress=False)
    pos, neg, last = prompts.tokens("positive"), prompts.tokens("negative"), prompts.lengths() - 1
    a = answers_of(prompts, model)

    def metric(logits):
        return set_logit_diff(logits[torch.arange(len(last)), last], a.right_ids, a.right_mask, a.wrong_ids, a.wrong_mask).mean()

    with torch.no_grad():
        _, neg_cache = model.run_with_cache(neg)
        clean = metric(model(pos))
        ref = tl_patching.get_act_patch_attn_head_out_all_pos(model, pos, neg_cache, metric)
    assert out.effect.shape == (2, 4)
    assert torch.allclose(out.effect, ref - clean, atol=1e-4)
    assert out.positive_metric.mean() == pytest.approx(float(clean), abs=1e-4)


def planted_model() -> HookedTransformer:
    """Attention-only, 2 layers x 2 heads; head L1H0 attends from every position to position 1 and
    copies the token there to the output (tokens 1-5); every other weight is small noise."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=24, n_heads=2, d_head=8, n_ctx=8, d_vocab=12, attn_only=True,
                                  normalization_type=None, act_fn="relu", seed=0)
    m = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
        for name, p in m.named_parameters():
            if name.startswith("blocks.") and ".b_" in name:
                p.zero_()
        m.embed.W_E.copy_(torch.eye(24)[:12])
        m.pos_embed.W_pos.copy_(torch.eye(24)[12:20])
        m.unembed.W_U.copy_(torch.eye(24)[:, :12])
        m.unembed.b_U.zero_()
        a = m.blocks[1].attn
        a.W_Q[0].zero_()
        a.b_Q[0].zero_()
        a.b_Q[0, 0] = 10.0
        a.W_K[0].zero_()
        a.W_K[0, 12 + 1, 0] = 10.0  # position 1 is the only key the query matches
        a.W_V[0].zero_()
        a.W_O[0].zero_()
        for t in range(1, 6):
            a.W_V[0, t, t - 1] = 1.0
            a.W_O[0, t - 1, t] = 5.0
    return m.eval()


def planted_prompts(n: int = 20) -> ContrastPrompts:
    rng = np.random.default_rng(0)
    pos, neg, right, wrong = [], [], [], []
    for _ in range(n):
        a, b, c = rng.choice(np.arange(1, 6), 3, replace=False).tolist()
        fill = rng.integers(6, 11, size=4).tolist()
        pos.append([0, a] + fill)
        neg.append([0, c] + fill)
        right.append([a])
        wrong.append([b])
    return ContrastPrompts("planted", pos, neg, right, wrong)


@pytest.mark.parametrize("method", ["patching", "mean-ablation", "attribution"])
def test_baseline_recovers_planted_head(method):
    out = head_patching(planted_model(), planted_prompts(), method=method, batch_size=8, progress=False)
    assert out.total_effect > 3  # the copying head gives a clear positive-negative gap
    share = out.share()
    assert share[1, 0] > 0.8
    circuit = out.circuit(threshold=0.1)
    assert circuit.sum() == 1 and circuit[1, 0]


def test_attribution_is_exact_where_the_path_is_linear():
    """Last-layer heads of an attention-only model without norms reach the metric linearly, so the
    first-order estimate equals the patched effect there; the weights get no gradients."""
    model, prompts = planted_model(), planted_prompts()
    exact = head_patching(model, prompts, "patching", batch_size=8, progress=False)
    approx = head_patching(model, prompts, "attribution", batch_size=8, progress=False)
    assert torch.allclose(approx.effect[1], exact.effect[1], atol=1e-4)
    assert torch.equal(approx.positive_metric, exact.positive_metric)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- the probe


SMALL = dict(task="greater-than", n_prompts=16, n_seeds=2, epochs=40, n_features=16, baseline_prompts=8,
             batch_size=8, threshold=0.1)


@pytest.fixture(scope="module")
def small_result():
    from workbench.models import load_model

    model = load_model("tiny-llama", numerics="processed")
    return model, run(model, None, config_from_dict(SAECircuitsConfig, SMALL))


def test_probe_scores_consistent_with_codes(small_result):
    model, r = small_result
    H = model.cfg.n_layers * model.cfg.n_heads
    n = SMALL["n_prompts"]
    assert r.codes.shape == (2, 2 * n, H) and r.codes.dtype == torch.int16
    is_pos = torch.arange(2 * n) < n
    truth = r.heads["ground_truth"].to_numpy()
    for s in range(2):
        c = r.codes[s].long()
        node = node_scores(c, is_pos, SMALL["n_features"])
        assert torch.equal(node.float(), r.node_scores[s])
        assert torch.equal(edge_scores(unique_cooccurrence(c, is_pos, SMALL["n_features"]), s).float(), r.edge_scores[s])
        if 0 < truth.sum() < H:
            assert r.trials.loc[s, "node_auc"] == pytest.approx(roc_auc_score(truth, node.numpy()))
    # ground truth = the baseline's heads above the threshold share
    share = r.heads["baseline_share"].to_numpy()
    assert np.array_equal(truth, np.abs(share) > SMALL["threshold"])
    assert r.stats["ground_truth_source"].startswith("baseline:patching")
    assert r.stats["circuit_size"] == int(truth.sum())
    # attribution patching ran on the same pairs, as a cheap second baseline
    assert r.heads["attribution_share"].notna().all() and r.stats["attribution_s"] > 0
    # task metrics: positives vs negatives, recorded per prompt
    assert r.metrics["positive"].shape == (n,) and r.metrics["baseline_positive"].shape == (SMALL["baseline_prompts"],)
    assert r.stats["accuracy"] == pytest.approx(float((r.metrics["positive"] > 0).float().mean()))
    # graph: heads as nodes, U as edge weights
    for a, b, d in r.graph.edges(data=True):
        ia, ib = r.graph.nodes[a]["index"], r.graph.nodes[b]["index"]
        assert d["weight"] == pytest.approx(float(r.cooccurrence[ia, ib])) and d["weight"] > 0


def test_head_outputs_equal_cache_results(small_result):
    """Position-averaged z . W_O equals TL's own per-head results (use_attn_result) averaged by hand."""
    from probes.sae_circuits import head_outputs

    model, _ = small_result
    from probes.sae_circuits.tasks.greater_than import greater_than_prompts

    prompts = greater_than_prompts(model.tokenizer, n=3, seed=5)
    acts, _, _ = head_outputs(model, prompts, batch_size=2, progress=False)
    model.set_use_attn_result(True)
    try:
        for i, seq in enumerate(prompts.positive + prompts.negative):
            _, cache = model.run_with_cache(torch.tensor([seq]))
            ref = torch.stack([cache[f"blocks.{l}.attn.hook_result"][0].mean(0) for l in range(model.cfg.n_layers)])
            assert torch.allclose(acts[i], ref.reshape(-1, model.cfg.d_model), atol=1e-5)
    finally:
        model.set_use_attn_result(False)


def test_result_save_load_roundtrip(small_result, tmp_path):
    _, r = small_result
    r.save(tmp_path / "r")
    back = SAECircuitsResult.load(tmp_path / "r")
    assert torch.equal(back.codes, r.codes) and torch.equal(back.cooccurrence, r.cooccurrence)
    assert back.heads.equals(r.heads) and back.trials.equals(r.trials)
    assert set(back.metrics) == set(r.metrics)
    assert sorted(back.graph.edges(data=True)) == sorted(r.graph.edges(data=True))
    assert back.stats == r.stats and back.summary() == r.summary()


def test_published_circuit_used_for_named_model():
    """A model named gpt2 gets the published greater-than circuit as ground truth."""
    from workbench.models import load_model

    model = load_model("tiny", numerics="processed", n_layers=12, n_heads=12, d_model=48, d_head=4, model_name="gpt2")
    cfg = dict(SMALL, baseline="none", n_seeds=1, n_prompts=8)
    r = run(model, None, config_from_dict(SAECircuitsConfig, cfg))
    want = {f"L{l}H{h}" for l, h in KNOWN_CIRCUITS[("gpt2", "greater-than")]}
    assert set(r.stats["circuit"]) == want and r.stats["ground_truth_source"] == "published"


def test_runner_stores_and_reuses(store):
    from workbench.models import load_model
    from workbench.runner import run_probe

    model = load_model("tiny-llama", numerics="processed")
    cfg = dict(SMALL, n_seeds=1, n_prompts=8, baseline_prompts=4)
    first = run_probe("sae-circuits", model, None, cfg, store=store)
    second = run_probe("sae-circuits", model, None, cfg, store=store)
    assert not first.reused and second.reused
    assert torch.equal(second.result.codes, first.result.codes)
    with pytest.raises(ConfigError, match="processed"):
        run_probe("sae-circuits", load_model("tiny-llama"), None, cfg, store=store)


@pytest.mark.parametrize("bad, match", [
    ({"task": "nope"}, "task must be one of"),
    ({"threshold": 1.5}, "threshold"),
    ({"n_train": 0}, "n_train"),
    ({"ground_truth": "baseline", "baseline": "none"}, "needs a baseline"),
])
def test_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(SAECircuitsConfig, bad)


def test_known_ground_truth_missing_is_an_error(tiny_llama):
    from workbench.models import set_numerics

    model = set_numerics(tiny_llama, "processed")
    with pytest.raises(ConfigError, match="no published circuit"):
        run(model, None, config_from_dict(SAECircuitsConfig, dict(SMALL, ground_truth="known")))
    with pytest.raises(ConfigError, match="no ground truth"):
        run(model, None, config_from_dict(SAECircuitsConfig, dict(SMALL, baseline="none")))


@pytest.mark.slow
def test_smollm2_ioi_head_outputs_and_metric():
    """On the embedded model: 270 head outputs per prompt (GQA: 9 query heads x 30 layers) and IOI solved."""
    from probes.sae_circuits import head_outputs, make_task
    from workbench.models import load_model

    model = load_model("smollm2-135m", numerics="processed")
    prompts = make_task(model, "ioi", 6, 0)
    acts, pos, neg = head_outputs(model, prompts, batch_size=6, progress=False)
    assert acts.shape == (12, 270, 576)
    assert (pos > 0).float().mean() >= 0.5 and pos.mean() > neg.mean()


# ----------------------------------------------------------------------------- Bigram-Backcopy


@pytest.fixture(scope="module")
def bb_task():
    from probes.attention_sinks.bigram_backcopy import load_bb_task

    return load_bb_task("brown")


def test_backcopy_prompts(bb_task):
    from probes.sae_circuits.tasks.backcopy_contrast import backcopy_prompts

    c = backcopy_prompts(bb_task, n=40, seed=0, min_len=8, max_len=20)
    trig = bb_task.is_trigger
    for p, q, r, w in zip(c.positive, c.negative, c.right, c.wrong):
        assert len(p) == len(q) and 9 <= len(p) <= 21 and p[0] == q[0] == bb_task.bos_id
        assert trig[p[-1]] and r == [p[-2]] and not trig[r[0]]  # ends on a trigger; the answer is the token before
        assert not trig[q].any()  # the negative has no backcopy position
        assert all(a == b for a, b in zip(p, q) if not trig[a])  # only triggers were replaced
        assert sorted(r + w) == list(range(bb_task.n_chars))
        # positives follow the BB rule everywhere: after a trigger comes the token before it
        assert all(p[t + 1] == p[t - 1] for t in range(1, len(p) - 1) if trig[p[t]])
    again, other = (backcopy_prompts(bb_task, n=40, seed=s, min_len=8, max_len=20) for s in (0, 1))
    assert again.positive == c.positive and again.negative == c.negative and other.positive != c.positive


def test_backcopy_attention_matches_per_prompt_cache(bb_task):
    from probes.attention_sinks.bigram_backcopy import bb_model
    from probes.sae_circuits.tasks.backcopy_contrast import (
        backcopy_attention,
        backcopy_prompts,
    )

    model = bb_model(bb_task, n_layers=2, d_model=32).eval()
    c = backcopy_prompts(bb_task, n=6, seed=1, min_len=8, max_len=16)
    got = backcopy_attention(model, bb_task, c, batch_size=4)
    trig = bb_task.is_trigger
    num, den = torch.zeros(2, 1), 0
    for p in c.positive:
        _, cache = model.run_with_cache(torch.tensor([p]))
        for t in range(1, len(p)):
            if trig[p[t]]:
                den += 1
                for l in range(2):
                    num[l] += cache[hooks.attn_pattern(l)][0, :, t, t - 1]
    assert torch.allclose(got, num / den, atol=1e-5)


def test_probe_on_trained_bb_model():
    """The whole probe on a (briefly) trained 3-layer BB model: BB prompts, backcopy-attention ground truth."""
    from probes.attention_sinks.bigram_backcopy import bb_recipe, load_bb
    from workbench.models import set_numerics

    model = set_numerics(load_bb(bb_recipe("adam", n_layers=3, batch_size=4, steps=10, d_model=32)), "processed")
    r = run(model, None, config_from_dict(SAECircuitsConfig, dict(SMALL, task="bigram-backcopy", n_prompts=12)))
    assert r.stats["ground_truth_source"].startswith("backcopy-attention")
    att = r.heads["backcopy_attention"].to_numpy()
    assert np.array_equal(r.heads["ground_truth"].to_numpy(), att > 0.5)
    assert r.codes.shape == (2, 24, 3)
    assert len(r.stats["examples"]["positive"][0]) > 0


# ----------------------------------------------------------------------------- figures and the dashboard page


def test_figure_builders_on_a_real_result(small_result):
    import plotly.graph_objects as go

    from dashboards.figures import sae_circuits as figs

    model, r = small_result
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heat = figs.score_heatmaps(r)
    assert isinstance(heat, go.Figure)
    assert np.allclose(np.asarray(heat.data[0].z, dtype=float), r.node_scores.mean(0).numpy().reshape(L, H))
    assert np.allclose(np.asarray(heat.data[4].z, dtype=float), r.heads["baseline_share"].to_numpy().reshape(L, H))
    assert len(heat.data[1].x) == int(r.heads["ground_truth"].sum())  # ground-truth outlines
    assert figs.roc_figure({"run": r}).data and figs.runtime_figure({"run": r}).data
    g = figs.circuit_graph_figure(r.graph, L)
    assert len([t for t in g.data if t.mode == "lines"]) == r.graph.number_of_edges()
    head = int(r.heads["node_score"].to_numpy().argmax())
    hist = figs.code_histogram(r, head, seed=1)
    assert sum(hist.data[0].y) == r.n_positive and sum(hist.data[1].y) == r.codes.shape[1] - r.n_positive
    codes = r.codes[1, :, head].long()
    assert dict(zip(hist.data[0].x, hist.data[0].y)) == {str(c): int((codes[: r.n_positive] == c).sum())
                                                         for c in torch.unique(codes).tolist()}
    assert dict(figs.summary_rows(r))["task"] == "greater-than"


def _array(v) -> np.ndarray:
    """A figure array as sent to the browser: a list, or Plotly's typed-array dict (base64 data)."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
        shape = v.get("shape")
        return a.reshape([int(x) for x in str(shape).split(",")]) if shape else a
    return np.asarray(v, dtype=float)


def _post(app, outputs: list[tuple], inputs: list[tuple], state: list[tuple] = ()) -> dict:
    import json

    def key(i):
        return json.dumps(i, sort_keys=True, separators=(",", ":")) if isinstance(i, dict) else i

    outs = [{"id": i, "property": p} for i, p in outputs]
    single = len(outputs) == 1  # Dash names a single output without the ".." wrapping
    name = f"{key(outputs[0][0])}.{outputs[0][1]}" if single else ".." + "...".join(f"{key(i)}.{p}" for i, p in outputs) + ".."
    body = {"output": name, "outputs": outs[0] if single else outs,
            "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
            "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
            "changedPropIds": [f"{key(i)}.{p}" for i, p, _ in inputs]}
    client = app.server.test_client()
    client.get("/")
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code == 200, r.data[:500]
    return r.get_json()["response"]


def test_dashboard_page_shows_a_stored_run(store):
    from dashboards.app import create_app
    from dashboards.base import graph
    from dashboards.graphs import cyto_graph
    from dashboards.pages.sae_circuits import PAGE, run_choices
    from workbench.models import load_model
    from workbench.runner import run_probe

    model = load_model("tiny-llama", numerics="processed")
    outcome = run_probe("sae-circuits", model, None, dict(SMALL, n_seeds=2, n_prompts=8, baseline_prompts=4), store=store)
    PAGE.layout()
    app = create_app(store=store, model="tiny")
    try:
        assert not app.workbench_broken and "/sae-circuits" in [p.path for p in app.workbench_pages]
        assert run_choices(app.workbench_ctx) == [{"run_id": outcome.run_id, "task": "greater-than", "model": "tiny-llama"}]
        resp = _post(app, [(graph("sc-sae"), "figure"), (graph("sc-base"), "figure"), (graph("sc-roc"), "figure"),
                           (graph("sc-runtime"), "figure"), (cyto_graph("sc-graph"), "elements"), ("sc-summary", "children"),
                           ("sc-error", "children")],
                     [("sc-run", "value", outcome.run_id), ("sc-kind", "value", "edge")])
        import json

        sae = resp[json.dumps(graph("sc-sae"), sort_keys=True, separators=(",", ":"))]["figure"]
        z = _array(sae["data"][0]["z"])
        assert np.allclose(z.flatten(), outcome.result.edge_scores.mean(0).numpy())
        assert resp["sc-error"]["children"] == ""
        elements = resp[json.dumps(cyto_graph("sc-graph"), sort_keys=True, separators=(",", ":"))]["elements"]
        assert len(elements) == outcome.result.graph.number_of_nodes() + outcome.result.graph.number_of_edges()
        hist = _post(app, [(graph("sc-hist"), "figure")], [("sc-head", "data", 3), ("sc-seed", "value", 1)],
                     [("sc-run", "value", outcome.run_id)])
        bars = hist[json.dumps(graph("sc-hist"), sort_keys=True, separators=(",", ":"))]["figure"]["data"]
        assert _array(bars[0]["y"]).sum() == 8 and _array(bars[1]["y"]).sum() == 8
    finally:
        app.workbench_ctx.jobs.shutdown()
