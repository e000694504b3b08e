"""Bigram subnetworks: browse the masks of a stored run per lambda, compare a bigram subnetwork
with the optimal one, and download a mask as boolean safetensors."""

from __future__ import annotations

from dash import Dash, Input, Output, State, dcc, html, no_update

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
from dashboards.figures.bigram_subnetworks import (
    ablation_bars,
    compare_blocks,
    kept_heatmap,
    overlap_null,
    r_vs_sparsity,
    rotation_angles,
    summary_rows,
    training_curves,
)

PROBE = "bigram-subnetworks"
FIGS = ["bs-r", "bs-heat-a", "bs-heat-b", "bs-compare", "bs-ablation", "bs-overlap", "bs-rotation", "bs-training"]


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Bigram subnetworks"),
            html.P("Continuous-sparsification masks over the raw weight matrices, trained so the masked model predicts bigram "
                   "statistics (one mask per λ), and an 'optimal' mask trained against the full model's own predictions. "
                   "How well each subnetwork tracks bigram surprisal, where its weights sit, what removing it costs, and how "
                   "much it shares with the optimal subnetwork.", className="lead"),
            html.Div(
                [
                    run_picker("bs-run", PROBE),
                    html.Div([html.Label("Subnetwork", htmlFor="bs-a"), dcc.Dropdown(id="bs-a", clearable=False)], className="run-picker"),
                    html.Div([html.Label("Compare with", htmlFor="bs-b"), dcc.Dropdown(id="bs-b", clearable=True)], className="run-picker"),
                    html.Div([html.Label("Heatmap value", htmlFor="bs-value"),
                              dcc.RadioItems(id="bs-value", value="kept_frac", inline=True,
                                             options=[{"label": "kept fraction", "value": "kept_frac"},
                                                      {"label": "share of subnetwork", "value": "share_of_kept"}])], className="run-picker"),
                    html.Div([html.Button("Download mask (.safetensors)", id="bs-download-btn", className="export-btn"),
                              dcc.Download(id="bs-download")]),
                ],
                className="controls",
            ),
            run_note("bs-note"),
            error_box("bs-error"),
            html.Div(html.Div(id="bs-summary"), className="card"),
            figure_card("bs-r", "Bigram r against sparsity", "Pearson r between the masked model's per-token surprisal and the bigram "
                        "model's, on held-out text (positions whose bigram surprisal is infinite are dropped). The ring marks the "
                        "sparsest λ within the tolerance of λ = 0."),
            html.Div([figure_card("bs-heat-a", "Kept weights: subnetwork", "Per layer and weight matrix."),
                      figure_card("bs-heat-b", "Kept weights: comparison", "The subnetwork chosen under 'Compare with'.")], className="grid-2"),
            figure_card("bs-compare", "Where each subnetwork sits", "Share of each subnetwork in every attention and MLP block."),
            html.Div([figure_card("bs-ablation", "Ablation", "Zeroing the subnetwork against zeroing random masks with the same "
                                  "number of weights in every matrix (mean ± sd over seeds)."),
                      figure_card("bs-overlap", "Overlap with the optimal subnetwork", "Against pairs of random masks with the same "
                                  "per-matrix counts.")], className="grid-2"),
            figure_card("bs-rotation", "Rotation", "Median |angle| of the eigenvalues of ridge maps from each layer's residual."),
            figure_card("bs-training", "Mask training", "Cross-entropy against the target and the kept fraction over steps."),
        ]
    )


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "bs-run", PROBE)
    register_run_note(app, ctx, "bs-run", "bs-note", PROBE)

    @app.callback(Output("bs-a", "options"), Output("bs-a", "value"), Output("bs-b", "options"), Output("bs-b", "value"),
                  Input("bs-run", "value"))
    def _labels(run_id):
        if run_id is None:
            return [], None, [], None
        try:
            res = ctx.result(run_id)
        except Exception:
            return [], None, [], None
        opts = [{"label": f"{row.label} ({row.kept_frac:.3%} kept, r = {row.r:.3f})", "value": row.label} for row in res.sweep.itertuples()]
        return opts, res.selected, opts, res.optimal_label

    @app.callback(
        *[Output(graph(f), "figure") for f in FIGS], Output("bs-summary", "children"), Output("bs-error", "children"),
        Input("bs-run", "value"), Input("bs-a", "value"), Input("bs-b", "value"), Input("bs-value", "value"),
    )
    def _show(run_id, a, b, value):
        if run_id is None:
            msg = ("No bigram-subnetworks run yet. It masks a model the workbench trains: `python -m experiments.bigram_subnetworks` "
                   "trains the small Brown LMs and masks them, or `workbench run bigram-subnetworks --model <checkpoint dir>` masks one "
                   "(default: smollm2-135m, hours on a CPU).")
            return (*[empty_figure(msg) for _ in FIGS], html.P(msg, className="empty"), "")
        try:
            res = ctx.result(run_id)
            figs = [r_vs_sparsity(res), kept_heatmap(res, a, value), kept_heatmap(res, b, value), compare_blocks(res, a, b),
                    ablation_bars(res), overlap_null(res), rotation_angles(res), training_curves(res)]
        except Exception as e:
            return (*[no_update for _ in FIGS], no_update, error_message(e))
        table = html.Div([html.Div([html.Div(k, className="stat-key"), html.Div(v, className="stat-value")], className="stat")
                          for k, v in summary_rows(res)], className="stats", id="bs-summary-table", **{"data-run": str(run_id)})
        return (*figs, [html.H4(f"Run #{run_id}"), table], "")

    @app.callback(Output("bs-download", "data"), Input("bs-download-btn", "n_clicks"), State("bs-run", "value"), State("bs-a", "value"),
                  prevent_initial_call=True)
    def _download(n, run_id, label):
        if run_id is None or not label:
            return no_update
        from safetensors.torch import save

        res = ctx.result(run_id)
        blob = save({k: v.bool().contiguous() for k, v in res.masks_for(label).items()}, metadata={"label": label})
        return dcc.send_bytes(blob, f"run{run_id}-{label.replace(':', '-lambda')}.safetensors")


PAGE = DashPage(path="/bigram-subnetworks", name="Bigram subnetworks", layout=layout, register=register, probe=PROBE, order=50)
