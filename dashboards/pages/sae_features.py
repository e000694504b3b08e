"""SAE feature pages: one feature of a stored sae-features run: its top activating contexts with the
firing token highlighted, the activation histogram and density, the tokens that fire it most
often (linked to the function-token graph), its logit effects, and its activation on your own
text. `?run=<id>&feature=<i>` or `?sae=<source>&feature=<i>` opens one directly (the links from
the function-token graph, steering and SAE circuits use the second form).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboards.base import (
    AppState,
    DashPage,
    error_box,
    error_message,
    figure_card,
    graph,
    picker_state,
    register_run_note,
    run_note,
    run_picker,
    sae_badge,
)
from dashboards.cache import LRU
from dashboards.figures import empty_figure, show_token
from dashboards.figures.sae_features import (
    firing_tokens_figure,
    histogram_figure,
    logit_effects_figure,
)
from workbench.store import parse_run_id

PROBE = "sae-features"
PATH = "/sae-features"


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("SAE features"),
            html.P("One feature of a sparse autoencoder: where it fires most strongly, how often and how strongly it "
                   "fires, the tokens it fires on, what its decoder direction does to the next-token logits, and its "
                   "activation on a text of your own.", className="lead"),
            html.Div(
                [
                    run_picker("feat-run", "sae-features"),
                    html.Div([html.Label("Feature", htmlFor="feat-index"),
                              dcc.Input(id="feat-index", type="number", min=0, step=1, value=None, debounce=True)], className="form-field"),
                    html.Div([html.Label("Live features", htmlFor="feat-live"),
                              dcc.Dropdown(id="feat-live", placeholder="live features by density band", clearable=True)],
                             className="form-field wide"),
                ],
                className="controls",
            ),
            run_note("feat-note"),
            error_box("feat-error"),
            html.Div(id="feat-summary", className="card"),
            html.Div([html.H4("Top activating contexts"),
                      html.P("The firing token is highlighted; the number is its activation.", className="figure-description"),
                      html.Div(id="feat-contexts", className="contexts")], className="card"),
            html.Div([figure_card("feat-hist", "Activation histogram"), figure_card("feat-logits", "Logit effects")], className="grid-2"),
            html.Div([figure_card("feat-tokens", "Firing tokens"),
                      html.Div([html.H4("Firing tokens in the function-token graph"), html.Div(id="feat-token-links")], className="card")],
                     className="grid-2"),
            html.Div(
                [
                    html.H4("Your own text"),
                    dcc.Textarea(id="feat-text", value="The cat sat on the mat, and the dog sat on the rug.", className="prompt-box short"),
                    html.Button("Show activations", id="feat-text-run", className="primary-btn"),
                    error_box("feat-text-error"),
                    html.Div(id="feat-text-out", className="tokens"),
                ],
                className="card",
            ),
        ]
    )


_SAES: LRU = LRU(4)  # SAEs of the feature pages, by the model's key and the SAE's source


def _sae_for(ctx: AppState, result, model):
    """The run's SAE on its model (loaded once while it stays among the last four used)."""
    from workbench.models.info import model_key
    from workbench.saes import load_sae

    return _SAES.get((model_key(model), result.sae.get("source")),
                     lambda: load_sae(result.sae.get("asked") or result.sae["source"], model=model,
                                      corpus_name=str(result.meta.get("corpus") or "brown").split("@")[0]))


def _query(search: str | None) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs((search or "")[:4096].lstrip("?")).items() if v}


def _run_for_sae(ctx: AppState, source: str) -> int | None:
    """The newest finished sae-features run of the SAE `source` (as asked for or as resolved)."""
    for r in ctx.finished_runs(PROBE):
        try:
            asked = json.loads(r.get("config") or "{}").get("sae")
            got = json.loads(r.get("summary") or "{}").get("sae")
        except ValueError:
            continue
        if source in (asked, got):
            return int(r["run_id"])
    return None


def register(app: Dash, ctx: AppState) -> None:
    register_run_note(app, ctx, "feat-run", "feat-note", PROBE)

    @app.callback(Output("feat-run", "options"), Output("feat-run", "value"), Output("feat-index", "value"),
                  Input("url", "pathname"), State("url", "search"))
    def _fill(_path, search):
        q = _query(search)
        wanted = parse_run_id(q.get("run"))
        if wanted is None and q.get("sae"):
            wanted = _run_for_sae(ctx, q["sae"])
        opts, value = picker_state(ctx, PROBE, wanted)
        f = q.get("feature", "")
        feature = int(f) if 0 < len(f) <= 9 and f.isascii() and f.isdigit() else None  # an index, never a 5,000-digit number
        return opts, value, feature

    @app.callback(Output("feat-live", "options"), Output("feat-index", "value", allow_duplicate=True),
                  Input("feat-run", "value"), State("feat-index", "value"), prevent_initial_call=True)
    def _live(run_id, feature):
        if run_id is None:
            return [], no_update
        try:
            res = ctx.result(run_id)
            banded = res.features_by_band()
            dens = res.density()
        except Exception:
            return [], no_update
        opts = [{"label": f"feature {f} (density {float(dens[f]):.2%}, band {band})", "value": f} for f, band in banded[:200]]
        return opts, (feature if feature is not None else banded[0][0] if banded else 0)

    @app.callback(Output("feat-index", "value", allow_duplicate=True), Input("feat-live", "value"), prevent_initial_call=True)
    def _pick(f):
        return no_update if f is None else int(f)

    @app.callback(Output("feat-summary", "children"), Output("feat-contexts", "children"), Output(graph("feat-hist"), "figure"),
                  Output(graph("feat-logits"), "figure"), Output(graph("feat-tokens"), "figure"), Output("feat-token-links", "children"),
                  Output("feat-error", "children"),
                  Input("feat-run", "value"), Input("feat-index", "value"))
    def _show(run_id, feature):
        if run_id is None:
            msg = "No sae-features run yet."
            return html.P(msg, className="empty"), [], empty_figure(msg), empty_figure(msg), empty_figure(msg), [], ""
        if feature is None:
            return no_update, no_update, no_update, no_update, no_update, no_update, ""
        try:
            res = ctx.result(run_id)
            f = res.feature(int(feature))
        except Exception as e:
            return no_update, no_update, no_update, no_update, no_update, no_update, error_message(e)
        sae = res.sae
        if f["fired"] == 0:  # a dead feature: say so, and where live ones are, instead of empty axes
            near = res.nearest_live(f["feature"])
            msg = f"Feature {f['feature']} never fired on this slice (a dead feature)."
            summary = [html.H4(f"Feature {f['feature']} of {sae.get('source')}"), sae_badge(sae.get("quality"), "feat-sae-badge"),
                       html.P([msg + " Live features nearby: "] + [html.A(str(i), href=f"?run={run_id}&feature={i}", className="link-tok")
                                                                  for i in near], id="feat-summary-text")]
            return summary, [], empty_figure(msg), empty_figure(msg), empty_figure(msg), [], ""
        summary = [html.H4(f"Feature {f['feature']} of {sae.get('source')} ({sae.get('hook')}, {sae.get('d_sae')} features)"),
                   sae_badge(sae.get("quality"), "feat-sae-badge"),
                   html.P(f"Fired on {f['fired']:,} of {int(res.tensors['scored']):,} scored tokens ({f['density']:.3%}); "
                          f"mean activation when firing {f['mean_activation']:.3g}. Run #{run_id}.", id="feat-summary-text")]
        contexts = [_context(c) for c in f["contexts"]] or [html.P("It never fired on this slice.", className="empty")]
        links = [html.A(show_token(t), href=f"/function-tokens?token={i}", className="tok link-tok")
                 for (t, _), i in zip(f["top_tokens"], f["top_token_ids"])]
        return (summary, contexts, histogram_figure(f["hist_counts"], f["hist_edges"], f["density"], f["mean_activation"]),
                logit_effects_figure(f["logit_top"], f["logit_bottom"]), firing_tokens_figure(f["top_tokens"], f["fired"]),
                links or html.P("none", className="empty"), "")

    @app.callback(Output("feat-text-out", "children"), Output("feat-text-error", "children"),
                  Input("feat-text-run", "n_clicks"), State("feat-text", "value"), State("feat-run", "value"),
                  State("feat-index", "value"), prevent_initial_call=True)
    def _own_text(_n, text, run_id, feature):
        from probes.sae_features import feature_activations

        try:
            if run_id is None or feature is None:
                raise LookupError("choose a stored run and a feature first")
            res = ctx.result(run_id)
            res.check_feature(int(feature))
            model = ctx.model_of(res)
            tokens, acts = feature_activations(model, _sae_for(ctx, res, model), text, int(feature))
        except Exception as e:
            return [], error_message(e)
        top = max([*acts, float(res.tensors["top_vals"][int(feature)][0]), 1e-6])
        chips = [html.Span(show_token(t), title=f"activation {a:.3f}", className="tok act-tok",
                           **{"data-act": f"{a:.4f}"}, style={"background": f"rgba(230,159,0,{min(1.0, max(a, 0) / top):.3f})"})
                 for t, a in zip(tokens, acts)]
        best = max(range(len(acts)), key=lambda i: acts[i])
        return [html.P(f"Strongest at {show_token(tokens[best])!r}: {acts[best]:.3f} (colour scaled to the feature's top "
                       f"stored activation {top:.3f}).", id="feat-text-summary"), html.Div(chips)], ""


def _context(c: dict) -> html.Div:
    spans = [html.Span(show_token(t), className="ctx-tok" + (" ctx-focus" if i == c["focus"] else ""))
             for i, t in enumerate(c["tokens"])]
    return html.Div([html.Span(f"{c['activation']:.3g}", className="ctx-act"), html.Span(spans, className="ctx-text")], className="context-row")


PAGE = DashPage(path=PATH, name="SAE features", layout=layout, register=register, probe=PROBE, order=45)
