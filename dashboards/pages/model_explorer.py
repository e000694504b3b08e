"""Model explorer: type a prompt and look inside one forward pass: the tokens, the top-k next tokens
at any position, attention patterns per layer and head (also token by token, on hover), residual
norms per layer, the logit lens, an attention-flow graph, direct logit attribution per head, and
activation patching between a clean and a corrupted prompt. Works for every model in the registry (`?model=<name>` preselects one).
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

import torch
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html, no_update

from dashboards.base import (
    MAX_PROMPT_CHARS,
    AppState,
    DashPage,
    check_model_name,
    error_box,
    error_message,
    figure_card,
    graph,
    model_names,
)
from dashboards.cache import LRU
from dashboards.figures import empty_figure, show_token
from dashboards.figures.attention_view import attention_page_html
from dashboards.figures.model_explorer import (
    attention_figure,
    chip_text,
    dla_figure,
    head_grid_figure,
    patching_figure,
    prompt_lens_figure,
    prompt_norms_figure,
)
from dashboards.graphs import (
    cyto_graph,
    flow_positions,
    graph_card,
    nx_to_elements,
    style_flow_graph,
)
from workbench.logit_attribution import direct_logit_attribution
from workbench.patching import KINDS, patch_prompts
from workbench.prompt_analysis import (
    MAX_TOKENS,
    TOPK_KEEP,
    PromptAnalysis,
    analyse_prompt,
    attention_flow_graph,
    check_prompt,
    compute_lens,
    flow_layer_range,
)

DEFAULT_PROMPT = "The capital of France is Paris. The capital of Germany is"
IOI_CLEAN = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
KIND_LABELS = {"resid_pre": "residual stream (layer x position)", "attn_out": "attention output (layer x position)",
               "head": "attention heads (layer x head)"}


class AnalysisCache:
    """The page's LRU cache of prompt analyses keyed by (model name, prompt): changing the layer,
    head or position redraws without another forward pass."""

    def __init__(self, size: int = 6):
        self._lru: LRU[PromptAnalysis] = LRU(size)

    def get(self, ctx, model_name: str, prompt: str, lens: bool = False) -> PromptAnalysis:
        """The analysis of `prompt` (forward pass once); with `lens`, the logit lens too."""
        check_prompt(prompt)  # before anything is looked up or loaded for it
        a = self._lru.get((model_name, prompt), lambda: analyse_prompt(ctx.model(model_name), prompt, model_name, lens=False))
        return compute_lens(a, ctx.model(model_name)) if lens else a


CACHE = AnalysisCache()


def _shown(a: PromptAnalysis) -> list[str]:
    return [show_token(t) for t in a.tokens]
log = logging.getLogger("workbench.dashboard")


def layout() -> html.Div:
    models = model_names()
    return html.Div(
        [
            html.H2("Model explorer"),
            html.P("One forward pass over your prompt: what the model predicts next, where each head looks, how the "
                   "residual stream grows, and when the right answer appears in the logit lens.", className="lead"),
            html.Div(
                [
                    html.Div(
                        [
                            html.Div([html.Label("Model", htmlFor="explorer-model"),
                                      dcc.Dropdown(id="explorer-model", options=[{"label": m, "value": m} for m in models], clearable=False)],
                                     className="form-field wide"),
                            html.Div([html.Label("Top-k", htmlFor="explorer-k"),
                                      dcc.Input(id="explorer-k", type="number", min=1, max=TOPK_KEEP, step=1, value=10, debounce=True)],
                                     className="form-field"),
                            html.Button("Run", id="explorer-run", className="primary-btn"),
                        ],
                        className="controls",
                    ),
                    dcc.Textarea(id="explorer-prompt", value=DEFAULT_PROMPT, className="prompt-box", spellCheck=False),
                    html.Div(id="explorer-count", className="char-count"),
                    error_box("explorer-error"),
                    html.Div(id="explorer-notice", className="notice"),
                ],
                className="card",
            ),
            html.Div(
                [
                    html.Div([html.H4("Tokens"), html.P("Click a token to see what the model predicts after it.", className="figure-description"),
                              dcc.Loading(html.Div(id="explorer-tokens", className="tokens"), type="dot")], className="card"),
                    html.Div([html.H4(id="explorer-topk-title", children="Next tokens"), html.Div(id="explorer-topk")], className="card"),
                ],
                className="explorer-top",
            ),
            html.Div(
                [
                    html.Div([html.Label("Layer", htmlFor="explorer-layer"), dcc.Dropdown(id="explorer-layer", clearable=False)], className="form-field"),
                    html.Div([html.Label("Head", htmlFor="explorer-head"), dcc.Dropdown(id="explorer-head", clearable=False)], className="form-field"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    figure_card("explorer-attn", "Attention pattern", "Rows are query positions, columns the positions they read from."),
                    figure_card("explorer-heads", "Every head at the selected position", "Where the selected token attends, head by head."),
                ],
                className="grid-2",
            ),
            html.Div(
                [
                    html.H4("Attention, token by token"),
                    html.P("Hover a token to see how much it attends to each earlier token (click to keep it); "
                           "pick a head or the mean. The layer is the one chosen above.", className="figure-description"),
                    dcc.Loading(html.Iframe(id="explorer-attn-view", className="attention-frame"), type="dot", delay_show=400),
                ],
                className="card",
            ),
            html.Div(
                [
                    figure_card("explorer-norms", "Residual norms", "Norm of the residual stream after each layer (log scale)."),
                    figure_card("explorer-lens", "Logit lens", "Each layer's residual decoded with the final norm and unembedding."),
                ],
                className="grid-2", id="explorer-lens-row",
            ),
            html.Div([html.Label("Flow graph layers", htmlFor="explorer-flow-layers"),
                      dcc.RangeSlider(id="explorer-flow-layers", min=0, max=1, step=1, value=[0, 1], allowCross=False,
                                      tooltip={"placement": "bottom"})], className="form-field wide", id="explorer-flow-controls"),
            graph_card("explorer-flow", "Attention flow",
                       "Residual stream at each chosen layer (rows) and position (columns, last 16 tokens); "
                       "each node keeps its two strongest incoming attention edges (mean over heads). Colour: logit-lens "
                       "probability of the actual next token; size: residual norm. Click a node for details.", height="560px"),
            html.Div(
                [
                    html.Div([html.Label("Next token", htmlFor="explorer-dla-token"),
                              dcc.Dropdown(id="explorer-dla-token", clearable=False)], className="form-field wide"),
                ],
                className="controls",
            ),
            figure_card("explorer-dla", "Direct logit attribution",
                        "What each head and MLP writes directly into the chosen next token's logit at the selected position "
                        "(through the final norm, at its scale in this run, and the unembedding). The terms sum to the logit."),
            html.Div(
                [
                    html.H4("Activation patching"),
                    html.P("Run the corrupted prompt, copy one activation from the clean run, and see how much of the clean "
                           "logit difference (answer minus wrong answer, at the last position) comes back: 1 = clean, 0 = corrupted. "
                           "The prompts must have the same number of tokens.", className="figure-description"),
                    html.Div([html.Label("Clean prompt", htmlFor="patch-clean"),
                              dcc.Textarea(id="patch-clean", value=IOI_CLEAN, className="prompt-box short", spellCheck=False)]),
                    html.Div([html.Label("Corrupted prompt", htmlFor="patch-corrupted"),
                              dcc.Textarea(id="patch-corrupted", value=IOI_CORRUPTED, className="prompt-box short", spellCheck=False)]),
                    html.Div(
                        [
                            html.Div([html.Label("Answer", htmlFor="patch-answer"), dcc.Input(id="patch-answer", value=" Mary", type="text")],
                                     className="form-field"),
                            html.Div([html.Label("Wrong answer", htmlFor="patch-wrong"), dcc.Input(id="patch-wrong", value=" John", type="text")],
                                     className="form-field"),
                            html.Div([html.Label("Patch", htmlFor="patch-kind"),
                                      dcc.Dropdown(id="patch-kind", options=[{"label": KIND_LABELS[k], "value": k} for k in KINDS],
                                                   value="resid_pre", clearable=False)], className="form-field wide"),
                            html.Button("Patch", id="patch-run", className="primary-btn"),
                        ],
                        className="controls",
                    ),
                    error_box("patch-error"),
                ],
                className="card",
            ),
            figure_card("explorer-patch", "Patching heatmap", "Red: copying this activation restores the clean answer; "
                        "blue: it pushes further toward the wrong one."),
            dcc.Store(id="explorer-data"),
            dcc.Store(id="explorer-pos"),
        ]
    )


def _analysis(app_ctx: AppState, data: dict, lens: bool = False):
    return CACHE.get(app_ctx, data["model"], data["prompt"], lens=lens)


def _tokenizer(app_ctx: AppState, name: str):
    return app_ctx.model(name).tokenizer


def register(app: Dash, app_ctx: AppState) -> None:
    app.clientside_callback(
        f"""function(v) {{
            const n = (v || '').length, max = {MAX_PROMPT_CHARS};
            return [n + ' / ' + max + ' characters' + (n > max ? ' (too long)' : ''), n > max ? 'char-count over' : 'char-count'];
        }}""",
        Output("explorer-count", "children"), Output("explorer-count", "className"), Input("explorer-prompt", "value"),
    )

    @app.callback(
        Output("explorer-error", "children"), Output("explorer-notice", "children"), Output("explorer-data", "data"),
        Output("explorer-tokens", "children"), Output("explorer-layer", "options"), Output("explorer-layer", "value"),
        Output("explorer-head", "options"), Output("explorer-head", "value"), Output("explorer-model", "value"),
        Output("explorer-pos", "data"),
        Input("explorer-run", "n_clicks"),
        State("explorer-prompt", "value"), State("explorer-model", "value"), State("url", "search"),
    )
    def _analyse(n_clicks, prompt, model, search):
        nothing = (no_update,) * 9
        try:
            if not n_clicks:  # first load: the model from ?model= or the app's default
                asked = parse_qs((search or "").lstrip("?")).get("model", [None])[0]
                model = asked if asked is not None else app_ctx.default_model
            model = check_model_name(model, extra=(app_ctx.default_model,))
            a = CACHE.get(app_ctx, model, prompt)
        except Exception as e:
            return (error_message(e), "", None, [], [], None, [], None, no_update, None) if n_clicks else (error_message(e),) + nothing
        notice = f"Only the first {MAX_TOKENS} tokens are analysed." if a.truncated else ""
        chips = [
            html.Span(chip_text(t), id={"type": "explorer-tok", "pos": i}, title=f"position {i}, token id {tid}",
                      className="tok" + (" bos" if i == 0 and a.has_bos else "") + (" selected" if i == a.n_tokens - 1 else ""))
            for i, (t, tid) in enumerate(zip(a.tokens, a.token_ids))
        ]
        data = {"model": model, "prompt": prompt, "T": a.n_tokens, "L": a.n_layers, "H": a.n_heads, "tokens": _shown(a), "bos": a.has_bos}
        layers = [{"label": f"layer {l}", "value": l} for l in range(a.n_layers)]
        heads = [{"label": "mean over heads", "value": -1}] + [{"label": f"head {h}", "value": h} for h in range(a.n_heads)]
        return "", notice, data, chips, layers, 0, heads, -1, model, a.n_tokens - 1

    @app.callback(
        Output("explorer-pos", "data", allow_duplicate=True), Output({"type": "explorer-tok", "pos": ALL}, "className"),
        Input({"type": "explorer-tok", "pos": ALL}, "n_clicks"),
        State({"type": "explorer-tok", "pos": ALL}, "id"), State("explorer-data", "data"),
        prevent_initial_call=True,
    )
    def _select(clicks, ids, data):
        t = ctx.triggered_id
        if not data or not ids or not isinstance(t, dict) or not any(clicks):
            return no_update, [no_update] * len(ids or [])
        pos = int(t["pos"])
        classes = ["tok" + (" bos" if i["pos"] == 0 and data.get("bos") else "") + (" selected" if i["pos"] == pos else "") for i in ids]
        return pos, classes

    @app.callback(
        Output("explorer-topk", "children"), Output("explorer-topk-title", "children"),
        Input("explorer-data", "data"), Input("explorer-pos", "data"), Input("explorer-k", "value"),
    )
    def _topk(data, pos, k):
        if not data or pos is None:
            return no_update, no_update
        try:
            a = _analysis(app_ctx, data)
            k = max(1, min(TOPK_KEEP, int(k or 10)))
            pos = max(0, min(a.n_tokens - 1, int(pos)))
            tok = _tokenizer(app_ctx, data["model"])
            probs = a.topk_probs[pos, :k].tolist()
            names = a.decode(a.topk_ids[pos, :k], tok)
        except Exception as e:
            return error_message(e), "Next tokens"
        top = max(probs) or 1.0
        rows = [html.Tr([html.Td(str(i + 1), className="muted"), html.Td(chip_text(n), className="tokcell"),
                         html.Td(html.Div(className="bar", style={"width": f"{100 * p / top:.1f}%"}), className="bar-cell"),
                         html.Td(f"{p:.2%}")], className="topk-row")
                for i, (n, p) in enumerate(zip(names, probs))]
        title = f"Top-{k} next tokens after position {pos} {a.tokens[pos]!r}"
        return html.Table(html.Tbody(rows), className="topk-table"), title

    @app.callback(
        Output(graph("explorer-attn"), "figure"),
        Input("explorer-data", "data"), Input("explorer-layer", "value"), Input("explorer-head", "value"),
    )
    def _attention(data, layer, head):
        if not data or layer is None:
            return empty_figure("run a prompt")
        try:
            a = _analysis(app_ctx, data)
            layer = max(0, min(a.n_layers - 1, int(layer)))
            pat = a.attn[layer].float()
            h = None if head is None or int(head) < 0 else min(a.n_heads - 1, int(head))
            z = (pat.mean(0) if h is None else pat[h]).numpy()
            return attention_figure(z, _shown(a), layer, h)
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")

    @app.callback(
        Output(graph("explorer-heads"), "figure"),
        Input("explorer-data", "data"), Input("explorer-layer", "value"), Input("explorer-pos", "data"),
    )
    def _heads(data, layer, pos):
        if not data or layer is None or pos is None:
            return empty_figure("run a prompt")
        try:
            a = _analysis(app_ctx, data)
            layer = max(0, min(a.n_layers - 1, int(layer)))
            return head_grid_figure(a.attn[layer].float().numpy(), layer, max(0, min(a.n_tokens - 1, int(pos))), _shown(a))
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")

    @app.callback(Output("explorer-attn-view", "srcDoc"), Input("explorer-data", "data"), Input("explorer-layer", "value"))
    def _attention_view(data, layer):
        if not data or layer is None:
            return no_update
        try:
            a = _analysis(app_ctx, data)
            layer = max(0, min(a.n_layers - 1, int(layer)))
            return attention_page_html(a.attn[layer].float().numpy(), a.tokens, layer, title=f"Layer {layer}")
        except Exception as e:
            return f"<p>{type(e).__name__}: {e}</p>"

    @app.callback(Output("explorer-dla-token", "options"), Output("explorer-dla-token", "value"),
                  Input("explorer-data", "data"), Input("explorer-pos", "data"))
    def _dla_tokens(data, pos):
        if not data or pos is None:
            return no_update, no_update
        try:
            a = _analysis(app_ctx, data)
            pos = max(0, min(a.n_tokens - 1, int(pos)))
            ids = a.topk_ids[pos, :10].tolist()
            names = a.decode(ids, _tokenizer(app_ctx, data["model"]))
            probs = a.topk_probs[pos, :10].tolist()
        except Exception:
            return [], None
        return [{"label": f"{chip_text(n)}  ({p:.1%})", "value": int(i)} for i, n, p in zip(ids, names, probs)], int(ids[0])

    @app.callback(Output(graph("explorer-dla"), "figure"), Input("explorer-dla-token", "value"), State("explorer-data", "data"),
                  State("explorer-pos", "data"))
    def _dla(token, data, pos):
        if not data or token is None or pos is None:
            return empty_figure("run a prompt")
        try:
            a = _analysis(app_ctx, data)
            pos = max(0, min(a.n_tokens - 1, int(pos)))
            model = app_ctx.model(data["model"])
            d = direct_logit_attribution(model, torch.tensor(a.token_ids), pos, int(token))
            name = a.decode([int(token)], model.tokenizer)[0]
            what = f"{chip_text(name)!r} after position {pos} {chip_text(a.tokens[pos])!r}"
            return dla_figure(d.heads.numpy(), d.mlps.numpy(), what, d.logit, d.total())
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")

    @app.callback(Output(graph("explorer-patch"), "figure"), Output("patch-error", "children"),
                  Input("patch-run", "n_clicks"), State("explorer-model", "value"), State("patch-clean", "value"),
                  State("patch-corrupted", "value"), State("patch-answer", "value"), State("patch-wrong", "value"),
                  State("patch-kind", "value"), prevent_initial_call=True)
    def _patch(n_clicks, model_name, clean, corrupted, answer, wrong, kind):
        try:
            model_name = check_model_name(model_name, extra=(app_ctx.default_model,))
            result, tokens = patch_prompts(app_ctx.model(model_name), clean, corrupted, answer, wrong, kind)
        except Exception as e:
            return empty_figure("no patching yet"), error_message(e)
        columns = [show_token(t) for t in tokens] if kind != "head" else [f"head {h}" for h in range(result.effect.shape[1])]
        what = (f"logit({answer!r}) - logit({wrong!r}) is {result.clean_diff:+.2f} clean, {result.corrupted_diff:+.2f} corrupted")
        return patching_figure(result.effect.numpy(), columns, kind, what), ""

    @app.callback(Output(graph("explorer-norms"), "figure"), Input("explorer-data", "data"), Input("explorer-pos", "data"))
    def _norms(data, pos):
        if not data:
            return empty_figure("run a prompt")
        try:
            a = _analysis(app_ctx, data)
            return prompt_norms_figure(a.resid_norms.numpy(), _shown(a), max(0, min(a.n_tokens - 1, int(pos or 0))), a.has_bos)
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")

    @app.callback(Output(graph("explorer-lens"), "figure"), Input("explorer-data", "data"))
    def _lens(data):
        if not data:
            return empty_figure("run a prompt")
        try:
            a = _analysis(app_ctx, data, lens=True)
            if a.n_tokens < 2:
                return empty_figure("the logit lens needs at least two tokens")
            return prompt_lens_figure(a, _tokenizer(app_ctx, data["model"]))
        except Exception as e:
            return empty_figure(f"{type(e).__name__}: {e}")

    @app.callback(Output("explorer-flow-layers", "max"), Output("explorer-flow-layers", "value"), Output("explorer-flow-layers", "marks"),
                  Input("explorer-data", "data"))
    def _flow_range(data):
        if not data:
            return no_update, no_update, no_update
        L = int(data["L"])
        marks = {l: str(l) for l in range(0, L, max(1, L // 10))} | {L - 1: str(L - 1)}
        return L - 1, list(flow_layer_range(L)), marks

    @app.callback(Output(cyto_graph("explorer-flow"), "elements"), Input("explorer-data", "data"), Input("explorer-flow-layers", "value"))
    def _flow(data, layers):
        if not data:
            return []
        try:
            a = _analysis(app_ctx, data, lens=True)
            span = tuple(layers) if layers and len(layers) == 2 and layers[1] <= a.n_layers - 1 else None
            G = style_flow_graph(attention_flow_graph(a, _tokenizer(app_ctx, data["model"]), layers=span))
            return nx_to_elements(G, pos=flow_positions(G))
        except Exception:  # the other views show the error; an empty graph here
            log.exception("attention-flow graph failed")
            return []


PAGE = DashPage(path="/model-explorer", name="Model explorer", layout=layout, register=register, order=10)
