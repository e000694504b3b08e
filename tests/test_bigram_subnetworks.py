"""Bigram subnetworks: masking is exact, the penalty pushes masks down, training resumes exactly,
the metrics agree with independent computations, and the probe runs end to end (store, masks on
disk, figures, dashboard page)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from probes.bigram_subnetworks.bigrams import BigramModel
from probes.bigram_subnetworks.mask_training import (
    MaskTrainConfig,
    mask_step,
    seeded_batch_fn,
    soft_cross_entropy,
    train_mask,
)
from probes.bigram_subnetworks.masking import (
    MaskLogits,
    apply_masks,
    check_masks,
    complement,
    kept,
    load_masks,
    mask_slots,
    masked_forward,
    masks_applied,
    random_like,
    save_masks,
)
from probes.bigram_subnetworks.metrics import (
    RidgeStatsAccumulator,
    SurprisalAccumulator,
    bigram_correlation,
    kept_table,
    median_rotation_deg,
    overlap_with_null,
)
from workbench.corpora import (
    ChunkSpec,
    Corpus,
    TokenBatch,
    TokenBatches,
    tokenize_corpus,
)
from workbench.errors import ConfigError, MemoryBudgetError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and on a shared CPU it only adds waiting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOKENS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _batch(tokens: torch.Tensor) -> TokenBatch:
    B, T = tokens.shape
    is_bos = torch.zeros(B, T, dtype=torch.bool)
    return TokenBatch(0, tokens, torch.ones(B, T, dtype=torch.bool), is_bos, torch.full((B, T), -1), torch.zeros(B, T, dtype=torch.long))


# ----------------------------------------------------------------------------- masking


@pytest.mark.parametrize("name", ["tiny", "tiny_llama"])
def test_all_ones_mask_equals_the_original_exactly(name, request):
    model = request.getfixturevalue(name)
    ref = model(TOKENS, return_type="logits")
    ones = {s.name: torch.ones(s.shape) for s in mask_slots(model)}
    assert torch.equal(masked_forward(model, ones, TOKENS), ref)
    with masks_applied(model, {n: m.bool() for n, m in ones.items()}):
        assert torch.equal(model(TOKENS, return_type="logits"), ref)
    # the soft training mask at init is 0.5 everywhere; a huge logit gives exactly 1.0 again
    logits = MaskLogits(model, init=100.0)
    assert torch.equal(masked_forward(model, logits.soft(1.0), TOKENS), ref)


def test_maskable_weights_are_block_matrices_only(tiny_llama):
    slots = mask_slots(tiny_llama)
    names = {s.name for s in slots}
    assert "blocks.0.attn._W_K" in names and "blocks.0.attn._W_V" in names and "blocks.1.mlp.W_gate" in names
    assert not any(n.startswith(("embed", "unembed", "ln_final")) or ".b_" in n or ".ln" in n for n in names)
    assert {s.matrix for s in slots} == {"q", "k", "v", "o", "in", "gate", "out"}
    assert slots[0].numel == int(np.prod(slots[0].shape))


def test_zero_mask_matches_an_independently_zeroed_copy(tiny):
    zero = {s.name: torch.zeros(s.shape) for s in mask_slots(tiny)}
    copy_ = copy.deepcopy(tiny)
    with torch.no_grad():
        for s in mask_slots(copy_):
            copy_.get_parameter(s.name).zero_()
    torch.testing.assert_close(masked_forward(tiny, zero, TOKENS), copy_(TOKENS, return_type="logits"), rtol=0, atol=1e-6)


def test_masks_applied_restores_and_apply_masks_is_permanent(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    masks = random_like({s.name: torch.rand(s.shape) < 0.3 for s in mask_slots(tiny)}, seed=3)
    with masks_applied(tiny, masks):
        w = tiny.get_parameter("blocks.0.mlp.W_in")
        assert torch.equal(w, before["blocks.0.mlp.W_in"] * masks["blocks.0.mlp.W_in"])
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n])
    model = copy.deepcopy(tiny)
    apply_masks(model, masks)
    assert torch.equal(model.get_parameter("blocks.1.attn.W_O"), before["blocks.1.attn.W_O"] * masks["blocks.1.attn.W_O"])
    assert torch.equal(model.get_parameter("embed.W_E"), before["embed.W_E"])
    with pytest.raises(ConfigError):
        check_masks(tiny, {k: v for k, v in list(masks.items())[1:]})
    with pytest.raises(ConfigError):
        check_masks(tiny, {**masks, "blocks.0.mlp.W_in": torch.ones(3, 3, dtype=torch.bool)})


def test_random_like_keeps_every_matrix_count_and_complement_is_exact():
    m = {"a": torch.rand(7, 9) < 0.2, "b": torch.rand(40) < 0.7}
    r = random_like(m, seed=1)
    for k in m:
        assert int(r[k].sum()) == int(m[k].sum()) and r[k].dtype == torch.bool
    assert not torch.equal(r["b"], m["b"])
    assert kept(complement(m)) == sum(x.numel() for x in m.values()) - kept(m)


def test_masks_save_and_load_as_boolean_safetensors(tmp_path, tiny):
    masks = {s.name: torch.rand(s.shape) < 0.5 for s in mask_slots(tiny)}
    path = save_masks(tmp_path / "m.safetensors", masks, {"label": "bigram:10"})
    back, meta = load_masks(path)
    assert meta["label"] == "bigram:10"
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert all(f.get_slice(k).get_dtype() == "BOOL" for k in f.keys())
    for n in masks:
        assert back[n].dtype == torch.bool and torch.equal(back[n], masks[n])
    check_masks(tiny, back)


# ----------------------------------------------------------------------------- training


def test_penalty_gradient_is_positive_and_matches_closed_form(tiny):
    logits = MaskLogits(tiny, init=0.3)
    T, lam = 2.5, 7.0
    penalty = lam * logits.mean_soft(T)
    penalty.backward()
    n = sum(s.numel for s in logits.slots)
    s = torch.sigmoid(torch.tensor(T * 0.3))
    want = lam * T * s * (1 - s) / n  # d/dm of lam * mean(sigmoid(T m))
    for name in logits.names:
        g = logits.logit(name).grad
        assert bool((g > 0).all())
        torch.testing.assert_close(g, torch.full_like(g, float(want)))
    # one optimiser step on the penalty alone lowers every mask value
    opt = torch.optim.AdamW(logits.parameters(), lr=1e-2, weight_decay=0.0)
    before = float(logits.mean_soft(T).detach())
    opt.step()
    assert float(logits.mean_soft(T).detach()) < before


def test_mask_step_trains_only_the_logits(tiny):
    logits = MaskLogits(tiny)
    for p in tiny.parameters():
        p.requires_grad_(False)
    before = {n: p.clone() for n, p in tiny.named_parameters()}
    target = torch.softmax(torch.randn(2, 24, tiny.cfg.d_vocab), -1)
    loss, ce = mask_step(tiny, logits, _batch(TOKENS), target, lam=1.0, temperature=1.0)
    loss.backward()
    assert all(logits.logit(n).grad is not None for n in logits.names)
    assert all(p.grad is None for p in tiny.parameters())
    for n, p in tiny.named_parameters():
        assert torch.equal(p, before[n])
    # soft cross-entropy with a one-hot target is ordinary cross-entropy
    lg = torch.randn(3, 5, 11)
    y = torch.randint(0, 11, (3, 5))
    onehot = torch.nn.functional.one_hot(y, 11).float()
    torch.testing.assert_close(soft_cross_entropy(lg, onehot, torch.ones(3, 5)),
                               torch.nn.functional.cross_entropy(lg.reshape(-1, 11), y.reshape(-1)))


@pytest.fixture(scope="module")
def small_corpus(brown):
    """The first 40 Brown documents cut to 600 characters (about 4 of them fall in the validation split)."""
    from workbench.corpora import Document

    docs = [Document(d.doc_id, d.text[:600], d.genre) for d in brown.documents[:40]]
    return Corpus(brown.name, brown.version + "-first40x600", docs)


@pytest.fixture(scope="module")
def toy_batches(small_corpus):
    from workbench.tokenizers import byte_tokenizer

    tok = byte_tokenizer()
    tc = tokenize_corpus(Corpus(small_corpus.name, small_corpus.version, small_corpus.documents[:3]), tok, separator_id=tok.eos_token_id)
    return TokenBatches(tc, ChunkSpec(seq_len=32, batch_size=4), bos_id=tok.bos_token_id)


def test_training_stops_by_rule_and_resumes_exactly(tiny, toy_batches, tmp_path):
    bg = BigramModel.from_batches(toy_batches, tiny.cfg.d_vocab)
    target = lambda b: bg.target_rows(b.tokens, vocab_size=tiny.cfg.d_vocab)  # noqa: E731
    cfg = MaskTrainConfig(lam=5.0, max_steps=60, lr=0.05, temp_growth=1.5, resume_every=2, log_every=1)
    fn = seeded_batch_fn(toy_batches, 0)
    ref = train_mask(tiny, fn, target, cfg, tmp_path / "ref", "ref", progress=False)

    def dying(step):
        if step == 5:
            raise KeyboardInterrupt
        return fn(step)

    with pytest.raises(KeyboardInterrupt):
        train_mask(tiny, dying, target, cfg, tmp_path / "cut", "cut", progress=False)
    assert (tmp_path / "cut" / "mask_state.safetensors").exists()
    resumed = train_mask(tiny, fn, target, cfg, tmp_path / "cut", "cut", progress=False)
    assert resumed.steps == ref.steps
    np.testing.assert_allclose(resumed.log["loss"].to_numpy(), ref.log["loss"].to_numpy(), rtol=1e-5)
    for n in ref.masks:
        assert torch.equal(resumed.masks[n], ref.masks[n])
    # the stopping rule: fast temperature growth decides every mask before the cap
    last = ref.log.iloc[-1]
    assert ref.stopped == "rule" and ref.steps < cfg.max_steps
    assert last["undecided_frac"] < cfg.stop_fraction * last["kept_frac"] or last["undecided_frac"] == 0
    # a finished run is reused from disk
    again = train_mask(tiny, lambda s: (_ for _ in ()).throw(AssertionError("retrained")), target, cfg, tmp_path / "ref", "ref", progress=False)
    assert again.steps == ref.steps and all(torch.equal(again.masks[n], ref.masks[n]) for n in ref.masks)


# ----------------------------------------------------------------------------- metrics


def _rotation_blocks(theta_deg: float, n_blocks: int) -> np.ndarray:
    t = np.deg2rad(theta_deg)
    r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return np.kron(np.eye(n_blocks), r)


def test_rotation_metric_recovers_a_known_angle():
    assert median_rotation_deg(_rotation_blocks(37.0, 4)) == pytest.approx(37.0)
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))[0]
    assert median_rotation_deg(q @ _rotation_blocks(-120.0, 4) @ q.T) == pytest.approx(120.0)  # basis-free
    assert median_rotation_deg(3.0 * np.eye(6)) == pytest.approx(0.0)
    # a ridge fit to rotated data recovers the rotation's angle
    x = np.random.default_rng(1).normal(size=(4000, 8))
    coef = Ridge(alpha=1.0).fit(x, x @ _rotation_blocks(50.0, 4).T).coef_
    assert median_rotation_deg(coef) == pytest.approx(50.0, abs=0.5)


def test_streamed_ridge_matches_scikit_learn(tiny, toy_batches):
    from workbench.activations import stream

    acc = RidgeStatsAccumulator(tiny)
    stream(tiny, toy_batches, acc, progress=False)
    xs = {h: [] for h in acc.hook_names}
    x_in = []
    for b in toy_batches:
        _, cache = tiny.run_with_cache(b.tokens, names_filter=lambda n: n in acc.hook_names)
        keep = b.valid & ~b.is_bos
        for h in acc.hook_names:
            xs[h].append(cache[h][keep].double().numpy())
        x_in.append(tiny.W_E[b.tokens[keep]].double().detach().numpy())
    x_in = np.concatenate(x_in)
    x_out = np.concatenate(xs[acc.hook_names[-1]])
    for layer, h in enumerate(acc.hook_names):
        x = np.concatenate(xs[h])
        for target, y in (("in", x_in), ("out", x_out)):
            want = Ridge(alpha=1.0).fit(x, y).coef_
            np.testing.assert_allclose(acc.coefficients(layer, target), want, rtol=1e-6, atol=1e-8)


def test_overlap_null_is_count_matched_and_matches_brute_force_shuffles():
    g = torch.Generator().manual_seed(0)
    m0 = {"a": torch.rand(20, 10, generator=g) < 0.3, "b": torch.rand(50, generator=g) < 0.1}
    m1 = {"a": torch.rand(20, 10, generator=g) < 0.4, "b": torch.rand(50, generator=g) < 0.5}
    ov, null = overlap_with_null(m0, m1, n_samples=20_000)
    total = 250
    closed = sum(int(m0[k].sum()) * int(m1[k].sum()) / m0[k].numel() for k in m0) / total
    assert null.mean() == pytest.approx(closed, rel=0.02)
    rng = np.random.default_rng(5)
    brute = []
    for _ in range(3000):
        inter = 0
        for k in m0:
            a, b = m0[k].flatten().numpy().copy(), m1[k].flatten().numpy().copy()
            rng.shuffle(a)
            rng.shuffle(b)
            inter += int((a & b).sum())
        brute.append(inter / total)
    assert np.std(null) == pytest.approx(np.std(brute), rel=0.1)
    inter = sum(int((m0[k] & m1[k]).sum()) for k in m0)
    assert ov.observed == inter / total and ov.contained == inter / kept(m0)
    same, _ = overlap_with_null(m0, m0, n_samples=2000)
    assert same.p_value == pytest.approx(1 / 2001) and same.ratio_to_chance > 2


def test_bigram_correlation_is_one_for_the_bigram_model_itself_and_handles_infinities():
    seqs = [np.random.default_rng(i).integers(0, 6, size=50) for i in range(20)]
    bg = BigramModel.from_sequences(seqs, 8)
    ctx = np.concatenate([s[:-1] for s in seqs])
    nxt = np.concatenate([s[1:] for s in seqs])
    acc = SurprisalAccumulator()
    acc.parts = {"surprisal": [torch.from_numpy(bg.surprisal(ctx, nxt))], "context": [torch.from_numpy(ctx)], "next": [torch.from_numpy(nxt)]}
    assert bigram_correlation(acc, bg).r == pytest.approx(1.0)
    # an unseen bigram (7 never follows anything) is dropped from r, clamped in r_clamped
    ctx2, nxt2 = np.append(ctx, 1), np.append(nxt, 7)
    s = np.append(bg.surprisal(ctx, nxt), 3.0)
    acc.parts = {"surprisal": [torch.from_numpy(s)], "context": [torch.from_numpy(ctx2)], "next": [torch.from_numpy(nxt2)]}
    res = bigram_correlation(acc, bg)
    assert res.n_inf_bigram == 1 and res.r == pytest.approx(1.0) and res.r_clamped < 1.0
    blocked = bigram_correlation(acc, bg, block=49)  # one block per sequence: sums for the paired bootstrap
    assert blocked.sums.shape == (21, 6) and blocked.sums[:, 0].sum() == blocked.n - 1  # the unseen bigram is not kept
    assert "sums" not in blocked.stored() and blocked.stored()["r"] == blocked.r


def test_kept_table_shares(tiny):
    slots = mask_slots(tiny)
    masks = {s.name: torch.zeros(s.shape, dtype=torch.bool) for s in slots}
    masks["blocks.0.mlp.W_in"][:3] = True  # 3 rows of 256
    masks["blocks.1.attn.W_Q"][0, 0] = True  # 16
    t = kept_table(masks, slots, "x")
    assert t["kept"].sum() == 3 * 256 + 16 and t["share_of_kept"].sum() == pytest.approx(1.0)
    row = t[t["name"] == "blocks.0.mlp.W_in"].iloc[0]
    assert row["kept_frac"] == pytest.approx(768 / (64 * 256)) and row["share_of_kept"] == pytest.approx(768 / 784)


# ----------------------------------------------------------------------------- probe end to end

QUICK = dict(lambdas=[0.0, 20.0], max_steps=25, lr=0.02, temp_growth=1.15, batch_size=4, seq_len=64, eval_tokens=1024,
             rotation_tokens=1024, n_random=2, overlap_samples=500, resume_every=10)


@pytest.fixture(scope="module")
def probe_run(small_corpus, tmp_path_factory):
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    store = ResultStore(tmp_path_factory.mktemp("store"))
    model = load_model("tiny", device="cpu")
    return run_probe("bigram-subnetworks", model, small_corpus, QUICK, store=store), model, store, small_corpus


def test_probe_end_to_end_and_reload(probe_run, tmp_path):
    from probes.bigram_subnetworks import BigramSubnetworksResult

    out, model, store, corpus = probe_run
    res = out.result
    labels = list(res.sweep["label"])
    assert labels[:2] == ["bigram:0", "bigram:20"] and labels[2] == "optimal:" + res.selected.split(":")[1]
    assert res.sweep["selected"].sum() == 1 and res.optimal_label is not None
    total = sum(s.numel for s in mask_slots(model))
    assert (res.sweep["maskable"] == total).all()
    for label in res.labels:
        m = res.masks_for(label)
        assert kept(m) == int(res.sweep.loc[res.sweep["label"] == label, "kept"].iloc[0])
    assert set(res.ablation["condition"]) >= {"full model", "ablate random (count-matched)", "only random (count-matched)"}
    assert sorted(res.rotation["run"].unique()) == sorted({"full", res.selected, res.optimal_label})
    assert (res.rotation.loc[res.rotation["layer"] == 0, "to_input_deg"] < 1.0).all()  # embedding vs token embedding
    assert 0 <= res.overlap["p_value"] <= 1 and len(res.overlap_null) == QUICK["overlap_samples"]
    s = res.summary()
    assert {"selected", "subnetwork_r", "full_model_r", "first_mlp_share", "ablation_loss"} <= set(s)
    back = BigramSubnetworksResult.load(out.path)
    assert back.selected == res.selected
    for n, m in res.masks_for(res.selected).items():
        assert back.masks_for(res.selected)[n].dtype == torch.bool and torch.equal(back.masks_for(res.selected)[n], m)
    # a saved subnetwork loads onto the model and gives the r the probe measured
    res.save_masks(res.selected, tmp_path / "sub.safetensors")
    masks, meta = load_masks(tmp_path / "sub.safetensors")
    assert meta["label"] == res.selected
    from probes.bigram_subnetworks import BigramSubnetworksConfig
    from probes.bigram_subnetworks.metrics import model_surprisals
    from probes.bigram_subnetworks.probe import _batches, _bigram_model

    cfg = BigramSubnetworksConfig(**QUICK)
    eval_b = _batches(model, corpus, cfg, "validation", cfg.eval_tokens)
    bg = _bigram_model(model, _batches(model, corpus, cfg, "train", None), cfg)
    with masks_applied(model, masks):
        r = bigram_correlation(model_surprisals(model, eval_b, "check", progress=False), bg).r
    assert r == pytest.approx(float(res.sweep.loc[res.sweep["selected"], "r"].iloc[0]), abs=1e-9)
    # the stored run is reused
    from workbench.runner import run_probe

    assert run_probe("bigram-subnetworks", model, corpus, QUICK, store=store).reused


def test_probe_refuses_processed_numerics_and_reports_memory(small_corpus, monkeypatch):
    import probes.bigram_subnetworks.probe as bs
    from workbench.models import load_model
    from workbench.runner import run_probe

    with pytest.raises(ConfigError):
        run_probe("bigram-subnetworks", load_model("tiny", numerics="processed"), small_corpus, QUICK)
    monkeypatch.setattr(bs, "available_memory_bytes", lambda device: 1024)
    with pytest.raises(MemoryBudgetError):
        bs.announce_memory(load_model("tiny"), bs.BigramSubnetworksConfig(**QUICK))
    with pytest.raises(ConfigError):
        bs.BigramSubnetworksConfig(lambdas=[-1.0]).validate()


def test_figures_and_page_build_on_a_real_result(probe_run):
    from dashboards.figures import bigram_subnetworks as figs
    from dashboards.pages.bigram_subnetworks import PAGE

    res = probe_run[0].result
    for fig in (figs.r_vs_sparsity(res), figs.kept_heatmap(res, res.selected), figs.kept_heatmap(res, res.optimal_label),
                figs.ablation_bars(res), figs.overlap_null(res), figs.rotation_angles(res), figs.training_curves(res),
                figs.compare_blocks(res, res.selected, res.optimal_label)):
        assert fig.data, fig.layout.title.text
    assert PAGE.probe == "bigram-subnetworks" and PAGE.path.startswith("/")
    layout = PAGE.layout()
    assert "bigram" in str(layout).lower()
    rows = dict(figs.summary_rows(res))
    assert rows["selected subnetwork"] == res.selected


def test_page_callbacks_register(probe_run):
    from dash import Dash

    from dashboards.base import AppState
    from dashboards.pages.bigram_subnetworks import PAGE

    app = Dash(__name__, suppress_callback_exceptions=True)
    app.layout = PAGE.layout()
    PAGE.register(app, AppState(store=probe_run[2]))
    assert len(app.callback_map) >= 4


@pytest.mark.browser
def test_page_in_browser_browses_masks(dash_duo, probe_run):
    """The page over a stored tiny-model run: the summary and heatmaps render, another λ can be chosen."""
    import socket

    from dashboards.app import create_app

    res, store = probe_run[0].result, probe_run[2]
    app = create_app(store=store, model="tiny")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dash_duo.start_server(app, port=port)
        dash_duo.wait_for_page(url=dash_duo.server_url + "/bigram-subnetworks")
        dash_duo.wait_for_contains_text("#bs-summary-table", res.selected, timeout=30)
        dash_duo.wait_for_element(".figure-card .heatmaplayer", timeout=30)
        i, other = next((i, l) for i, l in enumerate(res.labels) if l != res.selected)
        dash_duo.select_dcc_dropdown("#bs-a", index=i)
        import time

        deadline = time.time() + 30
        while not any(f"{other}: kept fraction" in e.text for e in dash_duo.find_elements(".figure-card")):
            assert time.time() < deadline, f"the heatmap of {other} never appeared"
            time.sleep(0.5)
        assert dash_duo.get_logs() == []
    finally:
        app.workbench_ctx.jobs.shutdown()


@pytest.mark.slow
def test_smollm2_masks_cover_gqa_weights_and_all_ones_is_exact(smollm2):
    """The embedded model through the same code: 30 layers of Q, K, V (3 KV heads), O, gate, in, out."""
    from probes.bigram_subnetworks.probe import estimate_bytes

    slots = mask_slots(smollm2)
    d, dh, kv, mlp = 576, 64, 3, 1536
    per_layer = d * d + 2 * d * kv * dh + d * d + 3 * d * mlp
    assert len(slots) == 30 * 7 and sum(s.numel for s in slots) == 30 * per_layer
    tokens = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    ones = {s.name: torch.ones(s.shape) for s in slots}
    assert torch.equal(masked_forward(smollm2, ones, tokens), smollm2(tokens, return_type="logits"))
    est = estimate_bytes(smollm2, 32, 128)
    assert est["mask_state"] == 16 * 30 * per_layer and est["vocab"] == 4 * 32 * 128 * 49152 * 4
