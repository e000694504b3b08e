"""Residual norms: the built-in probe's stored results, one run or several overlaid."""

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
from dashboards.figures.residual_norms import (
    bos_ratio_figure,
    label_of,
    lens_figure,
    norms_figure,
    summary_rows,
)

PROBE = "residual-norms"


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Residual norms and logit lens"),
            html.P("Per-layer norm of the residual stream (ordinary positions against the first, BOS, position) and how "
                   "well each layer's residual already predicts the next token through the final norm and unembedding.",
                   className="lead"),
            html.Div(
                [
                    run_picker("rn-run", PROBE),
                    html.Div([html.Label("Compare with", htmlFor="rn-compare"),
                              dcc.Dropdown(id="rn-compare", multi=True, placeholder="other runs to overlay")], className="run-picker"),
                ],
                className="controls",
            ),
            run_note("rn-note"),
            error_box("rn-error"),
            html.Div(html.Div(id="rn-summary"), className="card"),
            html.Div([figure_card("rn-norms", "Norm per layer", "Log scale; the band is ± one standard deviation over positions."),
                      figure_card("rn-lens", "Logit lens", "Accuracy and cross-entropy of each layer's decoded residual.")], className="grid-2"),
            figure_card("rn-bos", "BOS outlier", "A ratio far above 1 marks the massive first-token activations that go with attention sinks."),
        ]
    )


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "rn-run", PROBE)
    register_run_note(app, ctx, "rn-run", "rn-note", PROBE)

    @app.callback(Output("rn-compare", "options"), Input("rn-run", "options"), Input("rn-run", "value"))
    def _compare_options(options, value):
        return [o for o in (options or []) if o["value"] != value]

    @app.callback(
        Output(graph("rn-norms"), "figure"), Output(graph("rn-lens"), "figure"), Output(graph("rn-bos"), "figure"),
        Output("rn-summary", "children"), Output("rn-error", "children"),
        Input("rn-run", "value"), Input("rn-compare", "value"),
    )
    def _show(run_id, compare):
        if run_id is None:
            msg = "No residual-norms run yet: start one on Home, or `workbench run residual-norms`."
            return empty_figure(msg), empty_figure(msg), empty_figure(msg), html.P(msg, className="empty"), ""
        try:
            main = ctx.result(run_id)
            series = [(label_of(main, run_id), main.table)]
            for other in compare or []:
                if other != run_id:
                    r = ctx.result(int(other))
                    series.append((label_of(r, other), r.table))
        except Exception as e:
            return no_update, no_update, no_update, no_update, error_message(e)
        table = html.Div([html.Div([html.Div(k, className="stat-key"), html.Div(v, className="stat-value")], className="stat")
                          for k, v in summary_rows(main)], className="stats", id="rn-summary-table", **{"data-run": str(run_id)})
        return norms_figure(series), lens_figure(series), bos_ratio_figure(series), [html.H4(f"Run #{run_id}"), table], ""


PAGE = DashPage(path="/residual-norms", name="Residual norms", layout=layout, register=register, probe=PROBE, order=20)
