"""Attention sinks: per-head sink mass, value drains and residual peaks from a stored run, the
active-dormant contrast between two domains, and one head's pattern on a typed prompt."""

from __future__ import annotations

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboards.base import (
    AppState,
    DashPage,
    check_prompt,
    error_box,
    error_message,
    figure_card,
    graph,
    register_run_note,
    register_run_picker,
    run_note,
    run_picker,
)
from dashboards.figures import attention_sinks as figs
from dashboards.figures import empty_figure
from probes.attention_sinks import BigramBackcopyResult, domain_contrast, prompt_head

PROBE = "attention-sinks"
PROBES = ("attention-sinks", "bigram-backcopy")  # the LM survey and the BB toy models
DEFAULT_PROMPT = "The jury said it did find that many of the city's voters were not registered.\n"


def _dropdown(component_id: str, label: str, **kw) -> html.Div:
    return html.Div([html.Label(label, htmlFor=component_id), dcc.Dropdown(id=component_id, clearable=False, **kw)], className="run-picker")


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Attention sinks and active-dormant heads"),
            html.P("How much each head parks its attention on the first token (the sink), how small that token's value "
                   "states are after W_O (value drain), how large its residual norm grows (residual peak), and whether a "
                   "head is dormant (high sink mass, zeroing it does not change the loss) on one domain but active on another.",
                   className="lead"),
            html.Div([run_picker("as-run", "attention-sinks or bigram-backcopy"), _dropdown("as-domain", "Domain"), _dropdown("as-compare", "Compare with"),
                      _dropdown("as-layer", "Layer"), _dropdown("as-head", "Head")], className="controls"),
            run_note("as-note"),
            error_box("as-error"),
            html.Div(html.Div(id="as-summary"), className="card"),
            html.Div([figure_card("as-sink", "Sink mass per head", "Mean attention on the first token over query positions ≥ 1."),
                      figure_card("as-diff", "Active-dormant difference", "Sink mass on the compared domain minus this one; "
                                  "× marks heads dormant on one domain only.")], className="grid-2"),
            html.Div([figure_card("as-resid", "Residual peak", "Residual norm of the first token against the mean of the others."),
                      figure_card("as-value", "Value drain", "‖W_O v‖ of the first token over the mean of the others (GQA mapped).")],
                     className="grid-2"),
            html.Div([figure_card("as-scatter", "Dormant heads", "Each head on each domain: sink mass against the loss change when zeroed."),
                      figure_card("as-profile", "Selected head per position", "Value norm per position and the attention each query puts on the sink.")],
                     className="grid-2"),
            html.Div(id="as-contrast", className="card"),
            html.H3("A prompt through the selected head"),
            html.Div([
                dcc.Textarea(id="as-prompt", value=DEFAULT_PROMPT, maxLength=2000, style={"width": "100%", "height": "80px"}),
                html.Button("Show pattern", id="as-go", className="primary-btn"),
            ], className="prompt-row"),
            error_box("as-prompt-error"),
            html.Div([figure_card("as-map", "Attention pattern", "The first key column (outlined) is the sink."),
                      html.Div(id="as-prompt-stats", className="card")], className="grid-2"),
            html.Div(id="as-bb", children=[
                figure_card("as-tokens", "BB token-level active/dormant test", "Input [⟨s⟩, all non-triggers, tok]: attention on ⟨s⟩ at the last position."),
                figure_card("as-dynamics", "Training dynamics", "All quantities against log step, from the saved checkpoints."),
            ]),
        ]
    )


def _summary(result, domain: str) -> html.Table:
    h = result.heads[result.heads["domain"] == domain]
    model = result.meta.get("model", {})
    recipe = model.get("extra", {}).get("meta", {}).get("bb", {}).get("recipe")
    name = f"{model.get('id', '?')}" + (f" (BB L{recipe['n_layers']}, {recipe['optimizer']}, {recipe['attention']} attention, "
                                        f"batch {recipe['batch_size']}, lr {recipe['lr']})" if recipe else "")
    rows = [("model", name), ("domain", domain),
            ("BOS prepended", str(result.meta.get("prepend_bos"))),
            ("mean sink mass", f"{h['sink_mass'].mean():.3f}"),
            ("heads with sink mass > 0.5", f"{int((h['sink_mass'] > 0.5).sum())} / {len(h)}")]
    if h["delta_loss"].notna().any():
        rows.append(("dormant heads", f"{int(h['dormant'].sum())}"))
    for k, v in getattr(result, "bb", {}).items():
        if isinstance(v, float):
            rows.append((k, f"{v:.4g}"))
    return html.Table(html.Tbody([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows]), className="summary-table")


def _contrast_table(result, a: str, b: str) -> html.Div:
    t = domain_contrast(result.heads, a, b).head(10)
    head = html.Tr([html.Th(c) for c in ("head", f"sink {a}", f"sink {b}", f"Δloss {a}", f"Δloss {b}", "dormant on")])
    body = []

    def dl(r, side: str) -> str:  # the loss change, with its standard error where the result has one
        se = r.get(f"delta_loss_se_{side}", float("nan"))
        return f"{r[f'delta_loss_{side}']:+.4f}" + (f" ± {se:.4f}" if se == se else "")

    for _, r in t.iterrows():
        where = ", ".join(d for d, flag in ((a, r["dormant_a"]), (b, r["dormant_b"])) if flag) or "neither"
        body.append(html.Tr([html.Td(f"L{int(r['layer'])}H{int(r['head'])}"), html.Td(f"{r['sink_mass_a']:.3f}"),
                             html.Td(f"{r['sink_mass_b']:.3f}"), html.Td(dl(r, "a")), html.Td(dl(r, "b")), html.Td(where)]))
    return html.Div([html.H4(f"Heads whose dormancy differs most: {a} vs {b}"), html.Table([html.Thead(head), html.Tbody(body)], className="summary-table")])


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "as-run", PROBES)
    register_run_note(app, ctx, "as-run", "as-note", PROBE, also=PROBES)

    @app.callback(Output("as-domain", "options"), Output("as-domain", "value"), Output("as-compare", "options"), Output("as-compare", "value"),
                  Output("as-layer", "options"), Output("as-layer", "value"), Output("as-head", "options"), Output("as-head", "value"),
                  Input("as-run", "value"))
    def _controls(run_id):
        if run_id is None:
            return [], None, [], None, [], None, [], None
        try:
            res = ctx.result(run_id)
        except Exception:  # noqa: BLE001 - shown by the figure callback
            return [], None, [], None, [], None, [], None
        doms = [{"label": d, "value": d} for d in res.domains]
        L, H = int(res.heads["layer"].max()) + 1, int(res.heads["head"].max()) + 1
        first = res.domains[0] if res.domains else None
        other = res.domains[1] if len(res.domains) > 1 else first
        best = res.heads.sort_values("sink_mass").iloc[-1] if len(res.heads) else None
        return (doms, first, doms, other, [{"label": str(i), "value": i} for i in range(L)], int(best["layer"]) if best is not None else 0,
                [{"label": str(i), "value": i} for i in range(H)], int(best["head"]) if best is not None else 0)

    @app.callback(
        Output(graph("as-sink"), "figure"), Output(graph("as-diff"), "figure"), Output(graph("as-resid"), "figure"),
        Output(graph("as-value"), "figure"), Output(graph("as-scatter"), "figure"), Output(graph("as-profile"), "figure"),
        Output(graph("as-tokens"), "figure"), Output(graph("as-dynamics"), "figure"),
        Output("as-summary", "children"), Output("as-contrast", "children"), Output("as-bb", "style"), Output("as-error", "children"),
        Input("as-run", "value"), Input("as-domain", "value"), Input("as-compare", "value"), Input("as-layer", "value"), Input("as-head", "value"),
    )
    def _show(run_id, domain, compare, layer, head):
        if run_id is None or domain is None:
            msg = ("No attention-sinks or bigram-backcopy run yet: start one on Home, or `workbench run attention-sinks`.")
            e = empty_figure(msg)
            return e, e, e, e, e, e, e, e, html.P(msg, className="empty"), "", {"display": "none"}, ""
        try:
            res = ctx.result(run_id)
            cfg = res.meta.get("config", {})
            diff = (figs.dormancy_difference_heatmap(res.heads, domain, compare) if compare and compare != domain
                    else empty_figure("choose a second domain to compare"))
            contrast = _contrast_table(res, domain, compare) if compare and compare != domain else ""
            profile = figs.value_profile_figure(res.profiles, domain, int(layer or 0), int(head or 0))
            is_bb = isinstance(res, BigramBackcopyResult)
            tokens = figs.token_dormancy_figure(res.tokens, cfg.get("dormant_threshold", 0.89)) if is_bb else empty_figure("BB models only")
            dyn = (figs.dynamics_figure({"run": res.dynamics}, res.bb.get("bigram_optimum")) if is_bb and not res.dynamics.empty
                   else empty_figure("no training dynamics in this run"))
            return (figs.sink_heatmap(res.heads, domain), diff, figs.residual_norms_figure(res.layers), figs.value_norms_figure(res.heads, domain),
                    figs.ablation_scatter(res.heads, cfg.get("dormant_sink", 0.7), cfg.get("dormant_loss", 0.01)), profile, tokens, dyn,
                    _summary(res, domain), contrast, {} if is_bb else {"display": "none"}, "")
        except Exception as e:  # noqa: BLE001 - shown on the page
            return (no_update,) * 11 + (error_message(e),)

    @app.callback(Output(graph("as-map"), "figure"), Output("as-prompt-stats", "children"), Output("as-prompt-error", "children"),
                  Input("as-go", "n_clicks"), Input("as-layer", "value"), State("as-prompt", "value"), State("as-run", "value"),
                  State("as-head", "value"))
    def _prompt(_n, layer, prompt, run_id, head):
        """The default prompt through the strongest sink head when a run opens; yours on "Show pattern"."""
        if run_id is None:
            return empty_figure("a stored run fixes the model: start one above, then press Show pattern"), "", ""
        try:
            prompt = check_prompt(prompt)
            res = ctx.result(run_id)
            model = ctx.model_of(res)
            r = prompt_head(model, prompt, int(layer or 0), int(head or 0))
        except Exception as e:  # noqa: BLE001 - shown on the page
            return no_update, no_update, error_message(e)
        rn = r["resid_norms"]
        stats = html.Table(html.Tbody([html.Tr([html.Th(k), html.Td(v)]) for k, v in (
            ("head", f"L{layer}H{head}"), ("tokens", str(len(r["tokens"]))),
            ("sink mass (queries ≥ 1)", f"{r['sink_mass']:.3f}"),
            ("value norm first / rest", f"{r['value_ratio']:.3f}"),
            ("residual norm first / rest, last layer", f"{float(rn[-1, 0] / rn[-1, 1:].mean()):.2f}" if rn.shape[1] > 1 else "n/a"),
        )]), className="summary-table")
        return figs.attention_map(r["pattern"], r["tokens"], f"L{layer}H{head}"), stats, ""


PAGE = DashPage(path="/attention-sinks", name="Attention sinks", layout=layout, register=register, probe=PROBE, order=30,
                also_shows=("bigram-backcopy",))
