"""The attention-sinks probe: metrics on hand-built patterns, GQA value norms and head ablation
against brute force, the streamed survey against a full cache, BB analysis, save/load, figures, page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from probes.attention_sinks import (
    AttentionSinksConfig,
    AttentionSinksResult,
    BigramBackcopyConfig,
    BigramBackcopyResult,
    HeadSurveyAccumulator,
    domain_contrast,
    head_ablation,
    prompt_head,
)
from probes.attention_sinks.heads import (
    delta_logit,
    head_groups,
    histogram_quantiles,
    next_token_chunk,
    value_norms,
)
from workbench import hooks
from workbench.activations import stream
from workbench.errors import ConfigError, PromptTooLongError
from workbench.slices import corpus_batches

SMALL = dict(max_tokens=384, seq_len=48, batch_size=4, ablation_tokens=96, example_len=16)


def test_delta_logit_closed_form():
    s = torch.tensor([[0.0, -1e9, -1e9, -1e9], [2.0, 1.0, -1e9, -1e9], [3.0, 1.0, 2.0, -1e9], [5.0, 1.0, 2.0, 6.0]])[None, None]
    d = delta_logit(s)[0, 0]
    assert torch.isnan(d[:2]).all()
    assert d[2].item() == pytest.approx(3.0 - 1.0)  # keys 1..q-1 = {1}
    assert d[3].item() == pytest.approx(5.0 - 1.5)  # keys {1, 2}; the diagonal (6) is not an "other" key


def test_histogram_quantiles_match_exact():
    x = torch.randn(3, 2, 5000, dtype=torch.float64) * 4 + torch.tensor([[[0.0]], [[3.0]], [[-5.0]]])
    n_bins, rng = 240, 30.0
    bins = ((x + rng) / (2 * rng) * n_bins).floor().clamp(0, n_bins - 1).long()
    hist = torch.zeros(3, 2, n_bins, dtype=torch.float64).scatter_add_(2, bins, torch.ones_like(x))
    got = histogram_quantiles(hist, rng, (0.1, 0.5, 0.9))
    exact = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64), dim=-1).permute(1, 2, 0)
    assert (got - exact).abs().max() < 2 * rng / n_bins


def test_sink_metrics_on_hand_built_pattern(tiny, brown):
    """Uniform causal attention (weight 1/(q+1)) and scores equal to the key index give known
    sink mass mean(1/(q+1)) and Δlogit -q/2 over the valid positions of the slice."""
    cfg = AttentionSinksConfig(**{**SMALL, "delta_range": 40.0})
    batches = corpus_batches(tiny, brown, cfg)
    acc = HeadSurveyAccumulator(tiny, cfg.seq_len, cfg.delta_range, cfg.example_len)
    T = cfg.seq_len
    k = torch.arange(T, dtype=torch.float32)
    causal = torch.ones(T, T).tril().bool()

    def scores(s, hook):
        return torch.where(causal, k[None, :].expand(T, T), torch.tensor(float("-inf"))).expand_as(s).clone()

    def pattern(p, hook):
        return (causal.float() / causal.sum(-1, keepdim=True)).expand_as(p).clone()

    forced = [(n, f) for l in range(tiny.cfg.n_layers)
              for n, f in ((hooks.attn_scores(l), scores), (hooks.attn_pattern(l), pattern))]
    with tiny.hooks(fwd_hooks=forced + acc.sink_hooks.hooks()):
        stream(tiny, batches, acc, progress=False)
    q_sink, q_dl = [], []
    for b in batches:
        for row in b.valid:
            n = int(row.sum())
            q_sink += [1.0 / (q + 1) for q in range(1, n)]
            q_dl += [-q / 2 for q in range(2, n)]
    heads = acc.head_table("brown")
    assert np.allclose(heads["sink_mass"], np.mean(q_sink), atol=1e-6)
    assert np.allclose(heads["delta_logit"], np.mean(q_dl), atol=1e-4)
    assert np.allclose(heads["delta_logit_q50"], np.quantile(q_dl, 0.5), atol=2 * 40 / 240)
    sink_prof, _ = acc.profiles()
    assert torch.allclose(sink_prof[0, 0, 1:10], 1.0 / torch.arange(2, 11), atol=1e-6)


def test_gqa_value_norms_match_brute_force(tiny_llama):
    """‖v W_O‖ per query head vs the head's actual output when it attends only to one position."""
    model = tiny_llama
    assert model.cfg.n_key_value_heads == 2 and model.cfg.n_heads == 4
    assert head_groups(4, 2).tolist() == [0, 0, 1, 1]
    tokens = torch.randint(0, 256, (2, 10))
    layer = 1
    _, cache = model.run_with_cache(tokens, names_filter=hooks.attn_v(layer))
    got = value_norms(cache[hooks.attn_v(layer)], model.blocks[layer].attn.W_O)  # [B, T, H]
    model.set_use_attn_result(True)
    try:
        for p in (0, 3, 9):
            def one_hot(pat, hook, p=p):
                out = torch.zeros_like(pat)
                out[..., p:, p] = 1.0
                out[..., :p, 0] = 1.0
                return out

            res = {}
            with model.hooks(fwd_hooks=[(hooks.attn_pattern(layer), one_hot),
                                        (f"blocks.{layer}.attn.hook_result", lambda r, hook: res.setdefault("r", r))]):
                model(tokens)
            brute = res["r"][:, -1].norm(dim=-1)  # [B, H]: last query, attending only to p
            assert torch.allclose(got[:, p], brute, rtol=1e-4, atol=1e-5)
    finally:
        model.set_use_attn_result(False)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_head_ablation_matches_full_forward(fixture, request):
    model = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (3, 12))
    valid = torch.ones_like(tokens, dtype=torch.bool)
    valid[2, 9:] = False
    chunk = next_token_chunk(tokens, valid)
    clean, ablated, delta_se, cost = head_ablation(model, [chunk], "test", progress=False)
    mask = chunk[2]
    logits = model(tokens)
    ref_clean = F.cross_entropy(logits[mask], chunk[1][mask]).item()
    assert clean == pytest.approx(ref_clean, rel=1e-5)
    clean_tok = F.cross_entropy(logits[mask], chunk[1][mask], reduction="none").detach().double().numpy()
    for l, h in ((0, 1), (1, 3)):
        def zero(z, hook, h=h):
            z = z.clone()
            z[:, :, h] = 0
            return z

        lg = model.run_with_hooks(tokens, fwd_hooks=[(hooks.attn_z(l), zero)])
        ref = F.cross_entropy(lg[mask], chunk[1][mask]).item()
        assert ablated[l, h].item() == pytest.approx(ref, rel=1e-5)
        # the standard error of the mean per-token loss change, from the per-token losses directly
        diff = F.cross_entropy(lg[mask], chunk[1][mask], reduction="none").detach().double().numpy() - clean_tok
        assert delta_se[l, h].item() == pytest.approx(diff.std(ddof=1) / np.sqrt(diff.size), rel=1e-3, abs=1e-9)
        assert delta_se[l, h].item() > 0
    assert cost["forward_equivalents"] == pytest.approx(1 + 4 * (2 + 1) / 2)


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """One small stored survey of the tiny model on Brown and python-stdlib."""
    import os

    from workbench.corpora import load_corpus
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    root = tmp_path_factory.mktemp("sinks")
    old = os.environ.get("WORKBENCH_STORE")
    os.environ["WORKBENCH_STORE"] = str(root / "store")
    try:
        model = load_model("tiny")
        store = ResultStore(root / "store")
        out = run_probe("attention-sinks", model, load_corpus("brown"), AttentionSinksConfig(**SMALL), store=store)
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_STORE", None)
        else:
            os.environ["WORKBENCH_STORE"] = old
    return model, store, out


def test_survey_matches_full_cache_and_round_trips(lm_run, brown):
    model, store, out = lm_run
    res = out.result
    assert res.domains == ["brown", "python-stdlib"]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(res.heads) == 2 * L * H and len(res.layers) == 2 * (L + 1)
    assert res.heads["sink_mass"].between(0, 1).all() and res.heads["delta_loss"].notna().all()
    # independent computation of brown's sink mass and residual peaks from a full cache
    cfg = AttentionSinksConfig(**SMALL)
    sink_sum = torch.zeros(L, H, dtype=torch.float64)
    n_q = 0
    first, rest, n_first, n_rest = torch.zeros(L + 1), torch.zeros(L + 1), 0, 0
    for b in corpus_batches(model, brown, cfg):
        _, cache = model.run_with_cache(b.tokens)
        q = b.valid.clone()
        q[:, 0] = False
        for l in range(L):
            sink_sum[l] += cache[hooks.attn_pattern(l)][..., 0].permute(1, 0, 2)[:, q].sum(-1).double()
        n_q += int(q.sum())
        for i, name in enumerate(["blocks.0.hook_resid_pre"] + [hooks.resid_post(l) for l in range(L)]):
            norms = cache[name].norm(dim=-1)
            first[i] += norms[:, 0][b.valid[:, 0]].sum()
            rest[i] += norms[q].sum()
        n_first += int(b.valid[:, 0].sum())
        n_rest += int(q.sum())
    brown_heads = res.heads[res.heads["domain"] == "brown"]
    assert np.allclose(brown_heads["sink_mass"], (sink_sum / n_q).flatten().numpy(), atol=1e-5)
    brown_layers = res.layers[res.layers["domain"] == "brown"]
    assert np.allclose(brown_layers["resid_first"], (first / n_first).numpy(), rtol=1e-4)
    assert np.allclose(brown_layers["resid_rest"], (rest / n_rest).numpy(), rtol=1e-4)
    # save / load round trip through the store
    loaded = AttentionSinksResult.load(out.path)
    pd.testing.assert_frame_equal(loaded.heads, res.heads)
    pd.testing.assert_frame_equal(loaded.layers, res.layers)
    assert loaded.profiles.keys() == res.profiles.keys()
    assert all(torch.equal(loaded.profiles[k], res.profiles[k]) for k in res.profiles)
    assert loaded.example_tokens == res.example_tokens and loaded.examples["brown"].shape == (L, H, 16, 16)
    assert loaded.summary() == res.summary()


def test_domain_contrast_and_errors(lm_run):
    _, _, out = lm_run
    t = domain_contrast(out.result.heads, "brown", "python-stdlib")
    assert len(t) == out.result.heads.shape[0] // 2
    assert (t["score"].diff().dropna() <= 0).all()  # sorted by this very column: exact
    row = t.iloc[0]
    h = out.result.heads
    a = h[(h.domain == "brown") & (h.layer == row.layer) & (h["head"] == row["head"])].sink_mass.item()
    assert row.sink_mass_a == pytest.approx(a)
    assert row.delta_loss_se_a == pytest.approx(h[(h.domain == "brown") & (h.layer == row.layer) & (h["head"] == row["head"])]
                                                .delta_loss_se.item())
    assert (h["delta_loss_se"] > 0).all()
    with pytest.raises(ConfigError, match="must both be in the result"):
        domain_contrast(h, "brown", "nope")
    with pytest.raises(ConfigError):
        AttentionSinksConfig(dormant_sink=1.5).validate()


def test_lm_report_gives_loss_changes_with_standard_errors_and_counts_close_calls(lm_run):
    import copy

    from experiments.attention_sinks import close_calls_line, lm_section

    _, _, out = lm_run
    res = copy.deepcopy(out.result)
    h = res.heads
    cfg = {**res.meta["config"], "dormant_sink": 0.5, "dormant_loss": 0.01}
    h["sink_mass"], h["delta_loss"], h["delta_loss_se"] = 0.2, 0.5, 0.001
    brown = h.index[h.domain == "brown"]
    # three brown heads above the sink threshold: one close call (|0.012 - 0.01| <= 2 * 0.002): undecided;
    # one clearly above (active), one clearly below (dormant)
    h.loc[brown[:3], "sink_mass"] = 0.9
    h.loc[brown[:3], "delta_loss"] = [-0.012, 0.05, 0.0]
    h.loc[brown[:3], "delta_loss_se"] = 0.002
    line = close_calls_line(h, ["brown", "python-stdlib"], cfg)
    assert "brown: of 3 heads with sink ≥ 0.5, 1 dormant, 1 undecided, 1 active" in line
    assert "python-stdlib: of 0 heads with sink ≥ 0.5, 0 dormant, 0 undecided, 0 active" in line
    md = lm_section(out.result, "tiny")
    r = domain_contrast(out.result.heads, "brown", "python-stdlib").iloc[0]
    assert f"{r.delta_loss_a:+.4f} ± {r.delta_loss_se_a:.4f}" in md and "One verdict per head" in md


def test_prompt_head_and_bounds(tiny):
    r = prompt_head(tiny, "The cat sat on the mat.", layer=1, head=2)
    T = len(r["tokens"])
    assert r["pattern"].shape == (T, T) and torch.allclose(r["pattern"].sum(-1), torch.ones(T), atol=1e-5)
    assert r["sink_mass"] == pytest.approx(float(r["pattern"][1:, 0].mean()), abs=1e-6)
    assert r["resid_norms"].shape == (tiny.cfg.n_layers + 1, T)
    with pytest.raises(PromptTooLongError):
        prompt_head(tiny, "x" * 3000, 0, 0)
    with pytest.raises(ConfigError, match="layer must be"):
        prompt_head(tiny, "hi", 5, 0)


@pytest.fixture(scope="module")
def bb_run(tmp_path_factory):
    """A tiny BB run (a few steps) analysed with dynamics over its checkpoints."""
    import probes.attention_sinks.bigram_backcopy as bbm
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    task = bbm.load_bb_task("brown", 3)
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("bb")
    mp.setenv("WORKBENCH_CACHE", str(root))
    mp.setattr(bbm.training, "load_bb_task", lambda corpus, k, charset="all": task)  # where train_bb and task_of_model read it
    recipe = bbm.bb_recipe("adam", d_model=32, batch_size=4, seq_len=32, steps=4, n_checkpoints=3, lr=3e-3)
    path = bbm.train_bb(recipe, progress=False)
    model = load_model(str(path / "checkpoints" / "step_000004"))

    out = run_probe("bigram-backcopy", model, None, BigramBackcopyConfig(bb_sequences=8), store=ResultStore(root / "store"))
    yield model, task, out, recipe
    mp.undo()


def test_bb_analysis_matches_direct_computation(bb_run):
    model, task, out, recipe = bb_run
    res = out.result
    assert res.meta["kind"] == "bb" and res.domains == ["bb"]
    data = task.sample(8, 256, 2024)
    inputs = data[:, :-1]
    _, cache = model.run_with_cache(inputs, names_filter="blocks.0.attn.hook_pattern")
    _, bigram = task.position_masks(inputs)
    sink = cache["blocks.0.attn.hook_pattern"][:, 0, :, 0]
    assert res.heads.loc[0, "sink_mass"] == pytest.approx(float(sink[bigram].mean()), rel=1e-5)
    trig_keys = cache["blocks.0.attn.hook_pattern"][:, 0] @ task.position_masks(inputs)[0].float()[:, :, None]
    assert res.heads.loc[0, "trigger_key_mass"] == pytest.approx(float(trig_keys[..., 0][bigram].mean()), rel=1e-5)
    # the pooled sink mass split by query character, against a plain loop over positions
    by_char: dict[int, list[float]] = {}
    for i, t in zip(*torch.nonzero(bigram, as_tuple=True)):
        by_char.setdefault(int(inputs[i, t]), []).append(float(sink[i, t]))
    split = res.tokens[res.tokens.layer == 0].set_index("token_id")
    n_bigram = int(bigram.sum())
    for c, vals in by_char.items():
        assert split.loc[c, "data_share"] == pytest.approx(len(vals) / n_bigram, rel=1e-9)
        assert split.loc[c, "data_sink"] == pytest.approx(float(np.mean(vals)), rel=1e-5)
    assert split["data_share"].sum() == pytest.approx(1.0)
    assert split.loc[[c for c in split.index if c not in by_char], "data_sink"].isna().all()
    assert (split["data_share"] * split["data_sink"].fillna(0)).sum() == pytest.approx(res.heads.loc[0, "sink_mass"], rel=1e-5)
    # attention on keys holding the query's own character, against a loop over (query, key) pairs
    pat = cache["blocks.0.attn.hook_pattern"][:, 0]
    same: dict[int, list[float]] = {}
    for i, t in zip(*torch.nonzero(bigram, as_tuple=True)):
        c = int(inputs[i, t])
        same.setdefault(c, []).append(sum(float(pat[i, t, k]) for k in range(int(t) + 1) if int(inputs[i, k]) == c))
    for c, vals in same.items():
        assert split.loc[c, "data_same_token"] == pytest.approx(float(np.mean(vals)), rel=1e-4, abs=1e-7)
    assert split.loc[[c for c in split.index if c not in same], "data_same_token"].isna().all()
    # token-level test: [<s>, non-triggers, tok], attention on <s> at the last position
    tok = task.triggers[0]
    row = task.dormancy_inputs()[tok]
    _, c2 = model.run_with_cache(row[None], names_filter="blocks.0.attn.hook_pattern")
    t = res.tokens[(res.tokens.layer == 0) & (res.tokens.token_id == tok)].iloc[0]
    assert t.sink_last == pytest.approx(float(c2["blocks.0.attn.hook_pattern"][0, 0, -1, 0]), rel=1e-5)
    assert t.is_trigger and t.paper_active and len(res.tokens) == task.n_chars
    assert set(res.dynamics["step"]) == set(recipe.checkpoint_steps())
    for k in ("backcopy_risk", "bigram_risk", "bigram_optimum", "no_attention_backcopy_risk", "no_mlp_bigram_risk"):
        assert np.isfinite(res.bb[k])
    from probes.attention_sinks.bigram_backcopy import bb_risks

    ref = bb_risks(model, task, n_seqs=8, seed=2024)  # an independent pass over the same sequences
    for k in ("backcopy_risk", "bigram_risk", "loss", "bigram_optimum", "bigram_oracle_risk", "bigram_paired_gap"):
        assert res.bb[k] == pytest.approx(ref[k], rel=1e-5)
    assert res.bb["bigram_oracle_risk"] == pytest.approx(task.oracle_bigram_risk(data), rel=1e-12)
    assert {"bigram_oracle_risk", "bigram_paired_gap"} <= set(res.summary())
    last = res.dynamics[res.dynamics["step"] == res.dynamics["step"].max()]
    assert last["bigram_risk"].iloc[0] == pytest.approx(ref["bigram_risk"], rel=1e-5)
    loaded = BigramBackcopyResult.load(out.path)
    pd.testing.assert_frame_equal(loaded.dynamics, res.dynamics)
    pd.testing.assert_frame_equal(loaded.tokens, res.tokens)


def test_bb_report_judges_bigram_risk_on_the_paired_gap(bb_run):
    import copy

    from experiments.attention_sinks import bb1_section

    model, task, out, recipe = bb_run
    res = copy.deepcopy(out.result)
    oracle = res.bb["bigram_oracle_risk"]
    # 2% above the oracle on the same positions, 13% above the population optimum: met (paired)
    res.bb.update(bigram_risk=oracle * 1.02, bigram_optimum=oracle * 0.9)
    md = bb1_section(res, None, recipe)
    assert "paired gap +2.00%" in md and "gap +13.33%" in md and "within 3% (paired): met" in md
    # equal to the population optimum but 5% above the oracle: not met
    res.bb.update(bigram_risk=oracle * 1.05, bigram_optimum=oracle * 1.05)
    assert "within 3% (paired): NOT met" in bb1_section(res, None, recipe)
    # a result stored before the oracle was recorded: recomputed from the task and the batch seed
    del res.bb["bigram_oracle_risk"], res.bb["bigram_paired_gap"]
    assert "within 3% (paired): NOT met" in bb1_section(res, None, recipe)
    res.bb["bigram_risk"] = oracle
    assert "paired gap +0.00%" in bb1_section(res, None, recipe)


def test_figures_build_on_real_results(lm_run, bb_run):
    import plotly.graph_objects as go

    from dashboards.figures import attention_sinks as figs

    lm, bb = lm_run[2].result, bb_run[2].result
    built = [
        figs.attention_map(lm.examples["brown"][1, 2].numpy(), lm.example_tokens["brown"], "L1H2"),
        figs.sink_heatmap(lm.heads, "brown"),
        figs.dormancy_difference_heatmap(lm.heads, "brown", "python-stdlib"),
        figs.residual_norms_figure(lm.layers),
        figs.value_norms_figure(lm.heads, "brown"),
        figs.value_profile_figure(lm.profiles, "brown", layer=1, head=0),
        figs.ablation_scatter(lm.heads, 0.7, 0.01),
        figs.token_dormancy_figure(bb.tokens, 0.89),
        figs.dynamics_figure({"adam": bb.dynamics, "sgd": bb.dynamics, "relu": bb.dynamics}),
        figs.delta_logit_bands_figure({"adam": bb.dynamics}),
    ]
    assert all(isinstance(f, go.Figure) and len(f.data) > 0 for f in built)
    hm = built[1].data[0]
    assert np.asarray(hm.z).shape == (lm_run[0].cfg.n_layers, lm_run[0].cfg.n_heads)
    # reference points: drawn once per variant that has them, only within the run's steps, one legend entry
    last = int(bb.dynamics["step"].max())
    ref = {"sgd": {"resid_first": {0: 24.0, last: 30.0, last * 10: 99.0}}, "relu": {"resid_first": {0: 23.0}}}
    fig = figs.dynamics_figure({"adam": bb.dynamics, "sgd": bb.dynamics, "relu": bb.dynamics}, reference=ref)
    refs = [t for t in fig.data if t.name == "paper (released curve)"]
    assert [list(t.y) for t in refs] == [[24.0, 30.0], [23.0]] and [t.showlegend for t in refs] == [True, False]


def test_page_layout_builds_and_registers(lm_run):
    from dash import Dash

    from dashboards.base import AppState
    from dashboards.pages.attention_sinks import PAGE

    assert PAGE.probe == "attention-sinks" and PAGE.path == "/attention-sinks"
    layout = PAGE.layout()
    text = str(layout)
    assert "as-run" in text and "as-prompt" in text
    app = Dash(__name__, suppress_callback_exceptions=True)
    app.layout = layout
    PAGE.register(app, AppState(store=lm_run[1]))
    assert len(app.callback_map) >= 3


@pytest.mark.slow
def test_smollm2_prompt_sinks(smollm2):
    """A few prompts on the embedded model: GQA mapping and a strong first-token sink somewhere."""
    assert (smollm2.cfg.n_heads, smollm2.cfg.n_key_value_heads) == (9, 3)
    r = prompt_head(smollm2, "def add(a, b):\n    return a + b\n", layer=15, head=0)
    assert r["pattern"].shape[0] == len(r["tokens"]) and r["value_norms"].shape == (len(r["tokens"]),)
    sinks = [prompt_head(smollm2, "The capital of France is Paris.", layer=l, head=0)["sink_mass"] for l in (2, 15, 28)]
    assert max(sinks) > 0.5


@pytest.mark.browser
def test_page_in_browser_shows_heatmaps_and_prompt_pattern(dash_duo, lm_run):
    """The page with a stored tiny-model run: heatmaps render; a typed prompt shows the head's pattern."""
    import socket

    from dashboards.app import create_app

    app = create_app(store=lm_run[1], model="tiny")
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dash_duo.start_server(app, port=port)
        dash_duo.wait_for_page(url=dash_duo.server_url + "/attention-sinks")
        dash_duo.wait_for_element(".figure-card .heatmaplayer", timeout=30)
        dash_duo.wait_for_contains_text("#as-contrast", "Heads whose dormancy differs most", timeout=20)
        box = dash_duo.find_element("#as-prompt")
        box.clear()
        box.send_keys("The cat sat on the mat.")
        dash_duo.find_element("#as-go").click()
        dash_duo.wait_for_contains_text("#as-prompt-stats", "sink mass", timeout=30)
        from pathlib import Path

        shots = Path(__file__).parent / "artifacts" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        driver = dash_duo.driver
        driver.set_window_size(1400, min(int(driver.execute_script("return document.documentElement.scrollHeight")) + 20, 4000))
        driver.save_screenshot(str(shots / "attention_sinks_page.png"))
        assert dash_duo.get_logs() == []
    finally:
        app.workbench_ctx.jobs.shutdown()


def test_bb3_section_compares_the_first_block_and_the_peak_layer():
    """On 3 layers the paper's layer (block 0) and the layer where Adam's <s> residual peaks are both
    reported, each ratio read from that layer at the last common step."""
    import types

    from experiments.attention_sinks import bb3_section

    def run(last: dict[int, float]) -> types.SimpleNamespace:
        rows = [{"step": step, "layer": l, "resid_first": 10.0 if step == 0 else last[l], "resid_rest": 5.0, "sink_mass": 0.5,
                 "bigram_risk": 2.0, "backcopy_risk": 0.1} for step in (0, 100) for l in range(3)]
        return types.SimpleNamespace(dynamics=pd.DataFrame(rows), examples={})

    res = {"adam": run({0: 30.0, 1: 50.0, 2: 80.0}), "sgd": run({0: 15.0, 1: 20.0, 2: 20.0}), "relu": run({0: 60.0, 1: 40.0, 2: 40.0})}
    rec = types.SimpleNamespace(charset="letters", batch_size=8, lr=1e-3)
    md = bb3_section(res, {v: None for v in res}, {v: rec for v in res})
    assert "that norm is 30.0 under Adam (from 10.0 at step 0): 2.00× the SGD run and 0.50× the ReLU-attention run" in md
    assert "grows most after layer 2: 80.0 under Adam (from 10.0 at step 0): 4.00× the SGD run and 2.00× the ReLU-attention run" in md
    assert "counted in optimiser steps" in md  # a small CPU batch says why it trades batch for steps
    timing = {"seconds_per_step": 0.19, "threads": 1}
    md = bb3_section(res, {v: timing for v in res}, {v: types.SimpleNamespace(charset="letters", batch_size=512, lr=1e-3) for v in res})
    assert "counted in optimiser steps" not in md  # the paper's batch needs no such note
    assert "adam: 0.19 s/step at batch 512, 1 thread (≈ 0.5 h for 10k steps)" in md and "GPU work" in md  # device defaults to cpu
    md = bb3_section(res, {v: {"seconds_per_step": 0.19, "threads": 2, "device": "cpu"} for v in res}, {v: rec for v in res})
    assert "sgd: 0.19 s/step at batch 8, 2 threads (≈ 12 s/step at batch 512 by linear scaling, ≈ 33.8 h for 10k steps)" in md
    md = bb3_section(res, {v: {"seconds_per_step": 0.05, "threads": 16, "device": "cuda"} for v in res}, {v: rec for v in res})
    assert "Cost per step" in md and "GPU work" not in md  # a GPU run needs no pointer to the GPU preset


def test_peak_and_sink_lines_tell_a_peak_from_whole_stream_growth():
    """The 3-layer verdict reads <s>'s norm against the other positions and the largest sink mass:
    a peak under Adam, <s> pulling away, or growth of the whole stream; a sink present or not."""
    from experiments.attention_sinks import peak_and_sink_lines

    def dyn(first: float, rest: float, sink: float) -> pd.DataFrame:  # every layer alike; step 0 at norm 10 everywhere
        return pd.DataFrame([{"step": step, "layer": l, "resid_first": 10.0 if step == 0 else first,
                              "resid_rest": 10.0 if step == 0 else rest, "sink_mass": 0.0 if step == 0 else sink * (l == 1)}
                             for step in (0, 50) for l in range(3)])

    whole = {"adam": dyn(40.0, 40.0, 0.3), "sgd": dyn(10.0, 20.0, 0.2)}
    line = peak_and_sink_lines(whole, 50)[1]
    assert "adam 1.00, 1.00, 1.00 (from 1.00, 1.00, 1.00 at step 0); sgd 0.50, 0.50, 0.50" in line
    assert "at step 50: adam 0.30 (layer 1), sgd 0.20 (layer 1); at any checkpoint: adam 0.30 (layer 1, step 50)" in line
    assert "No run has an attention sink at step 50" in line and "growth of the whole residual stream" in line
    assert "has not started at this budget" in line  # neither a sink nor <s> pulling away
    whole["adam"].loc[0, "sink_mass"] = 0.7  # a sink at step 0, layer 0 that has dissolved by the last step
    assert "at any checkpoint: adam 0.70 (layer 0, step 0)" in peak_and_sink_lines(whole, 50)[1]
    line = peak_and_sink_lines({"adam": dyn(60.0, 20.0, 0.9), "sgd": dyn(10.0, 10.0, 0.2)}, 50)[1]
    assert "A sink is present at step 50 (adam)." in line and "Under Adam ⟨s⟩ is a peak: 3.0× the other positions after layer 0." in line
    line = peak_and_sink_lines({"adam": dyn(30.0, 20.0, 0.1), "sgd": dyn(10.0, 10.0, 0.2)}, 50)[1]
    assert "⟨s⟩ is pulling away from the other positions (after layer 0 its ratio to them went from 1.00 to 1.50)" in line
    assert "no peak yet (below 2×)" in line and "whole residual stream" not in line


def test_bb3_and_full_charset_report_sections(bb_run):
    """The 3-layer comparison reads its ratios from the dynamics at the last common step, and the
    full-charset paragraph splits the pooled sink mass consistently with the head's sink mass."""
    import copy

    from experiments.attention_sinks import bb3_section, full_charset_section

    model, task, out, recipe = bb_run
    res = {v: copy.deepcopy(out.result) for v in ("adam", "sgd", "relu")}
    d = res["sgd"].dynamics
    d.loc[d["step"] == d["step"].max(), "resid_first"] /= 2  # SGD's <s> residual: half of Adam's at the last step
    d = res["relu"].dynamics
    d["sink_self_weight"] = np.where(d["step"] == 0, 0.25, 3.5)  # <s>'s ReLU self-weight: 0.25 at step 0, then 3.5
    md = bb3_section(res, {v: None for v in res}, {v: recipe for v in res})
    assert "2.00× the SGD run" in md and "1.00× the ReLU-attention run" in md
    assert "per layer 0.25 at step 0 and 3.50 at step" in md and "it starts positive, so it is trainable" in md
    assert "after the first block" in md and "grows most after layer" not in md  # one layer: block 0 is also the peak
    d["sink_self_weight"] = np.where(d["step"] == 0, 0.0, 0.0)
    assert "it starts at zero (a negative self-score)" in bb3_section(res, {v: None for v in res}, {v: recipe for v in res})
    from experiments.attention_sinks import PAPER_RELEASED

    last = int(d["step"].max())
    assert f"at step {min(PAPER_RELEASED['bb3_block0'], key=lambda s: abs(np.log1p(s) - np.log1p(last))):,}:" in md

    r = out.result
    tok = r.tokens[r.tokens.layer == 0]
    top = tok.sort_values("data_share", ascending=False).iloc[0]
    pooled = float(r.heads.loc[0, "sink_mass"])
    rest = (pooled - top.data_share * top.data_sink) / (1 - top.data_share)  # pooled = share-weighted mean
    md = full_charset_section(r, recipe)
    assert f"pooled sink mass {pooled:.3f}" in md and f"{top.data_share:.0%} of the non-trigger positions" in md
    assert f"characters together reach {rest:.2f}" in md

    from experiments.attention_sinks import fast_lr_section

    md = fast_lr_section(r, recipe)
    h = r.heads.iloc[0]
    assert f"put {h['sink_mass']:.3f} of their attention on ⟨s⟩ and {h['trigger_key_mass']:.3f} on" in md
    assert f"token-level agreement {tok['agrees'].mean():.0%}" in md and f"lr {recipe.lr:g} and batch {recipe.batch_size}" in md
    # the parking sentence and the peak-then-fall sentence appear only when the run shows them
    parked = copy.deepcopy(r)
    parked.heads.loc[0, "sink_mass"], parked.heads.loc[0, "trigger_key_mass"] = 0.1, 0.7
    dyn = parked.dynamics
    first = dyn.index[dyn["layer"] == 0][0]
    dyn.loc[first, "sink_mass"], dyn.loc[first, "trigger_key_mass"] = 0.6, 0.2
    md = fast_lr_section(parked, recipe)
    assert "the trigger tokens, not ⟨s⟩, become its sink" in md
    assert f"peaked at 0.600 (step {int(dyn.loc[first, 'step'])}) and fell afterwards" in md and "from 0.200 to 0.700" in md
    calm = copy.deepcopy(r)
    calm.heads.loc[0, "sink_mass"], calm.heads.loc[0, "trigger_key_mass"] = 0.9, 0.05
    calm.dynamics["sink_mass"] = calm.dynamics["sink_mass"].clip(upper=0.9)
    md = fast_lr_section(calm, recipe)
    assert "become its sink" not in md and "fell afterwards" not in md

    from experiments.attention_sinks import dormant_modes_section, lr_comparison_section

    md = lr_comparison_section(r, {"seconds": 90.0}, recipe, r)
    dyn = r.dynamics[r.dynamics.layer == 0]
    half = dyn.iloc[(dyn["step"] - recipe.steps // 2).abs().argmin()]
    assert f"reaches sink mass {h['sink_mass']:.3f} (at step {int(half['step'])}: {half['sink_mass']:.3f})" in md
    assert f"lr {recipe.lr:g} (batch {recipe.batch_size}, {recipe.steps} steps in 1.5 min)" in md
    assert f"token-level agreement {tok['agrees'].mean():.0%}" in md and f"against {h['sink_mass']:.3f}" in md
    # the dormant-modes paragraph: characters with a low sink, their share and same-character mass
    modes = copy.deepcopy(r)
    t = modes.tokens
    nt = t.index[(t.layer == 0) & ~t.is_trigger & (t.data_share > 0)]
    t.loc[nt, "data_sink"] = 0.95
    t.loc[nt[0], ["data_sink", "data_same_token"]] = [0.01, 0.97]
    md = dormant_modes_section(modes)
    low = t.loc[nt[0]]
    assert f"{low.token!r} ({low.data_share:.1%} of the positions, sink 0.01, 0.97 on keys holding the same character)" in md
    assert f"{len(nt) - 1} of the {len(nt)} non-trigger characters" in md and "their pooled sink mass 0.950" in md
    assert f"{low.token!r} put their attention on earlier copies" in md and f"fill {low.data_share:.0%} of the" in md
    assert ("The token-level test calls" in md) == bool(low.active)
    t.loc[nt[0], "data_same_token"] = 0.1  # a low sink that does not go to the same character
    assert "earlier copies" not in dormant_modes_section(modes)
    t.loc[nt, "data_sink"] = 0.95
    assert dormant_modes_section(modes) == ""


def test_seed_spread_section_counts_the_seeds_that_meet_all_four(bb_run):
    """The seed table reads each seed's four acceptance numbers from its result, counts the seeds
    that meet all four, and names the self-copying characters where a seed has them."""
    import copy

    from experiments.attention_sinks import (
        bb1_acceptance,
        bb1_section,
        seed_spread_section,
    )

    model, task, out, recipe = bb_run
    good = copy.deepcopy(out.result)
    t = good.tokens
    first = t.index[t.layer == 0]
    t.loc[first, "agrees"] = True
    nt = t.index[(t.layer == 0) & ~t.is_trigger & (t.data_share > 0)]
    t.loc[nt, ["data_sink", "data_same_token"]] = [0.95, 0.0]
    good.heads.loc[0, "sink_mass"] = 0.85
    good.bb.update(backcopy_risk=0.001, bigram_risk=good.bb["bigram_oracle_risk"] * 1.01)
    acc = bb1_acceptance(good, recipe)
    assert acc["all_met"] and acc["agreement"] == 1.0 and acc["paired_gap"] == pytest.approx(0.01)
    assert "> 0.8: met" in bb1_section(good, None, recipe) and "same split: met (100% agree)" in bb1_section(good, None, recipe)

    bad = copy.deepcopy(good)
    bt = bad.tokens
    bt.loc[nt[0], ["data_sink", "data_same_token", "agrees"]] = [0.02, 0.97, False]
    bad.heads.loc[0, "sink_mass"] = 0.7
    low = bt.loc[nt[0]]
    acc = bb1_acceptance(bad, recipe)
    assert not acc["all_met"] and acc["met"]["backcopy"] and not acc["met"]["sink"] and acc["off_split"] == [low.token]
    md = seed_spread_section([(0, bad), (1, good), (2, good)], recipe)
    assert "2 of 3 meet all four acceptance criteria" in md and "0.800 on average (from 0.700 to 0.850)" in md
    row0 = next(line for line in md.splitlines() if line.startswith("| 0 |"))
    assert f"{low.token!r} {low.data_share:.0%}" in row0 and f"{low.token!r} {low.data_share:.1%}" in row0 and row0.endswith("| no |")
    assert next(line for line in md.splitlines() if line.startswith("| 1 |")).endswith("| none | none | yes |")
    assert "self-copy mode" in md and "self-copy mode" not in seed_spread_section([(1, good)], recipe)
    # the still-rising sentence reads the last two checkpoints: sink mass +0.1 over one doubling of the step count
    from experiments.attention_sinks import last_sink_slope

    d = good.dynamics
    steps = sorted(d.loc[(d.layer == 0) & (d.step > 0), "step"].unique())
    d.loc[d.step == steps[-2], "sink_mass"], d.loc[d.step == steps[-1], "sink_mass"] = 0.5, 0.6
    d.loc[d.step == steps[-1], "step"] = 2 * steps[-2]
    assert last_sink_slope(good) == pytest.approx(0.1)
    assert "still rises, by 0.10 to 0.10 per doubling" in seed_spread_section([(1, good)], recipe)
    d.loc[d.step == 2 * steps[-2], "sink_mass"] = 0.5
    assert "still rises" not in seed_spread_section([(1, good)], recipe)


def test_dormancy_verdicts_leave_heads_within_two_standard_errors_undecided():
    import pandas as pd

    from probes.attention_sinks import dormancy_verdicts

    heads = pd.DataFrame({
        "sink_mass": [0.9, 0.9, 0.9, 0.9, 0.5, 0.9, 0.9],
        "delta_loss": [0.002, -0.003, 0.009, 0.03, 0.0, float("nan"), 0.008],
        "delta_loss_se": [0.001, 0.001, 0.002, 0.005, 0.0, 0.0, float("nan")],
    })
    got = dormancy_verdicts(heads, dormant_sink=0.7, dormant_loss=0.01).tolist()
    # 0.002+0.002 <= 0.01: dormant; |-0.003|+0.002: dormant; 0.009±0.004 straddles 0.01: undecided;
    # 0.03-0.01 > 0.01: active; low sink: active; no ablation: untested; no SE: the point comparison
    assert got == ["dormant", "dormant", "undecided", "active", "active", "untested", "dormant"]
