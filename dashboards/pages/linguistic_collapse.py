"""Linguistic collapse: NC1-NC4 of one model's top-layer features, and a stored scaling sweep."""

from __future__ import annotations

from dash import Dash, Input, Output, dcc, html, no_update

from dashboards.base import (
    AppState,
    DashPage,
    error_box,
    error_message,
    figure_card,
    graph,
    register_run_note,
    register_run_picker,
    run_note,
    run_picker,
)
from dashboards.figures import empty_figure
from dashboards.figures import linguistic_collapse as figs
from probes.linguistic_collapse import METRICS, SWEEP_STUDY, load_sweep

PROBE = "linguistic-collapse"


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Linguistic collapse"),
            html.P("Neural collapse with next tokens as classes (Wu & Papyan 2024): within-class variability (NC1), "
                   "equinorm and equiangular class means (NC2, GNC2), alignment of class means with the unembedding (NC3) "
                   "and agreement of the nearest-class-mean rule with the model's prediction (NC4). Lower is more collapsed, "
                   "except self-duality, which rises towards 1.", className="lead"),
            html.H3("Scaling sweep"),
            html.Div(
                [
                    html.Div([html.Label("Stored sweep", htmlFor="lc-sweep"),
                              dcc.Dropdown(id="lc-sweep", placeholder="choose a sweep", clearable=False)], className="run-picker"),
                    html.Div([html.Label("Metric", htmlFor="lc-metric"),
                              dcc.Dropdown(id="lc-metric", options=[{"label": figs.metric_label(m), "value": m} for m in METRICS],
                                           value="nc1_cdnv", clearable=False)], className="run-picker"),
                ],
                className="controls",
            ),
            error_box("lc-sweep-error"),
            figure_card("lc-scaling", "Metric against size and validation loss", "Colour = depth, marker size = width; hover a model."),
            figure_card("lc-corr", "Rank correlations", "Spearman ρ over the sweep's models; the paper expects CDNV, equinorm CoV "
                        "and NC4 mismatch to fall as validation loss falls (ρ > 0)."),
            html.H3("One model"),
            html.Div([run_picker("lc-run", PROBE)], className="controls"),
            run_note("lc-note"),
            error_box("lc-error"),
            html.Div(html.Div(id="lc-summary"), className="card"),
            html.Div([figure_card("lc-cos", "Class-mean cosines", "Most frequent classes; hover a cell for the class's count, norm and self-duality."),
                      figure_card("lc-proj", "Class means in 2-D", "PCA of the normalised centred means, with each class's unembedding vector.")],
                     className="grid-2"),
            figure_card("lc-sens", "Sensitivity to min_count", "Each metric recomputed with rarer classes dropped."),
        ]
    )


def sweep_options(ctx: AppState) -> list[dict]:
    seen, out = set(), []
    for r in ctx.store.runs(limit=200, probe=SWEEP_STUDY):
        if r["status"] in ("done", "reused") and r["key"] not in seen:
            seen.add(r["key"])
            out.append({"label": f"#{r['run_id']} {r['model']}", "value": r["run_id"]})
    return out


def sweep_view(sweep, metric: str) -> tuple:
    return figs.scaling_figure(sweep.table, metric), figs.correlation_figure(sweep.correlations)


def model_view(result) -> tuple:
    table = html.Table(html.Tbody([html.Tr([html.Th(k), html.Td(v)]) for k, v in figs.summary_rows(result)]), className="summary-table")
    return table, figs.cosine_heatmap(result), figs.projection_figure(result), figs.sensitivity_figure(result)


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "lc-run", PROBE)
    register_run_note(app, ctx, "lc-run", "lc-note", PROBE)

    @app.callback(Output("lc-sweep", "options"), Output("lc-sweep", "value"), Input("url", "pathname"))
    def _fill_sweeps(_path):
        opts = sweep_options(ctx)
        return opts, (opts[0]["value"] if opts else None)

    @app.callback(Output(graph("lc-scaling"), "figure"), Output(graph("lc-corr"), "figure"), Output("lc-sweep-error", "children"),
                  Input("lc-sweep", "value"), Input("lc-metric", "value"))
    def _show_sweep(run_id, metric):
        if run_id is None:
            msg = "No sweep stored yet: `python -m experiments.linguistic_collapse` trains and stores one."
            return empty_figure(msg), empty_figure(msg), ""
        try:
            return (*sweep_view(load_sweep(ctx.store, run_id), metric or "nc1_cdnv"), "")
        except Exception as e:
            return no_update, no_update, error_message(e)

    @app.callback(Output("lc-summary", "children"), Output(graph("lc-cos"), "figure"), Output(graph("lc-proj"), "figure"),
                  Output(graph("lc-sens"), "figure"), Output("lc-error", "children"), Input("lc-run", "value"))
    def _show_run(run_id):
        if run_id is None:
            msg = "No linguistic-collapse run yet: start one on Home, or `workbench run linguistic-collapse`."
            return html.P(msg, className="empty"), empty_figure(msg), empty_figure(msg), empty_figure(msg), ""
        try:
            return (*model_view(ctx.result(run_id)), "")
        except Exception as e:
            return no_update, no_update, no_update, no_update, error_message(e)


PAGE = DashPage(path="/linguistic-collapse", name="Linguistic collapse", layout=layout, register=register, probe=PROBE, order=60)
