"""The function-token page and figures, on stored runs of the tiny model with random SAEs."""

from __future__ import annotations

import json

import plotly.graph_objects as go
import pytest
from sae_standins import mini_corpus, saved_sae


@pytest.fixture
def stored(store, tiny, brown, tmp_path):
    from workbench.runner import run_probe

    corpus = mini_corpus(brown, 8)
    s0 = saved_sae(tmp_path / "s0", hook="blocks.0.hook_resid_post", seed=0)
    s1 = saved_sae(tmp_path / "s1", hook="blocks.1.hook_resid_post", seed=1)
    ft = run_probe("function-tokens", tiny, corpus, {"saes": [str(s0), str(s1)], "max_tokens": 1024, "seq_len": 64}, store=store)
    loss = run_probe("function-token-loss", tiny, corpus, {"max_tokens": 512, "seq_len": 64}, store=store)
    steer = run_probe("function-token-steering", tiny, corpus, {"sae": str(s1), "prompt_a": "The capital of Spain is:",
                                                                 "prompt_b": "The capital of Chile is:", "max_new_tokens": 2}, store=store)
    return {"ft": ft.run_id, "loss": loss.run_id, "steer": steer.run_id}


def test_page_builders_and_figures_from_stored_runs(store, stored):
    from dash import html

    from dashboards.base import AppState
    from dashboards.figures import function_tokens as figs
    from dashboards.pages import function_tokens as page

    ctx = AppState(store)
    res = ctx.result(stored["ft"])
    assert res.labels == ["L0", "L1"]
    for fig in (figs.degree_rank_figure(res), figs.coverage_figure(res), figs.coverage_table_figure(res), figs.comparison_figure(res),
                figs.feature_degree_figure(res), figs.bipartite_figure(res.layer_graph("L1"))):
        assert isinstance(fig, go.Figure) and fig.data
    cov = figs.coverage_figure(res)
    assert list(cov.data[0].y) == pytest.approx((100 * res.coverage.query("sae == 'L0'")["cov_active"]).tolist())
    rows = figs.coverage_rows(res)
    assert rows.loc[rows["k"] == 1, "paper L20"].item() == 51.32 and rows["k"].tolist() == list(range(1, 11))

    summary = json.dumps(page.summary_block(res).to_plotly_json(), default=str)
    assert "function tokens" in summary and f"{res.function_set['size']} at 40% mass" in summary
    feature = int(res.features.query("sae == 'L1' and active_count > 0")["feature"].iloc[0])
    ctxs = page.contexts_block(res, "L1", feature)
    assert ctxs.id == "ft-contexts-body" and "L1 feature" in json.dumps(ctxs.to_plotly_json(), default=str)
    assert "out of range" in json.dumps(page.contexts_block(res, "L1", 10**6).to_plotly_json(), default=str)
    top = res.tokens.sort_values("rank").iloc[0]
    tok = json.dumps(page.token_block(res, "L0", top["token"]).to_plotly_json(), default=str)
    assert f"activates {int(top['degree_L0'])} features" in tok
    assert "no token" in json.dumps(page.token_block(res, "L0", "zzzz-not-a-token").to_plotly_json(), default=str)

    g = figs.styled_graph(res.layer_graph("L0"))
    pos = figs.bipartite_positions(g)
    xs = {g.nodes[n]["kind"]: x for n, (x, _) in pos.items()}
    assert xs["token"] < xs["feature"]  # tokens on the left
    assert all("title" in a for _, a in g.nodes(data=True))

    loss = ctx.result(stored["loss"])
    assert isinstance(figs.loss_bars_figure([("tiny", loss.table)]), go.Figure)
    steer = ctx.result(stored["steer"])
    assert figs.case_heatmaps_figure(steer).data and isinstance(page.steering_block(steer), html.Div)


def test_page_is_discovered_and_registers(store):
    from dashboards.app import create_app

    app = create_app(store=store, model="tiny")
    assert "/function-tokens" in [p.path for p in app.workbench_pages]
    assert not [b for b in app.workbench_broken if "function_tokens" in b.module]
    app.workbench_ctx.jobs.shutdown()
