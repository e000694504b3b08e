"""The dashboard without a browser: page discovery, run requests and the worker, the prompt
analysis, figures, graph conversion and exports, and input checks through Dash's HTTP endpoint."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import networkx as nx
import plotly.graph_objects as go
import pytest

from workbench.errors import ConfigError, PromptTooLongError


# ----- helpers -----
def dash_post(app, output: str, outputs: list[dict], inputs: list[dict], state: list[dict] | None = None) -> tuple[int, dict]:
    """Call one callback through Dash's HTTP endpoint, as the browser does."""
    client = app.server.test_client()
    client.get("/")  # first request: Dash finishes its setup
    body = {"output": output, "outputs": outputs, "inputs": inputs, "state": state or [],
            "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs]}
    r = client.post("/_dash-update-component", json=body)
    return r.status_code, (r.get_json() if r.status_code == 200 else {})


@pytest.fixture(scope="module")
def tiny_model():
    from workbench.models import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture
def done_run(store, tiny_model):
    from workbench.corpora import load_corpus
    from workbench.runner import run_probe

    out = run_probe("residual-norms", tiny_model, load_corpus("brown"), {"max_tokens": 512, "seq_len": 64}, store=store)
    return out.run_id


# ----- pages -----
@pytest.fixture
def fake_pages(tmp_path, monkeypatch):
    pkg = tmp_path / "fakepages_wb"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent("""
        from dash import html
        from dashboards.base import DashPage
        PAGE = DashPage(path="/good", name="Good", layout=lambda: html.Div("fine", id="good-body"), order=5)
    """))
    (pkg / "broken.py").write_text("import not_a_module_anywhere_xyz\n")
    (pkg / "wrong.py").write_text("PAGE = 42\n")
    (pkg / "helpers.py").write_text("X = 1\n")  # no PAGE: not a page, not an error
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fakepages_wb"
    for name in [m for m in sys.modules if m.startswith("fakepages_wb")]:
        del sys.modules[name]


def test_discovery_survives_broken_page_modules(fake_pages):
    from dashboards.app import discover_pages

    pages, broken = discover_pages(fake_pages)
    assert [p.path for p in pages] == ["/good"]
    assert sorted(b.module for b in broken) == ["fakepages_wb.broken", "fakepages_wb.wrong"]
    err = next(b for b in broken if b.module.endswith("broken")).error
    assert "ModuleNotFoundError" in err and "not_a_module_anywhere_xyz" in err


def test_app_routes_to_pages_broken_entries_and_404(fake_pages, store):
    from dashboards.app import create_app

    app = create_app(store=store, model="tiny", pages_package=fake_pages)
    outputs = [{"id": "page-content", "property": "children"}, {"id": "nav-links", "property": "children"}]

    def route(path: str) -> str:
        code, resp = dash_post(app, "..page-content.children...nav-links.children..", outputs,
                               [{"id": "url", "property": "pathname", "value": path}])
        assert code == 200
        return json.dumps(resp["response"])

    assert "fine" in route("/good")
    broken = route("/broken/broken")
    assert "could not be loaded" in broken and "not_a_module_anywhere_xyz" in broken
    nav = route("/good")
    assert "broken" in nav and "/broken/broken" in nav  # the broken page is listed, marked broken
    assert "Page not found" in route("/nowhere")
    app.workbench_ctx.jobs.shutdown()


def test_real_pages_import_and_register(store):
    from dashboards.app import create_app

    app = create_app(store=store, model="tiny")
    paths = [p.path for p in app.workbench_pages]
    assert paths[:2] == ["/", "/model-explorer"] and "/residual-norms" in paths
    assert app.workbench_ctx.probe_pages["residual-norms"] == "/residual-norms"
    assert not app.workbench_broken, [(b.module, b.error) for b in app.workbench_broken]


# ----- input safety through the HTTP endpoint -----
def test_explorer_rejects_unregistered_model_and_long_prompt(store):
    """A crafted request (bypassing the dropdown) gets a message, and no model is loaded."""
    from dashboards.app import create_app
    from dashboards.base import MAX_PROMPT_CHARS

    calls = []
    app = create_app(store=store, model="tiny", model_loader=lambda name, **kw: calls.append(name))
    names = ["explorer-error.children", "explorer-notice.children", "explorer-data.data", "explorer-tokens.children",
             "explorer-layer.options", "explorer-layer.value", "explorer-head.options", "explorer-head.value", "explorer-model.value",
             "explorer-pos.data"]
    outputs = [dict(zip(("id", "property"), n.split("."))) for n in names]
    output = ".." + "...".join(names) + ".."

    def call(prompt, model):
        return dash_post(app, output, outputs, [{"id": "explorer-run", "property": "n_clicks", "value": 1}], [
            {"id": "explorer-prompt", "property": "value", "value": prompt},
            {"id": "explorer-model", "property": "value", "value": model},
            {"id": "url", "property": "search", "value": ""},
        ])

    code, resp = call("hello", "__import__('os').system('true')")
    assert code == 200 and "unknown model" in json.dumps(resp["response"]["explorer-error"])
    code, resp = call("hello", "/etc")
    assert code == 200 and "unknown model" in json.dumps(resp["response"]["explorer-error"])
    code, resp = call("x" * (MAX_PROMPT_CHARS + 1), "tiny")
    assert code == 200 and f"the limit is {MAX_PROMPT_CHARS}" in json.dumps(resp["response"]["explorer-error"])
    assert calls == []
    app.workbench_ctx.jobs.shutdown()


def test_model_names_and_prompt_checks():
    from dashboards.base import (
        MAX_PROMPT_CHARS,
        check_model_name,
        check_prompt,
        model_names,
        run_from_search,
    )

    assert "smollm2-135m" in model_names() and "tiny" in model_names()
    assert check_model_name("tiny") == "tiny"
    for bad in ("gpt2", "../x", None, 3, "tiny; rm -rf /"):
        with pytest.raises(ConfigError):
            check_model_name(bad)
    with pytest.raises(ConfigError):
        check_prompt("   ")
    with pytest.raises(PromptTooLongError, match="limit"):
        check_prompt("a" * (MAX_PROMPT_CHARS + 1))
    assert check_prompt("a" * MAX_PROMPT_CHARS)
    assert run_from_search("?run=12") == 12 and run_from_search("?run=x") is None and run_from_search(None) is None


# ----- run requests, forms and the worker -----
def test_form_fields_and_config_from_form():
    from dashboards.jobs import form_fields, form_to_config
    from workbench.probe_api import get_probe

    spec = get_probe("residual-norms")
    fields = {f.name: f for f in form_fields(spec)}
    assert fields["prepend_bos"].widget == "bool"
    assert fields["seq_len"].widget == "number"
    assert fields["max_tokens"].widget == "text" and fields["max_tokens"].optional
    cfg = form_to_config(spec, {"max_tokens": "", "seq_len": 64, "prepend_bos": False, "split": "  "})
    assert cfg == {"max_tokens": None, "seq_len": 64, "prepend_bos": False}
    with pytest.raises(ConfigError):
        form_to_config(spec, {"no_such_field": 1})


def test_check_request_validates_every_name():
    from dashboards.jobs import check_request

    req = check_request("residual-norms", "tiny", "brown", {"max_tokens": "300", "seq_len": 32})
    assert req.config["max_tokens"] == 300 and req.numerics == "raw"
    with pytest.raises(ConfigError, match="Unknown analysis"):
        check_request("no-probe", "tiny", "brown", {})
    with pytest.raises(ConfigError, match="unknown model"):
        check_request("residual-norms", "/tmp/model", "brown", {})
    with pytest.raises(ConfigError, match="unknown corpus"):
        check_request("residual-norms", "tiny", "/etc/passwd", {})
    with pytest.raises(ConfigError):
        check_request("residual-norms", "tiny", "brown", {"seq_len": "many"})


def _queue(store, config: dict, model: str = "tiny") -> int:
    return store.start_run("queued", "residual-norms", model, "raw", "brown", config, "", status="queued")


def test_worker_runs_a_queued_run_and_records_its_identity(store):
    from dashboards.worker import Worker

    run_id = _queue(store, {"max_tokens": 400, "seq_len": 32})
    assert Worker(store).run(run_id) == "done"
    row = store.get_run(run_id)
    assert row["status"] == "done" and row["progress"] == 1.0 and row["artifact"]
    assert row["key"] != "queued" and row["corpus"].startswith("brown@") and row["code_version"]
    assert json.loads(row["config"])["max_tokens"] == 400


def test_worker_records_failures(store):
    from dashboards.worker import Worker

    w = Worker(store)
    bad_model = _queue(store, {}, model="not-a-model")
    assert w.run(bad_model) == "failed"
    assert "unknown model" in store.get_run(bad_model)["error"]
    too_long = _queue(store, {"max_tokens": 300, "seq_len": 4096})  # longer than the tiny model's context
    assert w.run(too_long) == "failed"
    row = store.get_run(too_long)
    assert row["status"] == "failed" and row["error"]


def test_job_manager_marks_runs_of_a_dead_worker_failed(store):
    """A worker that dies leaves no run hanging: its runs become failed, with a reason."""
    from dashboards.jobs import JobManager

    jobs = JobManager(store, python="/bin/false")  # a "worker" that exits at once
    run_id = jobs.submit("residual-norms", "tiny", "brown", {"max_tokens": 300})
    deadline = time.time() + 10
    while store.get_run(run_id)["status"] == "queued" and time.time() < deadline:
        time.sleep(0.1)
        jobs.check()
    row = store.get_run(run_id)
    assert row["status"] == "failed" and "worker" in row["error"]
    assert jobs.active() == []


# ----- prompt analysis -----
def test_prompt_analysis_is_consistent(tiny_model):
    import torch

    from workbench.prompt_analysis import (
        LENS_POSITIONS,
        MAX_TOKENS,
        analyse_prompt,
        attention_flow_graph,
        compute_lens,
    )

    a = analyse_prompt(tiny_model, "Hello world", "tiny")
    T = a.n_tokens
    assert T == 12 and a.has_bos and a.tokens[1] == "H"
    assert a.attn.shape == (2, 4, T, T) and a.resid_norms.shape == (3, T)
    rows = a.attn.float().sum(-1)
    assert float((rows - 1).abs().max()) < 1e-2  # attention rows are distributions
    assert (a.lens_top1[-1] == a.topk_ids[:, 0]).all()  # the last layer's lens is the model's output
    assert float(a.topk_probs.sum(-1).max()) <= 1.0 + 1e-5
    G = attention_flow_graph(a, tiny_model.tokenizer)
    assert G.number_of_nodes() == 3 * T and all(G.in_degree(f"L1P{p}") >= 1 for p in range(T))
    lazy = analyse_prompt(tiny_model, "Hello world", "tiny", lens=False)
    assert lazy.lens_top1 is None
    compute_lens(lazy, tiny_model)
    assert torch.equal(lazy.lens_top1, a.lens_top1) and torch.allclose(lazy.lens_next_prob, a.lens_next_prob, atol=1e-5)
    long = analyse_prompt(tiny_model, "ab" * 400, "tiny")
    assert long.truncated and long.n_tokens == MAX_TOKENS
    assert long.lens_start == MAX_TOKENS - LENS_POSITIONS and long.lens_top1.shape == (3, LENS_POSITIONS)
    assert (long.lens_top1[-1] == long.topk_ids[long.lens_start:, 0]).all()
    assert attention_flow_graph(long, tiny_model.tokenizer).number_of_nodes() == 3 * 16


def test_explorer_figures_render(tiny_model):
    from dashboards.figures.model_explorer import (
        attention_figure,
        head_grid_figure,
        prompt_lens_figure,
        prompt_norms_figure,
        topk_figure,
    )
    from workbench.prompt_analysis import analyse_prompt

    a = analyse_prompt(tiny_model, "The cat sat", "tiny")
    figs = [
        attention_figure(a.attn[0, 1].float().numpy(), a.tokens, 0, 1),
        head_grid_figure(a.attn[1].float().numpy(), 1, 3, a.tokens),
        prompt_norms_figure(a.resid_norms.numpy(), a.tokens, 3, a.has_bos),
        prompt_lens_figure(a, tiny_model.tokenizer),
        prompt_lens_figure(analyse_prompt(tiny_model, "x" * 120, "tiny"), tiny_model.tokenizer),  # lens over the last positions only
        topk_figure(a.decode(a.topk_ids[-1, :5], tiny_model.tokenizer), a.topk_probs[-1, :5].tolist()),
    ]
    assert all(isinstance(f, go.Figure) and f.data for f in figs)


def test_residual_norm_figures_from_a_stored_result(store, done_run):
    from dashboards.base import AppState
    from dashboards.figures.residual_norms import (
        bos_ratio_figure,
        label_of,
        lens_figure,
        norms_figure,
        summary_rows,
    )

    res = AppState(store).result(done_run)
    series = [(label_of(res, done_run), res.table)]
    fig = norms_figure(series)
    assert isinstance(fig, go.Figure) and len(fig.data) == 3  # band, mean, BOS
    assert list(fig.data[1].y) == pytest.approx(res.table["mean_norm"].tolist())
    assert len(lens_figure(series).data) == 2 and len(bos_ratio_figure(series).data) == 1
    assert dict(summary_rows(res))["model"] == "tiny (raw)"


# ----- graphs and exports -----
def test_graph_elements_round_trip_and_exports():
    from dashboards.graphs import (
        elements_to_nx,
        graphml_text,
        node_details,
        nx_to_elements,
    )

    G = nx.DiGraph()
    G.add_node(1, label="one", layer=0, tags=["a", "b"], token="\x06")
    G.add_node("two", layer=1)
    G.add_edge(1, "two", weight=-2.5, head=3)
    el = nx_to_elements(G, pos={1: (0, 0), "two": (10, 5)})
    nodes = [e for e in el if "source" not in e["data"]]
    edges = [e for e in el if "source" in e["data"]]
    assert {n["data"]["id"] for n in nodes} == {"1", "two"} and nodes[1]["position"] == {"x": 10.0, "y": 5.0}
    assert edges[0]["data"]["id"] == "1->two" and edges[0]["data"]["weight"] == 1.0 and edges[0]["data"]["value"] == -2.5
    H = elements_to_nx(el)
    assert H.is_directed() and H.has_edge("1", "two") and H.edges["1", "two"]["weight"] == -2.5 and H.nodes["1"]["layer"] == 0
    back = nx.parse_graphml(graphml_text(H))
    assert back.has_edge("1", "two") and json.loads(back.nodes["1"]["tags"]) == ["a", "b"]
    assert back.nodes["1"]["token"] == "\\x06"  # a control byte, escaped: XML cannot hold it
    assert json.dumps(nx.node_link_data(H, edges="links"))
    details = json.dumps(node_details(nodes[1]["data"], el).to_plotly_json(), default=str)
    assert "incoming" in details and "one" in details


def test_figure_exports_are_offline_svg_and_html(tmp_path):
    from dashboards.exports import figure_html, figure_image, write_images

    fig = go.Figure(go.Scatter(y=[1, 3, 2]))
    svg = figure_image(fig, "svg", timeout=120)
    assert svg.lstrip().startswith(b"<svg") and b"scatterlayer" in svg
    # several figures, formats from the suffixes, one browser start
    paths = write_images([(fig, tmp_path / "a.png"), (fig.to_plotly_json(), tmp_path / "b.svg")], timeout=120)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[1].read_text().lstrip().startswith("<svg")
    html = figure_html(fig)
    assert "<html>" in html and "<script src=\"http" not in html and len(html) > 1_000_000  # plotly.js inlined


def test_static_export_deadline_kills_a_hung_renderer(monkeypatch, tmp_path):
    """A renderer that never answers costs the timeout, raises a clear error and leaves no process."""
    import os
    import sys

    from dashboards import static_export

    marker = tmp_path / "pid"
    hang = f"import os,time; open({str(marker)!r},'w').write(str(os.getpid())); time.sleep(600)"
    real = static_export._run_child
    monkeypatch.setattr(static_export, "_run_child", lambda cmd, timeout: real([sys.executable, "-c", hang], timeout))
    t0 = time.perf_counter()
    with pytest.raises(static_export.StaticExportError, match="no answer within 2 s"):
        static_export.figure_image(go.Figure(go.Scatter(y=[1])), "svg", timeout=2)
    assert time.perf_counter() - t0 < 20
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(static_export.StaticExportError, match="unknown image format"):
        static_export.figure_image(go.Figure(), "bmp")


def test_a_run_queued_in_bfloat16_runs_in_bfloat16(store):
    """The Home form's precision travels with the request to the worker and into the result's key."""
    from dashboards.jobs import check_request
    from dashboards.worker import Worker
    from workbench.runner import result_of_run

    assert check_request("residual-norms", "tiny", "brown", {}, "bfloat16").dtype == "bfloat16"
    for bad in ("float64", "int8", None, ["bfloat16"]):
        with pytest.raises(ConfigError, match="precision"):
            check_request("residual-norms", "tiny", "brown", {}, bad)
    ids = {}
    for dtype in ("float32", "bfloat16"):
        ids[dtype] = store.start_run("queued", "residual-norms", "tiny", "raw", "brown", {"max_tokens": 300, "seq_len": 32}, "",
                                     status="queued", request_extra={"dtype": dtype})
        assert Worker(store).run(ids[dtype]) == "done"
    keys = {d: result_of_run(i, store).meta["model_key"] for d, i in ids.items()}
    assert "|bfloat16|" in keys["bfloat16"] and "|float32|" in keys["float32"]
    assert store.get_run(ids["bfloat16"])["key"] != store.get_run(ids["float32"])["key"]


def test_a_study_queued_from_the_dashboard_runs_in_the_worker(store, monkeypatch):
    """Studies are a whole kind: the queue takes them (their resource fields checked like a probe's),
    the worker runs them through `run_study` under the queued row, and a retry reuses the result."""
    from dashboards.jobs import STUDY_MODEL, check_request
    from dashboards.worker import Worker
    from probes.linguistic_collapse import sweep
    from workbench.models import load_model

    monkeypatch.setattr(sweep, "train_lm", lambda recipe, device="cpu", progress=True: None)
    monkeypatch.setattr(sweep, "load_lm", lambda recipe, device="cpu": load_model(
        "tiny", device="cpu", n_layers=recipe.n_layers, d_model=recipe.d_model, d_head=recipe.d_model // 4, seed=recipe.seed))
    cfg = {"depths": [1], "widths": [16, 32], "steps": [5],
           "probe": {"max_tokens": 300, "heldout_max_tokens": 128, "seq_len": 32, "batch_size": 4}}
    req = check_request("linguistic-collapse-sweep", "anything", None, cfg)
    assert req.model == STUDY_MODEL and req.corpus is None and req.config["widths"] == [16, 32]
    with pytest.raises(ConfigError, match="corpus"):
        check_request("linguistic-collapse-sweep", "tiny", None, {**cfg, "corpus": "/etc/passwd"})
    run_id = store.start_run("queued", req.probe, req.model, req.numerics, None, req.config, "", status="queued",
                             request_extra={"dtype": req.dtype})
    assert Worker(store).run(run_id) == "done"
    row = store.get_run(run_id)
    assert row["status"] == "done" and row["probe"] == "linguistic-collapse-sweep" and row["key"] not in ("queued", "pending")
    again = store.start_run("queued", req.probe, req.model, req.numerics, None, req.config, "", status="queued",
                            request_extra={"dtype": req.dtype})
    assert Worker(store).run(again) == "reused" and store.get_run(again)["key"] == row["key"]
