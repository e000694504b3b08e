"""Linguistic collapse: metrics on a planted simplex ETF, tiled against dense, one- against two-pass
variances, the feature definition, resume, save/load, the sweep's correlations, and the page."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from tolerances import rounding

from probes.linguistic_collapse import metrics as ncm
from probes.linguistic_collapse import probe as lc
from workbench.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are tiny: one intra-op thread avoids thread start-up and contention costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# min_count 1 here: the brute-force checks below compare every seen class
SMALL = dict(max_tokens=1200, heldout_max_tokens=500, seq_len=32, batch_size=4, sensitivity_min_counts=[1, 3], top_classes=8, min_count=1)


@pytest.fixture(scope="module")
def tiny_result(brown):
    """One real run on the tiny model, shared by the tests that only read it."""
    from workbench.models import load_model

    return lc.run(load_model("tiny", device="cpu"), brown, lc.LinguisticCollapseConfig(**SMALL))


# ----- synthetic: a planted simplex ETF -----

def planted_etf(k: int = 12, d: int = 24, radius: float = 3.0, noise: float = 1e-6, per_class: int = 20, seed: int = 0):
    """Class means on a simplex ETF (plus an offset orthogonal to it), features = mean + tiny noise."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    basis, off_dir = q[:, :k].T, q[:, k]  # k orthonormal rows, and a direction orthogonal to them
    etf = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1.0 / k)
    centred = radius * etf @ basis  # [k, d], unit-free simplex scaled to norm `radius`
    means = centred + 5.0 * off_dir
    y = torch.arange(k).repeat(per_class)
    x = means[y] + noise * torch.randn(len(y), d, generator=g, dtype=torch.float64)
    return x, y, centred, means


def _tiny_for_vocab(k: int, d: int):
    from workbench.models import load_model

    return load_model("tiny", device="cpu", d_vocab=k, d_model=d, d_head=d // 4, n_layers=1)


@pytest.mark.parametrize("noise", [0.0, 1e-6])
def test_planted_simplex_etf_takes_ideal_values(noise):
    k, d, per_class = 12, 24, 20
    tol = 1e-9 + 50 * noise  # deviations from the ideal are of the order of the planted noise
    x, y, centred, _ = planted_etf(k, d, noise=noise, per_class=per_class)
    model = _tiny_for_vocab(k, d)
    acc = lc.ClassStatsAccumulator(model)
    for part in torch.split(torch.arange(len(y)), 37):  # several batches
        acc.add(x[part], y[part])
    assert torch.equal(acc.counts, torch.full((k,), float(per_class), dtype=torch.float64))
    means = ncm.class_means(acc.sums, acc.counts)
    var = ncm.one_pass_variances(acc.sq, acc.sums, acc.counts)
    w = centred  # a self-dual classifier
    m = ncm.collapse_metrics(means, var, w, tile_size=5)
    # CDNV = (var_i + var_j) / (2 |mu_i - mu_j|^4). A one-pass variance E|x|^2 - |E x|^2 of a class
    # whose features are all equal is pure cancellation: its error is bounded by the rounding of
    # sums of per_class * d terms of size max |x|^2 (float64), plus the planted noise's variance.
    var_bound = rounding(float((x * x).sum(1).max()), n_terms=per_class * d) + 4 * d * noise**2
    min_dist = float(torch.pdist(centred).min())
    assert float(var.abs().max()) <= var_bound
    assert m["nc1_cdnv"] <= var_bound / min_dist**4
    assert m["nc2_equinorm_cov"] < tol and m["nc2_norm_cov"] < tol
    assert m["nc2_cos_mean"] == pytest.approx(-1.0 / (k - 1), abs=tol)
    assert m["nc2_cos_std"] < tol
    assert m["nc2_etf_error"] < tol
    assert m["gnc2_uniformity"] < tol
    assert m["nc3_duality_mean"] == pytest.approx(1.0, abs=tol)
    assert m["unc3_cov"] < tol and m["nc3_dual_error"] < tol
    assert m["n_pairs"] == k * (k - 1) // 2

    # NC4: held-out features from the same ETF; the linear classifier is x @ W^T
    xh, yh, _, _ = planted_etf(k, d, noise=noise, seed=0, per_class=5)
    xh = xh + 1e-6 * torch.randn(xh.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    held = lc.HeldoutAccumulator(model, acc.counts, means, thresholds=[1, 25], main=1, tile_size=5)
    held.add(xh.float(), yh, (xh @ w.T).float())
    assert held.state["positions"][0] == len(yh) and held.state["mismatch"][0] == 0 and held.state["mismatch_kept"][0] == 0
    assert held.state["positions"][1] == 0  # no class has 25 samples: nothing is counted at that threshold
    assert held.state["correct"][0] == len(yh)


def test_metrics_move_away_from_ideal_with_noise():
    """The same planted geometry with large within-class noise is measurably less collapsed."""
    k, d = 12, 24
    out = []
    for noise in (1e-3, 1.0):
        x, y, centred, _ = planted_etf(k, d, noise=noise, per_class=50)
        counts = torch.bincount(y, minlength=k).double()
        sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x)
        sq = torch.zeros(k, dtype=torch.float64).index_add_(0, y, (x * x).sum(1))
        out.append(ncm.collapse_metrics(ncm.class_means(sums, counts), ncm.one_pass_variances(sq, sums, counts), centred))
    assert out[1]["nc1_cdnv"] > 1e4 * out[0]["nc1_cdnv"]
    assert out[1]["nc2_cos_std"] > out[0]["nc2_cos_std"]
    assert out[1]["nc3_duality_mean"] < out[0]["nc3_duality_mean"]


# ----- tiled against dense (independent brute force) -----

def _dense_reference(means: torch.Tensor, var: torch.Tensor, w: torch.Tensor) -> dict[str, float]:
    k = means.shape[0]
    c = means - means.mean(0)
    iu = torch.triu_indices(k, k, 1)
    dist = (means[:, None, :] - means[None, :, :]).norm(dim=-1)  # explicit differences, no Gram trick
    cdnv = ((var[:, None] + var[None, :]) / (2 * dist**4))[iu[0], iu[1]]
    u = c / c.norm(dim=1, keepdim=True)
    cos = (u @ u.T)[iu[0], iu[1]]
    logd = torch.log(1.0 / (u[:, None, :] - u[None, :, :]).norm(dim=-1))[iu[0], iu[1]]
    ideal = (torch.eye(k, dtype=torch.float64) - 1.0 / k) / math.sqrt(k - 1)

    def structure(a, b):
        s = b @ a.T
        return float(torch.linalg.matrix_norm(s / torch.linalg.matrix_norm(s) - ideal))

    logn = c.norm(dim=1).log()
    dual = (w / w.norm(dim=1, keepdim=True) * u).sum(1)
    return {"nc1_cdnv": float(cdnv.mean()), "nc2_cos_mean": float(cos.mean()), "nc2_cos_std": float(cos.std(unbiased=False)),
            "gnc2_logdist_mean": float(logd.mean()), "gnc2_uniformity": float(logd.var(unbiased=False)),
            "nc2_etf_error": structure(c, c), "nc3_dual_error": structure(c, w),
            "nc2_equinorm_cov": float(logn.std() / logn.mean().abs()), "nc3_duality_mean": float(dual.mean()),
            "unc3_cov": float(dual.std() / dual.mean().abs())}


@pytest.mark.parametrize("tile", [1, 5, 16, 37, 1000])
def test_tiled_pairwise_equals_dense(tile):
    g = torch.Generator().manual_seed(3)
    k, d = 37, 8
    means = torch.randn(k, d, generator=g, dtype=torch.float64) * 2 + 1
    var = torch.rand(k, generator=g, dtype=torch.float64)
    w = means - means.mean(0) + 0.7 * torch.randn(k, d, generator=g, dtype=torch.float64)
    got = ncm.collapse_metrics(means, var, w, tile_size=tile)
    ref = _dense_reference(means, var, w)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert got["n_pairs"] == k * (k - 1) // 2 and got["nc1_degenerate_pairs"] == 0


def test_etf_error_floor_bounds_the_error_and_is_attained_by_a_tight_frame():
    g = torch.Generator().manual_seed(11)
    k, d = 40, 6
    for scale in (torch.ones(d), torch.logspace(0, 2, d)):
        c = torch.randn(k, d, generator=g, dtype=torch.float64) * scale
        c = c - c.mean(0)
        assert ncm.etf_structure_error(c, c) >= ncm.etf_error_floor(k, d) - 1e-12
    # d orthonormal columns orthogonal to the all-ones vector: a rank-d projection Gram, the floor exactly
    basis = torch.cat([torch.ones(k, 1, dtype=torch.float64), torch.randn(k, d, generator=g, dtype=torch.float64)], 1)
    q, _ = torch.linalg.qr(basis)
    frame = 3.0 * q[:, 1:]
    assert ncm.etf_structure_error(frame, frame) == pytest.approx(ncm.etf_error_floor(k, d), abs=1e-12)
    assert ncm.etf_error_floor(d + 1, d) == 0.0  # a simplex ETF fits


def test_coincident_means_are_left_out_and_counted():
    means = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]], dtype=torch.float64)
    var = torch.ones(4, dtype=torch.float64)
    got = ncm.collapse_metrics(means, var, means, tile_size=2)
    ref = _dense_reference(means[1:], var[1:], means[1:])
    assert got["nc1_degenerate_pairs"] == 1 and got["gnc2_degenerate_pairs"] == 1
    assert math.isfinite(got["nc1_cdnv"]) and math.isfinite(got["gnc2_uniformity"])
    assert got["n_pairs"] == 6 and ref["nc1_cdnv"] > 0


def test_ncc_predict_matches_brute_force_for_each_mask():
    g = torch.Generator().manual_seed(5)
    x, centres = torch.randn(50, 6, generator=g), torch.randn(23, 6, generator=g)
    masks = [torch.ones(23, dtype=torch.bool), torch.arange(23) % 3 == 0, torch.zeros(23, dtype=torch.bool)]
    got = ncm.ncc_predict(x, centres, masks, tile_size=4)
    dist = torch.cdist(x, centres)
    assert torch.equal(got[0], dist.argmin(1))
    sub = torch.arange(23)[masks[1]]
    assert torch.equal(got[1], sub[dist[:, sub].argmin(1)])
    assert bool((got[2] == -1).all())


# ----- variances -----

def test_one_pass_and_two_pass_variances_agree_on_synthetic_data():
    g = torch.Generator().manual_seed(7)
    k, d, n = 9, 16, 2000
    y = torch.randint(0, k, (n,), generator=g)
    x = 40.0 + torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.01, 2, k, dtype=torch.float64)[y, None]
    counts = torch.bincount(y, minlength=k).double()
    sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, y, x)
    sq = torch.zeros(k, dtype=torch.float64).index_add_(0, y, (x * x).sum(1))
    one = ncm.one_pass_variances(sq, sums, counts)
    two = torch.stack([((x[y == c] - x[y == c].mean(0)) ** 2).sum(1).mean() for c in range(k)])
    assert torch.allclose(one, two, rtol=1e-9)


def test_one_pass_and_two_pass_agree_on_a_model(tiny, brown, tiny_result):
    one = tiny_result
    two = lc.run(tiny, brown, lc.LinguisticCollapseConfig(**SMALL, variance="two-pass"))
    v1, v2 = one.classes["variance"].to_numpy(), two.classes["variance"].to_numpy()
    np.testing.assert_allclose(v1, v2, rtol=1e-7, atol=1e-10)
    assert one.metrics["nc1_cdnv"] == pytest.approx(two.metrics["nc1_cdnv"], rel=1e-7)


# ----- features, a real run, errors -----

@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_features_are_the_unembedding_input(fixture, request, brown):
    """gain * hook_normalized (+ bias) @ W_U + b_U reproduces the model's logits."""
    from workbench.config import StreamConfig
    from workbench.slices import corpus_batches

    model = request.getfixturevalue(fixture)
    site, gain, bias = lc.feature_site(model)
    batch = next(iter(corpus_batches(model, brown, StreamConfig(max_tokens=128, seq_len=32, batch_size=2))))
    logits, cache = model.run_with_cache(batch.tokens, names_filter=[site])
    x, y, mask = lc.features_and_labels(batch, cache[site], gain, bias, skip_bos=True)
    assert x.shape[0] == int(mask.sum()) and not bool(batch.is_bos[:, :-1][mask].any())
    recon = x @ model.W_U + model.b_U
    torch.testing.assert_close(recon, logits[:, :-1][mask], rtol=1e-4, atol=1e-4)


def test_real_run_counts_and_ranges(tiny_result):
    res = tiny_result
    m = res.metrics
    assert m["n_tokens"] == int(res.classes["count"].sum()) and m["n_classes"] == len(res.classes)
    assert m["n_classes_seen"] == m["n_classes"]  # min_count 1 keeps every seen class
    assert -1 <= m["nc2_cos_mean"] <= 1 and 0 <= m["nc4_mismatch"] <= 1 and m["heldout_loss"] > 0
    sens = res.sensitivity.set_index("min_count")
    assert list(sens.index) == [1, 3] and sens.loc[3, "n_classes"] <= sens.loc[1, "n_classes"]
    assert sens.loc[3, "n_classes"] == int((res.classes["count"] >= 3).sum())
    assert res.geometry["cos"].shape == (8, 8) and res.geometry["proj_means"].shape == (8, 2)
    top = res.classes.sort_values("count", ascending=False, kind="stable")["token_id"].head(8).tolist()
    assert res.geometry["ids"].tolist() == top


def _cached_features(model, brown, scfg):
    """Every (feature, next token, logits) of a slice from a plain cached forward pass, no accumulator."""
    from workbench.slices import corpus_batches

    xs, ys, logits_all = [], [], []
    for batch in corpus_batches(model, brown, scfg):
        logits, cache = model.run_with_cache(batch.tokens, names_filter=["ln_final.hook_normalized"])
        feats = cache["ln_final.hook_normalized"] * model.ln_final.w + model.ln_final.b
        for i in range(batch.tokens.shape[0]):
            for t in range(batch.tokens.shape[1] - 1):
                if batch.valid[i, t] and batch.valid[i, t + 1] and not batch.is_bos[i, t]:
                    xs.append(feats[i, t]), ys.append(int(batch.tokens[i, t + 1])), logits_all.append(logits[i, t])
    return torch.stack(xs).double(), torch.tensor(ys), torch.stack(logits_all).double()


def test_streamed_run_equals_brute_force_on_cached_features(tiny, brown, tiny_result):
    """The whole streamed pipeline (counts, two-pass-free variances, metrics, NC4, loss) against dense
    statistics of every feature row kept in memory, class by class."""
    cfg = lc.LinguisticCollapseConfig(**SMALL)
    with torch.no_grad():
        x, y, _ = _cached_features(tiny, brown, cfg)
        xh, yh, logits_h = _cached_features(tiny, brown, cfg.heldout_stream())
    ids = torch.unique(y)
    means = torch.stack([x[y == c].mean(0) for c in ids])
    var = torch.stack([((x[y == c] - x[y == c].mean(0)) ** 2).sum(1).mean() for c in ids])
    w = tiny.W_U.detach().double()[:, ids].T
    ref = _dense_reference(means, var, w)
    m = tiny_result.metrics
    assert m["n_classes"] == len(ids) and m["n_tokens"] == len(y)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    seen = torch.isin(yh, ids)
    ncc = ids[torch.cdist(xh[seen], means).argmin(1)]
    assert m["nc4_positions"] == int(seen.sum())
    assert m["nc4_mismatch"] == pytest.approx(float((ncc != logits_h[seen].argmax(1)).double().mean()), abs=1.5 / int(seen.sum()))
    loss = torch.nn.functional.cross_entropy(logits_h, yh)
    assert m["heldout_loss"] == pytest.approx(float(loss), rel=1e-5)
    assert m["heldout_positions"] == len(yh)


def test_config_errors(tiny, brown):
    with pytest.raises(ConfigError, match="overlap"):
        lc.LinguisticCollapseConfig(split="all").validate()
    with pytest.raises(ConfigError, match="min_count"):
        lc.run(tiny, brown, lc.LinguisticCollapseConfig(**{**SMALL, "max_tokens": 100, "min_count": 10**6}))
    from workbench.models import load_model

    processed = load_model("tiny", numerics="processed", device="cpu")
    with pytest.raises(ConfigError, match="raw"):
        lc.run(processed, brown, lc.LinguisticCollapseConfig(**SMALL))


# ----- store: resume and round trip -----

def _same(a: lc.LinguisticCollapseResult, b: lc.LinguisticCollapseResult) -> None:
    assert a.metrics == b.metrics
    pd.testing.assert_frame_equal(a.classes, b.classes)
    pd.testing.assert_frame_equal(a.sensitivity, b.sensitivity)
    assert a.geometry.keys() == b.geometry.keys()
    for k in a.geometry:
        assert torch.equal(a.geometry[k], b.geometry[k]), k


@pytest.mark.parametrize("victim", ["ClassStatsAccumulator", "HeldoutAccumulator"])
def test_resume_gives_the_identical_result(victim, tiny, brown, tmp_path, monkeypatch):
    import functools

    import workbench.slices
    from workbench.activations import stream
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    cfg = {**SMALL, "batch_size": 1, "max_tokens": 600, "heldout_max_tokens": 400}  # one chunk per batch
    reference = run_probe("linguistic-collapse", tiny, brown, cfg, store=ResultStore(tmp_path / "ref")).result

    monkeypatch.setattr(workbench.slices, "stream", functools.partial(stream, checkpoint_every=2))
    cls = getattr(lc, victim)
    original = cls.update
    calls = {"n": 0, "stats": 0}

    def failing(self, *args):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *args)

    monkeypatch.setattr(cls, "update", failing)
    store = ResultStore(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        run_probe("linguistic-collapse", tiny, brown, cfg, store=store)
    monkeypatch.setattr(cls, "update", original)

    stats_update = lc.ClassStatsAccumulator.update

    def counting(self, *args):
        calls["stats"] += 1
        return stats_update(self, *args)

    monkeypatch.setattr(lc.ClassStatsAccumulator, "update", counting)
    resumed = run_probe("linguistic-collapse", tiny, brown, cfg, store=store)
    assert not resumed.reused
    if victim == "HeldoutAccumulator":
        assert calls["stats"] == 0  # the finished first pass is not redone
    else:
        assert 0 < calls["stats"] <= reference.meta["slice"]["n_chunks"] - 6  # resumed from the checkpoint at batch 6
    _same(resumed.result, reference)


def test_save_load_round_trip(tiny_result, tmp_path):
    res = tiny_result
    back = lc.LinguisticCollapseResult.load(res.save(tmp_path / "r"))
    _same(res, back)
    assert back.summary() == res.summary() and back.meta["feature_site"] == "ln_final.hook_normalized"


# ----- sweep correlations and the dashboard -----

def test_spearman_correlations_against_scipy_free_reference():
    table = pd.DataFrame({"val_loss": [4.0, 3.0, 2.0, 1.0, 5.0], "n_params": [1, 2, 3, 4, 0],
                          "nc1_cdnv": [0.4, 0.3, 0.2, 0.1, 0.5], "nc4_mismatch": [0.1, 0.2, 0.3, 0.4, 0.0]})
    from probes.linguistic_collapse.sweep import correlations

    c = correlations(table, ["nc1_cdnv", "nc4_mismatch"]).set_index("metric")
    assert c.loc["nc1_cdnv", "rho_loss"] == pytest.approx(1.0) and c.loc["nc1_cdnv", "rho_params"] == pytest.approx(-1.0)
    assert c.loc["nc4_mismatch", "rho_loss"] == pytest.approx(-1.0)
    ranks = lambda s: s.rank().to_numpy()  # noqa: E731
    shuffled = table.assign(nc1_cdnv=[0.2, 0.5, 0.1, 0.3, 0.4])
    ref = np.corrcoef(ranks(shuffled["nc1_cdnv"]), ranks(shuffled["val_loss"]))[0, 1]
    assert correlations(shuffled, ["nc1_cdnv"]).loc[0, "rho_loss"] == pytest.approx(ref)


@pytest.fixture(scope="module")
def small_sweep(brown, tiny_result):
    """Real probe results on three random tiny models of different shapes, tabulated like a sweep."""
    from probes.linguistic_collapse.sweep import SweepResult, correlations, model_row
    from workbench.models import load_model
    from workbench.zoo import LMRecipe

    rows, results = [], []
    for i, (layers, width) in enumerate([(2, 64), (1, 32), (1, 16)]):
        model = load_model("tiny", device="cpu", n_layers=layers, d_model=width, d_head=width // 4, seed=i)
        res = tiny_result if i == 0 else lc.run(model, brown, lc.LinguisticCollapseConfig(**SMALL))
        results.append(res)
        rows.append(model_row(LMRecipe(n_layers=layers, d_model=width, steps=1, seed=i), model, res, i, f"k{i}"))
    table = pd.DataFrame(rows)
    return SweepResult(table=table, correlations=correlations(table)), results


def test_figures_build_on_real_results(small_sweep):
    from dashboards.figures import linguistic_collapse as figs

    sweep, results = small_sweep
    assert len(figs.scaling_figure(sweep.table, "nc1_cdnv").data) >= 2
    grid = figs.scaling_grid(sweep.table, ["nc1_cdnv", "nc4_mismatch"])
    assert len(grid.data) > 0
    assert figs.correlation_figure(sweep.correlations).data[0].z.shape[0] == len(sweep.correlations)
    res = results[0]
    heat = figs.cosine_heatmap(res)
    assert heat.data[0].z.shape == (8, 8)
    proj = figs.projection_figure(res)
    assert any("self-duality" in (t.hovertemplate or "") for t in proj.data)
    assert len(figs.sensitivity_figure(res).data) > 0
    rows = dict(figs.summary_rows(res))
    assert "NC1 CDNV" in rows


def test_page_layout_and_callbacks_register(small_sweep, store):
    from dash import Dash

    from dashboards.base import AppState
    from dashboards.pages import linguistic_collapse as page

    assert page.PAGE.path == "/linguistic-collapse" and page.PAGE.probe == "linguistic-collapse"
    layout = page.PAGE.layout()
    assert "lc-run" in str(layout) and "lc-sweep" in str(layout)
    app = Dash(__name__, suppress_callback_exceptions=True)
    page.PAGE.register(app, AppState(store=store))
    assert len(app.callback_map) >= 3
    sweep, results = small_sweep
    figs = page.model_view(results[0])
    assert len(figs) == 4
    assert len(page.sweep_view(sweep, "nc1_cdnv")) == 2


def test_run_sweep_trains_runs_stores_and_reuses(store, brown, monkeypatch):
    """The sweep's orchestration with the zoo stubbed by tiny random models (training is tested in the core)."""
    from probes.linguistic_collapse import sweep
    from workbench.models import load_model

    trained: list[str] = []
    monkeypatch.setattr(sweep, "train_lm", lambda recipe, device="cpu", progress=True: trained.append(recipe.name))
    monkeypatch.setattr(sweep, "load_lm", lambda recipe, device="cpu": load_model(
        "tiny", device="cpu", n_layers=recipe.n_layers, d_model=recipe.d_model, d_head=recipe.d_model // 4, seed=recipe.seed))
    probe_cfg = {k: v for k, v in SMALL.items() if k != "top_classes"}
    cfg = sweep.SweepConfig(depths=[1, 2], widths=[16, 32], steps=[5], probe=probe_cfg)
    result, run_id = sweep.run_sweep(cfg, store=store)
    assert len(trained) == 4 and len(result.table) == 4
    assert sorted(zip(result.table["n_layers"], result.table["d_model"])) == [(1, 16), (1, 32), (2, 16), (2, 32)]
    params = result.table.set_index(["n_layers", "d_model"])["n_params"]
    assert params[(2, 32)] > params[(1, 32)] > params[(1, 16)] and (result.table["val_loss"] > 0).all()
    assert set(result.correlations["metric"]) == set(sweep.METRICS)
    row = store.get_run(run_id)
    assert row["probe"] == sweep.SWEEP_STUDY and row["status"] == "done"
    back = sweep.load_sweep(store, run_id)
    pd.testing.assert_frame_equal(back.table, result.table)
    n_runs = len(store.runs())
    again, run2 = sweep.run_sweep(cfg, store=store)
    # a study recomposes from its parts: the (cached) models are asked for again, every probe run is
    # reused, and the study's own result, keyed by those parts, is reused too
    assert store.get_run(run2)["status"] == "reused" and len(trained) == 8
    new_rows = store.runs(limit=len(store.runs()) - n_runs)
    assert sorted(r["status"] for r in new_rows) == ["reused"] * 5 and again.table.equals(result.table)
    with pytest.raises(ConfigError, match="divisible"):
        sweep.SweepConfig(widths=[30]).validate()


def test_sweep_partial_correlation_controls_for_size():
    """Loss and metric both driven by size and by seed noise shared between them: the plain
    Spearman correlation mixes the two; the partial one controlling for size finds the seed part."""
    import numpy as np
    import pandas as pd

    from probes.linguistic_collapse.sweep import correlations
    from workbench.stats import partial_correlation

    rng = np.random.default_rng(0)
    n_params = np.repeat([1e4, 3e4, 1e5, 3e5], 6)
    steps = np.tile([150, 450], 12)
    shared = rng.normal(size=24)
    val_loss = 5 - 0.3 * np.log(n_params) - 0.001 * steps + 0.2 * shared
    metric = -0.5 * np.log(n_params) + 0.3 * shared + 0.05 * rng.normal(size=24)
    table = pd.DataFrame({"nc1_cdnv": metric, "val_loss": val_loss, "n_params": n_params, "steps": steps})
    row = correlations(table, ["nc1_cdnv"]).iloc[0]
    ref = partial_correlation(metric, val_loss, np.column_stack([n_params, steps]), method="spearman")
    assert row["partial_rho_loss"] == ref.value and row["partial_lo"] == ref.lo and row["n_partial"] == 24
    assert row["partial_rho_loss"] > 0.5 and row["partial_p"] < 0.01  # the shared seed noise, found
    assert row["partial_lo"] < row["partial_rho_loss"] < row["partial_hi"]


def test_singleton_classes_are_left_out_by_default(tiny, brown):
    """A class seen once has zero variance by construction: the default min_count 2 keeps only
    classes with two or more samples, and the sensitivity table still reports min_count 1."""
    cfg = lc.LinguisticCollapseConfig(**{k: v for k, v in SMALL.items() if k != "min_count"})
    assert cfg.min_count == 2
    res = lc.run(tiny, brown, cfg)
    m, sens = res.metrics, res.sensitivity.set_index("min_count")
    assert m["min_count"] == 2 and bool((res.classes["count"] >= 2).all()) and m["n_classes"] == len(res.classes)
    assert list(sens.index) == [1, 2, 3] and sens.loc[1, "n_classes"] == m["n_classes_seen"] > m["n_classes"] == sens.loc[2, "n_classes"]
