"""Key space: a stored key-space run's clusters and gold-list probing, plus live probing of a typed
instruction. Pick a category (or type an instruction and press "Probe"), see the ranked first tokens
with their clusters and judged answers, step through the ICN rounds, and look up any token's
cosine neighbours on the key map.

Live probing decodes `top-N` continuations and `explored` ICN answers on the run's model in the
callback (on CPU with SmolLM2 about a second per few answers), so its sizes are bounded.
"""

from __future__ import annotations

import pandas as pd
from dash import Dash, Input, Output, State, callback_context, dcc, html, no_update

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
from dashboards.figures import empty_figure
from dashboards.figures.key_space import (
    discovery_figure,
    family_figure,
    key_map_figure,
    precision_figure,
    query_key_figure,
    ranking_figure,
    show_token,
    verdict,
)
from probes.key_space import (
    gold_lists,
    nearest_neighbours,
    numbered_answers,
    probe_typed_instruction,
    single_token_id,
    unembedding_keys,
)
from workbench.errors import ConfigError

PROBE = "key-space"
TYPED = "__typed__"
LIVE_MAX_TOP_N = 100
LIVE_MAX_EXPLORE = 30


def layout() -> html.Div:
    return html.Div(
        [
            html.H2("Key space: correlation and in-context navigation"),
            html.P("Logits are dot products of one query with fixed keys (the unembedding rows). Keys that sit together are ranked "
                   "together: the middle ranks fill with tokens resembling the top ones. In-context navigation lists the answers "
                   "explored so far in the prompt, which moves the query away from their keys.", className="lead"),
            html.Div([run_picker("ks-run", PROBE)], className="controls"),
            run_note("ks-note"),
            error_box("ks-error"),
            html.Div(html.Div(id="ks-summary"), className="card"),
            html.Div(
                [
                    html.Div([html.Label("Category", htmlFor="ks-category"), dcc.Dropdown(id="ks-category", clearable=False)],
                             className="form-field wide"),
                    html.Div([html.Label("ICN round", htmlFor="ks-round"), dcc.Slider(id="ks-round", min=0, max=1, step=1, value=0)],
                             className="form-field wide"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    html.H4("Probe your own instruction"),
                    html.P("Runs on the stored run's model and clusters. Pick a gold list to judge the answers with, or none.",
                           className="figure-description"),
                    dcc.Textarea(id="ks-instruction", value="Please show me some US states.", className="prompt-box", spellCheck=False),
                    html.Div(
                        [
                            html.Div([html.Label("Judge with", htmlFor="ks-judge"), dcc.Dropdown(id="ks-judge", placeholder="no gold list")],
                                     className="form-field wide"),
                            html.Div([html.Label("Top-N", htmlFor="ks-topn"),
                                      dcc.Input(id="ks-topn", type="number", min=11, max=LIVE_MAX_TOP_N, step=1, value=30)], className="form-field"),
                            html.Div([html.Label("Explored", htmlFor="ks-explore"),
                                      dcc.Input(id="ks-explore", type="number", min=1, max=LIVE_MAX_EXPLORE, step=1, value=10)], className="form-field"),
                            html.Button("Probe", id="ks-probe", className="primary-btn"),
                        ],
                        className="controls",
                    ),
                ],
                className="card",
            ),
            figure_card("ks-ranking", "Ranked first tokens", "Bars: logit of each candidate first token, coloured by whether its key shares a "
                        "cluster with a top-K token. Markers: the greedy answer judged against the gold list."),
            html.Div([figure_card("ks-discovery", "ICN against the baseline", "Correct and distinct answers as more are explored."),
                      figure_card("ks-dots", "Query against explored keys", "Dot product of each round's query with every explored key.")],
                     className="grid-2"),
            html.Div([html.H4("ICN round"), html.Div(id="ks-round-view")], className="card"),
            figure_card("ks-precision", "Precision per group", "Middle ranks (after the top K) split by main-cluster membership."),
            html.Div(
                [
                    html.Div([html.Label("Token", htmlFor="ks-token"), dcc.Input(id="ks-token", type="text", value="A", debounce=True, maxLength=64)],
                             className="form-field"),
                    html.P("A token string as the tokenizer writes it (a leading space counts).", className="figure-description"),
                ],
                className="controls",
            ),
            html.Div([figure_card("ks-map", "Key map", "PCA of the keys coloured by k-means cluster; the token, its cluster and its "
                                  "cosine neighbours highlighted."), html.Div(id="ks-neighbours", className="card")], className="grid-2"),
            figure_card("ks-families", "Token families", "Single capital letters, digits and their leading-space variants against the clusters."),
            dcc.Store(id="ks-live"),
        ]
    )


def _records(df: pd.DataFrame) -> list[dict]:
    return df.astype(object).where(df.notna(), None).to_dict("records")


def _tables(ctx: AppState, run_id, category, live) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, int]:
    """(candidates, icn, dots, top_k) of the chosen category, stored or live."""
    if category == TYPED and live:
        return pd.DataFrame(live["candidates"]), pd.DataFrame(live["icn"]), pd.DataFrame(live["dots"]), int(live["top_k"])
    res = ctx.result(run_id)
    top_k = int(res.meta.get("config", {}).get("top_k", 10))
    sel = lambda df: df[df["category"] == category]  # noqa: E731
    return sel(res.candidates), sel(res.icn), sel(res.icn_dots), top_k


def round_view(icn: pd.DataFrame, rnd: int) -> html.Div:
    """The numbered list the prompt holds at round `rnd`, and the answers that round explores."""
    i = icn[icn["method"] == "icn"].sort_values("step")
    if i.empty:
        return html.P("No ICN rounds.", className="empty")
    fed = list(i[i["round"] < rnd]["answer"])
    now = i[i["round"] == rnd]
    items = [html.Li([html.Code(show_token(r["token"])), " → “", r["answer"], "” ",
                      html.Span(verdict(r["correct"]), className={"correct": "ok", "wrong": "bad"}.get(verdict(r["correct"]), "")),
                      f" (rank {r['rank_in_round']} this round)"]) for _, r in now.iterrows()]
    return html.Div([
        html.P(f"Round {rnd}: the prompt ends with"),
        html.Pre("Answer:\n" + numbered_answers(fed), className="prompt-preview"),
        html.P("First tokens explored this round:"), html.Ul(items) if items else html.P("none (final prompt)"),
    ], id="ks-round-content")


def run_view(ctx: AppState, run_id, live: dict | None, current: str | None, show_typed: bool = False) -> tuple:
    """(category options, chosen category, judge options, precision figure, family figure, summary table) of a stored run.

    `show_typed`: a typed instruction was just probed, so choose it."""
    res = ctx.result(run_id)
    cats = list(dict.fromkeys(res.candidates["category"])) if not res.candidates.empty else list(res.prompts)  # probing order
    options = [{"label": f"{c}: {res.prompts[c]['instruction']}", "value": c} for c in cats]
    if live:
        options.append({"label": f"typed: {live['instruction'][:60]}", "value": TYPED})
    judges = [{"label": k, "value": k} for k in gold_lists()]
    if live and (show_typed or current in (TYPED, None)):
        value = TYPED
    else:
        value = current if current in cats else (cats[0] if cats else None)
    summary = html.Table(html.Tbody([html.Tr([html.Th(k), html.Td(str(v))]) for k, v in res.summary().items()]),
                         className="summary-table", id="ks-summary-table")
    return options, value, judges, precision_figure(res.groups), family_figure(res.families, res.family_summary), summary


def category_view(ctx: AppState, run_id, category: str, live: dict | None) -> tuple:
    """(ranking figure, discovery figure, last ICN round, slider marks) of a stored category or the typed instruction."""
    cand, icn, _, top_k = _tables(ctx, run_id, category, live)
    last = int(icn[icn["method"] == "icn"]["round"].max()) + 1 if len(icn) else 1
    marks = {r: str(r) for r in range(0, last + 1, max(1, last // 10))}
    return ranking_figure(cand, top_k=top_k), discovery_figure(icn), last, marks


def rounds_view(ctx: AppState, run_id, category: str, live: dict | None, rnd: int) -> tuple:
    """(query-key figure with round `rnd` marked, the round's prompt and explored answers)."""
    _, icn, dots, _ = _tables(ctx, run_id, category, live)
    return query_key_figure(dots, current_round=rnd), round_view(icn, rnd)


def live_probe(ctx: AppState, run_id, instruction, judge: str | None, top_n, explore) -> dict:
    """Probe a typed instruction on the run's model with the run's clusters; JSON-able tables for a dcc.Store."""
    if run_id is None:
        raise ConfigError("choose a stored key-space run first (its clusters are used)")
    instruction = check_prompt(instruction)
    res = ctx.result(run_id)
    p, cfg = probe_typed_instruction(ctx.model_of(res), res, instruction, int(top_n or 30), int(explore or 10), judge,
                                     LIVE_MAX_TOP_N, LIVE_MAX_EXPLORE)
    return {"instruction": instruction, "top_k": cfg.top_k, "candidates": _records(p.candidates), "icn": _records(p.icn),
            "dots": _records(p.dots)}


def token_view(ctx: AppState, run_id, token: str | None) -> tuple:
    """(key map with the token's cluster and cosine neighbours highlighted, neighbour table)."""
    res = ctx.result(run_id)
    xy, cl, ev = res.key_map.numpy(), res.cluster_ids.numpy(), res.geometry.get("map_explained_variance")
    if not token:
        return key_map_figure(xy, cl, res.vocab, explained=ev), ""
    model = ctx.model_of(res)
    tid = single_token_id(model.tokenizer, token)
    if tid is None:
        raise ConfigError(f"{token!r} is not a single token of this tokenizer")
    nb = nearest_neighbours(unembedding_keys(model), tid, 10)
    rows = [html.Tr([html.Td(str(i + 1)), html.Td(html.Code(show_token(res.vocab[j]))), html.Td(str(int(cl[j]))), html.Td(f"{c:.3f}")])
            for i, (j, c) in enumerate(nb)]
    table = html.Div([
        html.H4(f"Neighbours of {show_token(token)!r} (cluster {int(cl[tid])})"),
        html.Table([html.Thead(html.Tr([html.Th("#"), html.Th("token"), html.Th("cluster"), html.Th("cosine")])), html.Tbody(rows)],
                   className="summary-table", id="ks-neighbour-table"),
    ])
    return key_map_figure(xy, cl, res.vocab, tid, [j for j, _ in nb], explained=ev), table


def register(app: Dash, ctx: AppState) -> None:
    register_run_picker(app, ctx, "ks-run", PROBE)
    register_run_note(app, ctx, "ks-run", "ks-note", PROBE)

    @app.callback(
        Output("ks-category", "options"), Output("ks-category", "value"), Output("ks-judge", "options"),
        Output(graph("ks-precision"), "figure"), Output(graph("ks-families"), "figure"), Output("ks-summary", "children"),
        Output("ks-error", "children", allow_duplicate=True),
        Input("ks-run", "value"), Input("ks-live", "data"), State("ks-category", "value"),
        prevent_initial_call="initial_duplicate",
    )
    def _run_chosen(run_id, live, current):
        if run_id is None:
            msg = "No key-space run yet: start one on Home, or `workbench run key-space`."
            return [], None, [], empty_figure(msg), empty_figure(msg), html.P(msg, className="empty"), ""
        try:
            return (*run_view(ctx, run_id, live, current, show_typed=callback_context.triggered_id == "ks-live"), "")
        except Exception as e:
            return no_update, no_update, no_update, no_update, no_update, no_update, error_message(e)

    @app.callback(
        Output(graph("ks-ranking"), "figure"), Output(graph("ks-discovery"), "figure"), Output("ks-round", "max"),
        Output("ks-round", "value"), Output("ks-round", "marks"), Output("ks-error", "children", allow_duplicate=True),
        Input("ks-category", "value"), Input("ks-live", "data"), State("ks-run", "value"),
        prevent_initial_call=True,
    )
    def _category(category, live, run_id):
        if run_id is None or category is None:
            return empty_figure("choose a run and a category"), empty_figure(""), 1, 0, {}, ""
        try:
            ranking, discovery, last, marks = category_view(ctx, run_id, category, live)
        except Exception as e:
            return no_update, no_update, no_update, no_update, no_update, error_message(e)
        return ranking, discovery, last, 0, marks, ""

    @app.callback(
        Output(graph("ks-dots"), "figure"), Output("ks-round-view", "children"),
        Input("ks-round", "value"), Input("ks-category", "value"), Input("ks-live", "data"), State("ks-run", "value"),
    )
    def _round(rnd, category, live, run_id):
        if run_id is None or category is None:
            return empty_figure("choose a run and a category"), ""
        try:
            return rounds_view(ctx, run_id, category, live, int(rnd or 0))
        except Exception as e:
            return empty_figure(str(e)), error_message(e)

    @app.callback(
        Output("ks-live", "data"), Output("ks-error", "children", allow_duplicate=True),
        Input("ks-probe", "n_clicks"),
        State("ks-run", "value"), State("ks-instruction", "value"), State("ks-judge", "value"), State("ks-topn", "value"),
        State("ks-explore", "value"),
        prevent_initial_call=True,
    )
    def _probe(n_clicks, run_id, instruction, judge, top_n, explore):
        try:
            return live_probe(ctx, run_id, instruction, judge, top_n, explore), ""
        except Exception as e:
            return no_update, error_message(e)

    @app.callback(Output(graph("ks-map"), "figure"), Output("ks-neighbours", "children"), Input("ks-token", "value"), Input("ks-run", "value"))
    def _token(token, run_id):
        if run_id is None:
            return empty_figure("choose a run"), ""
        try:
            return token_view(ctx, run_id, token)
        except Exception as e:
            return empty_figure(str(e)), error_message(e)


PAGE = DashPage(path="/key-space", name="Key space", layout=layout, register=register, probe=PROBE, order=60)
