"""Function tokens and SAE features: pick a stored run and an SAE (layer); see degree against rank,
coverage (with the paper's Table 1), the top-token x strongest-feature graph (hover a token for its
features, click a feature for its top activating contexts), the loss decomposition, and the case study."""

from __future__ import annotations

import pandas as pd
from dash import Dash, Input, Output, State, dcc, html, no_update
from dash import ctx as dash_ctx

from dashboards.base import (
    AppState,
    DashPage,
    error_box,
    error_message,
    feature_href,
    figure_card,
    graph,
    register_run_note,
    register_run_picker,
    run_note,
    run_options,
    run_picker,
    sae_badge,
)
from workbench.saes.quality import quality_badge
from dashboards.figures import empty_figure
from dashboards.figures import function_tokens as figs
from dashboards.graphs import cyto_graph, graph_card, nx_to_elements

PROBE, LOSS, STEER = "function-tokens", "function-token-loss", "function-token-steering"


def _dropdown(component_id: str, label: str, **kw) -> html.Div:
    return html.Div([html.Label(label, htmlFor=component_id), dcc.Dropdown(id=component_id, clearable=False, **kw)], className="run-picker")


def _number(component_id: str, label: str, value: int, lo: int, hi: int) -> html.Div:
    return html.Div([html.Label(label, htmlFor=component_id),
                     dcc.Input(id=component_id, type="number", value=value, min=lo, max=hi, step=1, debounce=True)], className="run-picker")


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Function tokens and SAE features"),
            html.P("A few very frequent tokens (punctuation, articles, prepositions) activate most SAE features "
                   "(arXiv 2510.08203). The function-token set is the smallest most-frequent set covering 40% of token "
                   "occurrences; an edge joins a token type and a feature when the feature fires on that token.", className="lead"),
            html.Div([run_picker("ft-run", PROBE), _dropdown("ft-layer", "SAE (layer)"),
                      _number("ft-ntokens", "Graph tokens", 20, 2, 60), _number("ft-nfeatures", "Features per token", 6, 1, 20)],
                     className="controls"),
            run_note("ft-note"),
            error_box("ft-error"),
            html.Div(html.Div(id="ft-summary"), className="card"),
            html.Div([figure_card("ft-degree", "Degree against frequency rank", "Log-log, one colour per SAE; filled = function tokens."),
                      figure_card("ft-coverage", "Coverage of the top-k tokens", "Solid: share of features ever active; dotted: of all features.")],
                     className="grid-2"),
            html.Div([figure_card("ft-table", "Coverage table", "k = 1..10 beside the paper's Table 1 (Gemma-2-9B, width 2^20)."),
                      figure_card("ft-compare", "Function against content tokens", "Top-10 frequency (function) tokens against the top-10 content tokens.")],
                     className="grid-2"),
            graph_card("ft-graph", "Top tokens × strongest features",
                       "Tokens left (blue: function, orange: content), features right, sized by degree; edge width = mean activation "
                       "per occurrence. Hover a token for its features; click a feature for its top contexts."),
            html.Div([
                html.Div([html.Label("Feature", htmlFor="ft-feature"), dcc.Input(id="ft-feature", type="number", min=0, step=1, debounce=True)],
                         className="run-picker"),
                html.Div([html.Label("Token text", htmlFor="ft-token"), dcc.Input(id="ft-token", type="text", maxLength=50, debounce=True,
                                                                                 placeholder="e.g. ' the' (leading space)")], className="run-picker"),
            ], className="controls"),
            html.Div([html.Div(id="ft-contexts", className="card"), html.Div(id="ft-token-features", className="card")], className="grid-2"),
            html.H3("Loss decomposition"),
            html.Div([html.Div([html.Label("Stored runs", htmlFor="ft-loss-runs"),
                                dcc.Dropdown(id="ft-loss-runs", multi=True, placeholder=f"choose {LOSS} runs")], className="run-picker")],
                     className="controls"),
            error_box("ft-loss-error"),
            html.Div([figure_card("ft-loss", "Loss by (current → target) type", "Mean cross-entropy and share of the total loss."),
                      figure_card("ft-loss-train", "Over training", "Runs on the checkpoints of one workbench-trained model.")],
                     className="grid-2"),
            html.H3("Case study and steering"),
            html.Div([run_picker("ft-steer-run", STEER)], className="controls"),
            error_box("ft-steer-error"),
            figure_card("ft-heat", "Features per token", "SAE activations for both prompts; the steering feature is the first column."),
            html.Div(id="ft-steer", className="card"),
        ]
    )


def summary_block(result) -> html.Div:
    fs = result.function_set
    cc = fs.get("closed_class") or {}
    stats = [("function tokens", f"{fs['size']} at {fs['mass']:.0%} mass ({fs['covered_mass']:.1%} covered)"),
             ("tokenizer / corpus", f"{fs['tokenizer']} / {fs['corpus']}"),
             ("slice", f"{result.meta.get('slice', {}).get('n_positions', '?')} positions")]
    if cc:
        stats.append(("closed-class", f"{cc['n_function_closed_class']}/{cc['n_function']} function tokens; "
                                      f"{cc['function_occurrences_in_closed_class_words']:.1%} of their occurrences"))
    rows = [html.Div([html.Div(k, className="stat-key"), html.Div(v, className="stat-value")], className="stat") for k, v in stats]
    q_rows = []
    for label, s in result.saes.items():
        q = s.get("quality") or {}
        q_rows.append(html.Tr([html.Td(label), html.Td(s["hook"]), html.Td(s["d_sae"]),
                               html.Td(f"{q['explained_variance']:.3f}" if q else "–"), html.Td(f"{q['l0']:.1f}" if q else "–"),
                               html.Td(f"{q['dead_share']:.3f}" if q else "–"), html.Td(f"{q['ce_increase']:.3f}" if q else "–")]))
    table = html.Table([html.Thead(html.Tr([html.Th(h) for h in ("SAE", "hook", "d_sae", "expl. var.", "L0", "dead", "ΔCE")])),
                        html.Tbody(q_rows)], className="details-table")
    weak = [label for label, s in result.saes.items() if quality_badge(s.get("quality"))["weak"]]
    badges = html.Div([html.Div([html.Strong(f"{label}: "), sae_badge(s.get("quality"))]) for label, s in result.saes.items()]
                      + ([html.P(f"Weak SAE{'s' if len(weak) > 1 else ''} ({', '.join(weak)}): features of a poor reconstruction "
                                 "describe the SAE as much as the model; read feature-level results with care.", className="warn")]
                         if weak else []), id="ft-sae-badges")
    toks = ", ".join(repr(t) for t in fs["tokens"][:30]) + (" …" if len(fs["tokens"]) > 30 else "")
    return html.Div([badges, html.Div(rows, className="stats"), html.P(["Function tokens: ", html.Code(toks)]), table])


def contexts_block(result, label: str, feature: int) -> html.Div:
    d = int(result.saes[label]["d_sae"])
    if not 0 <= feature < d:
        return html.P(f"feature {feature} is out of range 0..{d - 1}", className="error")
    f = result.features[(result.features["sae"] == label) & (result.features["feature"] == feature)].iloc[0]
    items = []
    for c in result.top_contexts(label, feature):
        spans = [html.Span(figs.show_token(t), className="ctx-focus" if i == c["focus"] else "ctx-token",
                           style={"fontWeight": "bold", "background": "#fde68a"} if i == c["focus"] else {})
                 for i, t in enumerate(c["tokens"])]
        items.append(html.Li([html.Span(f"{c['activation']:.2f}  ", className="ctx-act"), *spans]))
    head = f"{label} feature {feature}: {int(f['degree'])} token types, {int(f['active_count'])} positions"
    link = html.A("Open its feature page →", href=feature_href(result.saes[label]["source"], feature), id="ft-feature-link")
    return html.Div([html.H4(head), link, html.Ol(items) if items else html.P("never active in this slice")], id="ft-contexts-body")


def token_block(result, label: str, text: str) -> html.Div:
    t = result.tokens[result.tokens["token"] == text]
    if t.empty:
        return html.P(f"no token {text!r} in this slice (tokens are as the tokenizer cuts them, spaces included)")
    row = t.iloc[0]
    feats = result.token_features(label, int(row["token_id"]))
    weighted = result.tensors["weighted_ids"].tolist()
    strongest = ""
    if int(row["token_id"]) in weighted:
        w = result.tensors[f"{label}/wsum"][weighted.index(int(row["token_id"]))] / max(int(row["slice_count"]), 1)
        top = w.topk(min(10, w.numel()))
        strongest = ", ".join(f"f{i} ({v:.2f})" for v, i in zip(top.values.tolist(), top.indices.tolist()) if v > 0)
    return html.Div([html.H4(f"{figs.show_token(text)}: rank {int(row['rank'])}, {int(row['slice_count'])} occurrences, "
                             f"{'function' if row['is_function'] else 'content'} token"),
                     html.P(f"activates {len(feats)} features at {label}"),
                     html.P(f"strongest: {strongest}") if strongest else None,
                     html.P("features: " + ", ".join(f"f{f}" for f in feats[:200]) + (" …" if len(feats) > 200 else ""))])


def _loss_tables(ctx: AppState, run_ids: list[int]) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for rid in run_ids or []:
        r = ctx.result(int(rid))
        out.append((f"#{rid} {r.meta.get('model', {}).get('id', '')}"[:40], r.table))
    return out


def training_frame(ctx: AppState) -> tuple[str, pd.DataFrame] | None:
    """The loss decomposition over the checkpoints of the recipe with the most stored checkpoint runs."""
    by_recipe: dict[str, list[tuple[int, int]]] = {}
    for row in ctx.finished_runs(LOSS):
        try:
            r = ctx.result(int(row["run_id"]))
        except LookupError:
            continue
        meta = (r.meta.get("model", {}).get("extra") or {}).get("meta") or {}
        if "step" in meta and "recipe" in meta:
            name = str(meta["recipe"].get("n_layers")) + "L-d" + str(meta["recipe"].get("d_model")) + f"-seed{meta['recipe'].get('seed')}"
            by_recipe.setdefault(name, []).append((int(meta["step"]), int(row["run_id"])))
    if not by_recipe:
        return None
    name, runs = max(by_recipe.items(), key=lambda kv: len({s for s, _ in kv[1]}))
    frames, seen = [], set()
    for step, rid in sorted(runs):
        if step not in seen:
            seen.add(step)
            frames.append(ctx.result(rid).table.assign(step=max(step, 1)))
    return name, pd.concat(frames, ignore_index=True)


def steering_block(result) -> html.Div:
    info = result.info
    g = figs.generations_table(result)
    rows = [html.Tr([html.Td(v) for v in r]) for r in g.itertuples(index=False)]
    return html.Div([
        html.P(["Feature ", html.A(f"f{info['feature']}", href=feature_href(info["sae"], info["feature"]), id="ft-steer-feature-link"),
                f" ({info['feature_choice']}), added at B's last token "
               f"{figs.show_token(info['final_token'])!r} (position {info['steer_position']}) and, as the control, at the content "
               f"token {figs.show_token(info['control_token'])!r} (position {info['control_position']}), at "
               f"{', '.join(f'{x:g}' for x in info['strengths'])} x its activation at A's final token ({info['base_activation']:.2f}). "
               f"The final token is {'a' if info['final_is_function_token'] else 'NOT a'} function token; mentions_a / mentions_b: "
               f"does the continuation name {info['word_a']!r} / {info['word_b']!r}."]),
        html.P(f"Reactivated at the final token: {info['n_reactivated_a']} of {info['n_final_active_a']} features in A, "
               f"{info['n_reactivated_b']} of {info['n_final_active_b']} in B."),
        html.Table([html.Thead(html.Tr([html.Th(c) for c in g.columns])), html.Tbody(rows)], className="details-table", id="ft-steer-table"),
    ])


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "ft-run", PROBE)
    register_run_note(app, ctx, "ft-run", "ft-note", PROBE)
    register_run_picker(app, ctx, "ft-steer-run", STEER)

    @app.callback(Output("ft-layer", "options"), Output("ft-layer", "value"), Input("ft-run", "value"))
    def _layers(run_id):
        if run_id is None:
            return [], None
        try:
            labels = ctx.result(run_id).labels
        except Exception:
            return [], None
        return [{"label": lb, "value": lb} for lb in labels], (labels[len(labels) // 2] if labels else None)

    @app.callback(
        Output("ft-summary", "children"), Output(graph("ft-degree"), "figure"), Output(graph("ft-coverage"), "figure"),
        Output(graph("ft-table"), "figure"), Output(graph("ft-compare"), "figure"), Output("ft-error", "children"),
        Input("ft-run", "value"),
    )
    def _show(run_id):
        if run_id is None:
            msg = f"No {PROBE} run yet: train the SAEs (python -m experiments.train_saes), then `workbench run {PROBE}`."
            e = empty_figure(msg)
            return html.P(msg, className="empty"), e, e, e, e, ""
        try:
            r = ctx.result(run_id)
            return (summary_block(r), figs.degree_rank_figure(r), figs.coverage_figure(r), figs.coverage_table_figure(r),
                    figs.comparison_figure(r), "")
        except Exception as e:
            return no_update, no_update, no_update, no_update, no_update, error_message(e)

    @app.callback(Output(cyto_graph("ft-graph"), "elements"), Output("ft-error", "children", allow_duplicate=True),
                  Input("ft-run", "value"), Input("ft-layer", "value"), Input("ft-ntokens", "value"), Input("ft-nfeatures", "value"),
                  prevent_initial_call=True)
    def _graph(run_id, label, n_tokens, n_features):
        if run_id is None or label is None:
            return [], ""
        try:
            r = ctx.result(run_id)
            g = figs.styled_graph(r.layer_graph(label, int(n_tokens or 20), int(n_features or 6)))
            return nx_to_elements(g, pos=figs.bipartite_positions(g)), ""
        except Exception as e:
            return no_update, error_message(e)

    @app.callback(Output("ft-contexts", "children"),
                  Input(cyto_graph("ft-graph"), "tapNodeData"), Input("ft-feature", "value"),
                  State("ft-run", "value"), State("ft-layer", "value"), prevent_initial_call=True)
    def _contexts(node, feature, run_id, label):
        if run_id is None or label is None:
            return no_update
        if dash_ctx.triggered_id == "ft-feature":
            if feature is None:
                return no_update
            f, layer = int(feature), label
        else:
            if not node or node.get("kind") != "feature":
                return no_update
            f, layer = int(node["feature"]), node.get("layer", label)
        try:
            return contexts_block(ctx.result(run_id), layer, f)
        except Exception as e:
            return error_message(e)

    @app.callback(Output("ft-token-features", "children"), Input("ft-token", "value"), Input("ft-layer", "value"),
                  State("ft-run", "value"), prevent_initial_call=True)
    def _token(text, label, run_id):
        if run_id is None or label is None or not text:
            return no_update
        try:
            return token_block(ctx.result(run_id), label, str(text)[:50])
        except Exception as e:
            return error_message(e)

    @app.callback(Output("ft-token", "value"), Input("ft-run", "value"), State("url", "search"))
    def _token_from_address(run_id, search):
        """`?token=<id>` (the links from a feature page's firing tokens) looks that token up."""
        from urllib.parse import parse_qs

        wanted = parse_qs((search or "").lstrip("?")).get("token", [""])[0]
        if run_id is None or not wanted.isdigit():
            return no_update
        try:
            t = ctx.result(run_id).tokens
            row = t[t["token_id"] == int(wanted)]
        except Exception:
            return no_update
        return no_update if row.empty else str(row.iloc[0]["token"])

    @app.callback(Output("ft-loss-runs", "options"), Output("ft-loss-runs", "value"), Input("url", "pathname"))
    def _loss_options(_path):
        opts = run_options(ctx, LOSS)
        return opts, [opts[0]["value"]] if opts else []

    @app.callback(Output(graph("ft-loss"), "figure"), Output(graph("ft-loss-train"), "figure"), Output("ft-loss-error", "children"),
                  Input("ft-loss-runs", "value"))
    def _loss(run_ids):
        try:
            tables = _loss_tables(ctx, run_ids)
            bars = figs.loss_bars_figure(tables) if tables else empty_figure(f"No {LOSS} run selected: `workbench run {LOSS}`.")
            tr = training_frame(ctx)
            curves = figs.loss_curves_figure(tr[1], f"Loss decomposition over training ({tr[0]})") if tr else empty_figure(
                "No checkpoint runs yet (python -m experiments.function_tokens).")
            return bars, curves, ""
        except Exception as e:
            return no_update, no_update, error_message(e)

    @app.callback(Output(graph("ft-heat"), "figure"), Output("ft-steer", "children"), Output("ft-steer-error", "children"),
                  Input("ft-steer-run", "value"))
    def _steer(run_id):
        if run_id is None:
            msg = f"No {STEER} run yet: `workbench run {STEER}`."
            return empty_figure(msg), html.P(msg, className="empty"), ""
        try:
            r = ctx.result(run_id)
            return figs.case_heatmaps_figure(r), steering_block(r), ""
        except Exception as e:
            return no_update, no_update, error_message(e)


PAGE = DashPage(path="/function-tokens", name="Function tokens", layout=layout, register=register, probe=PROBE, order=40)
