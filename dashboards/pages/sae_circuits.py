"""SAE circuit discovery: choose a task and a stored run (model), see the SAE method's circuit and
the causal baseline's side by side, and click a head to see its codes on positives and negatives."""

from __future__ import annotations

import json

from dash import Dash, Input, Output, State, dcc, html, no_update
from dash import ctx as callback_ctx

from dashboards.base import (
    AppState,
    DashPage,
    error_box,
    error_message,
    figure_card,
    graph,
    register_run_note,
    run_note,
)
from dashboards.figures import empty_figure
from dashboards.figures.sae_circuits import (
    code_histogram,
    head_heatmap,
    layered_positions,
    roc_figure,
    runtime_figure,
    summary_rows,
)
from dashboards.graphs import cyto_graph, graph_card, nx_to_elements

PROBE = "sae-circuits"
FIGS = ["sc-sae", "sc-base", "sc-hist", "sc-roc", "sc-runtime"]


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("SAE circuit discovery"),
            html.P("A small SAE trained on 10 examples of position-averaged head outputs turns every head's output into a "
                   "discrete code. Heads whose codes on positive prompts (the model can answer) never appear on negative ones "
                   "are the circuit. Beside it, the causal baseline: per-head activation patching of negative into positive "
                   "runs. Click a head in either heatmap, or a node of the graph, to see its codes.", className="lead"),
            html.Div(
                [
                    html.Div([html.Label("Task", htmlFor="sc-task"), dcc.Dropdown(id="sc-task", clearable=True, placeholder="all tasks")],
                             className="run-picker"),
                    html.Div([html.Label("Stored run (model)", htmlFor="sc-run"),
                              dcc.Dropdown(id="sc-run", clearable=False, placeholder="choose a sae-circuits run")], className="run-picker"),
                    html.Div([html.Label("SAE score", htmlFor="sc-kind"),
                              dcc.RadioItems(id="sc-kind", value="node", inline=True,
                                             options=[{"label": "node", "value": "node"}, {"label": "edge", "value": "edge"}])],
                             className="run-picker"),
                    html.Div([html.Label("Seed (histogram)", htmlFor="sc-seed"), dcc.Dropdown(id="sc-seed", value="0", clearable=False)],
                             className="run-picker"),
                ],
                className="controls",
            ),
            run_note("sc-note"),
            error_box("sc-error"),
            dcc.Store(id="sc-head"),
            html.Div(html.Div(id="sc-summary"), className="card"),
            html.Div([figure_card("sc-sae", "SAE method", "Mean score over seeds; outlined heads are the ground truth."),
                      figure_card("sc-base", "Causal baseline", "Share of the positive-negative gap removed by patching each head "
                                  "(negative into positive): blue heads carry the answer, red ones work against it.")], className="grid-2"),
            html.Div([graph_card("sc-graph", "Circuit graph (SAE edges)", "Head pairs with the most code pairs unique to positives, "
                                 "by layer (rows) and head (columns); orange nodes are in the ground truth."),
                      figure_card("sc-hist", "Codes of the chosen head", "How often each SAE code occurs on positives and negatives.")],
                     className="grid-2"),
            html.Div([figure_card("sc-roc", "ROC curves", "Against the ground truth, one line per seed."),
                      figure_card("sc-runtime", "Runtime", "SAE method against the patching baseline, same machine.")], className="grid-2"),
        ]
    )


def run_choices(ctx: AppState) -> list[dict]:
    """Finished runs with their task: [{'run_id', 'task', 'model'}], newest first, one per result key."""
    seen, out = set(), []
    for r in ctx.finished_runs(PROBE):
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        try:
            task = json.loads(r["config"] or "{}").get("task", "?")
        except json.JSONDecodeError:
            task = "?"
        out.append({"run_id": r["run_id"], "task": task, "model": r["model"]})
    return out


def _head_from_click(click: dict | None, n_heads: int) -> int | None:
    if not click or not click.get("points"):
        return None
    p = click["points"][0]
    if "x" not in p or "y" not in p:
        return None
    return int(p["y"]) * n_heads + int(p["x"])


def register(app: Dash, ctx: AppState) -> None:
    @app.callback(Output("sc-task", "options"), Input("url", "pathname"))
    def _tasks(_path):
        return sorted({c["task"] for c in run_choices(ctx)})

    @app.callback(Output("sc-run", "options"), Output("sc-run", "value"), Input("sc-task", "value"), Input("url", "pathname"))
    def _runs(task, _path):
        opts = [{"label": f"#{c['run_id']} {c['model']} · {c['task']}", "value": c["run_id"]}
                for c in run_choices(ctx) if task in (None, c["task"])]
        return opts, (opts[0]["value"] if opts else None)

    register_run_note(app, ctx, "sc-run", "sc-note", PROBE)

    @app.callback(Output("sc-seed", "options"), Output("sc-seed", "value"), Output("sc-head", "data", allow_duplicate=True),
                  Input("sc-run", "value"), prevent_initial_call="initial_duplicate")
    def _seeds(run_id):
        if run_id is None:
            return [], None, None
        try:
            res = ctx.result(run_id)
        except Exception:
            return [], None, None
        best = int(res.heads["node_score"].to_numpy().argmax())
        return [{"label": f"seed {s}", "value": str(s)} for s in range(res.codes.shape[0])], "0", best

    @app.callback(
        Output(graph("sc-sae"), "figure"), Output(graph("sc-base"), "figure"), Output(graph("sc-roc"), "figure"),
        Output(graph("sc-runtime"), "figure"), Output(cyto_graph("sc-graph"), "elements"), Output("sc-summary", "children"),
        Output("sc-error", "children"),
        Input("sc-run", "value"), Input("sc-kind", "value"),
    )
    def _show(run_id, kind):
        if run_id is None:
            msg = "No sae-circuits run yet: start one on Home, or `workbench run sae-circuits --set task=ioi`."
            return (*[empty_figure(msg) for _ in range(4)], [], html.P(msg, className="empty"), "")
        try:
            res = ctx.result(run_id)
            g = res.graph.copy()
            for _, d in g.nodes(data=True):
                d["color"] = "#D55E00" if d.get("ground_truth") else "#56B4E9"
            elements = nx_to_elements(g, pos={n: (x, y) for n, (x, y) in layered_positions(g).items()}, scale=60)
            name = f"#{run_id} {res.stats['task']}"
            figs = [head_heatmap(res, kind or "node"), head_heatmap(res, "baseline"), roc_figure({name: res}), runtime_figure({name: res})]
        except Exception as e:
            return (*[no_update] * 5, no_update, error_message(e))
        table = html.Div([html.Div([html.Div(k, className="stat-key"), html.Div(v, className="stat-value")], className="stat")
                          for k, v in summary_rows(res)], className="stats", id="sc-summary-table", **{"data-run": str(run_id)})
        return (*figs, elements, [html.H4(f"Run #{run_id}"), table], "")

    @app.callback(
        Output("sc-head", "data"),
        Input(graph("sc-sae"), "clickData"), Input(graph("sc-base"), "clickData"), Input(cyto_graph("sc-graph"), "tapNodeData"),
        State("sc-run", "value"), prevent_initial_call=True,
    )
    def _pick(click_sae, click_base, node, run_id):
        if run_id is None:
            return no_update
        res = ctx.result(run_id)
        trig = callback_ctx.triggered[0]["prop_id"] if callback_ctx.triggered else ""
        if "tapNodeData" in trig:
            return int(node["index"]) if node and "index" in node else no_update
        click = click_base if "sc-base" in trig else click_sae
        head = _head_from_click(click, res.stats["heads_per_layer"])
        return head if head is not None else no_update

    @app.callback(Output(graph("sc-hist"), "figure"), Input("sc-head", "data"), Input("sc-seed", "value"), State("sc-run", "value"))
    def _hist(head, seed, run_id):
        if run_id is None or head is None:
            return empty_figure("click a head")
        try:
            res = ctx.result(run_id)
            return code_histogram(res, int(head), int(seed or 0))
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")


PAGE = DashPage(path="/sae-circuits", name="SAE circuits", layout=layout, register=register, probe=PROBE, order=70)
