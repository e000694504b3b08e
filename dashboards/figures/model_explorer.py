"""Figures of one prompt's forward pass (see `workbench.prompt_analysis.analyse_prompt`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dashboards.figures import COLORS, TEMPLATE, show_token, two_line


def _ticks(tokens: list[str], max_labels: int = 48) -> dict:
    """Axis ticks labelled with tokens (every n-th one for long prompts)."""
    step = max(1, int(np.ceil(len(tokens) / max_labels)))
    idx = list(range(0, len(tokens), step))
    return dict(tickmode="array", tickvals=idx, ticktext=[f"{tokens[i]}" for i in idx], tickfont=dict(size=10))


def topk_figure(tokens: list[str], probs: list[float], position_label: str = "") -> go.Figure:
    """Horizontal bars: the most likely next tokens and their probabilities."""
    fig = go.Figure(go.Bar(
        x=probs[::-1], y=[f"{t!r}" for t in tokens][::-1], orientation="h", marker_color=COLORS[0],
        text=[f"{p:.1%}" for p in probs[::-1]], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: %{x:.2%}<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title=f"Top-{len(tokens)} next tokens{' after ' + position_label if position_label else ''}",
                      xaxis=dict(title="probability", tickformat=".0%"), height=120 + 22 * len(tokens), margin=dict(l=110))
    return fig


def attention_figure(pattern: np.ndarray, tokens: list[str], layer: int, head: int | None) -> go.Figure:
    """Heatmap of an attention pattern: query positions down, key positions across."""
    T = len(tokens)
    labels = _labels(tokens)  # unique category labels: the hover shows tokens without a T x T text array
    who = f"head {head}" if head is not None else "mean over heads"
    return go.Figure(go.Heatmap(
        z=pattern, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=float(max(pattern.max(), 1e-6)),
        colorbar=dict(title="weight", thickness=12), hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>",
    ), layout=dict(template=TEMPLATE, title=f"Attention, layer {layer}, {who}", height=min(720, 260 + 12 * T),
                   xaxis=dict(title="key (attended to)", type="category", tickangle=-60, nticks=min(T, 48), tickfont=dict(size=10)),
                   yaxis=dict(title="query", type="category", autorange="reversed", nticks=min(T, 48), tickfont=dict(size=10))))


def _labels(tokens: list[str]) -> list[str]:
    return [f"{t} ·{i}" for i, t in enumerate(tokens)]


def head_grid_figure(attn: np.ndarray, layer: int, query: int, tokens: list[str]) -> go.Figure:
    """Where one query position attends, for every head of a layer (heads down, keys across)."""
    H = attn.shape[0]
    z = attn[:, query, : query + 1]
    fig = go.Figure(go.Heatmap(z=z, colorscale="Blues", zmin=0, zmax=1, colorbar=dict(thickness=12),
                               hovertemplate="head %{y}, key %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=f"L{layer}, query {query}: attention by head",
                      height=140 + 24 * H, xaxis=dict(title="key", **_ticks(tokens[: query + 1])), yaxis=dict(title="head", dtick=1, autorange="reversed"))
    return fig


def prompt_norms_figure(norms: np.ndarray, tokens: list[str], position: int, has_bos: bool) -> go.Figure:
    """Residual-stream norm per layer: mean over ordinary positions, the first position, the selected one."""
    layers = np.arange(norms.shape[0])
    body = norms[:, 1:] if has_bos and norms.shape[1] > 1 else norms
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=layers, y=body.mean(1), mode="lines+markers", name="mean over positions" + (" (no BOS)" if has_bos else ""),
                             line=dict(color=COLORS[0], width=3)))
    fig.add_trace(go.Scatter(x=layers, y=norms[:, 0], mode="lines+markers", name=f"position 0 {tokens[0]!r}", line=dict(color=COLORS[3], dash="dash")))
    if position != 0:
        fig.add_trace(go.Scatter(x=layers, y=norms[:, position], mode="lines+markers", name=f"position {position} {tokens[position]!r}",
                                 line=dict(color=COLORS[2])))
    fig.update_layout(template=TEMPLATE, title="Residual norm per layer", height=360, hovermode="x unified",
                      xaxis=dict(title="layer (0 = embeddings)", dtick=max(1, len(layers) // 15)), yaxis=dict(title="‖x‖", type="log", dtick=1),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def logit_lens_figure(next_prob: np.ndarray, top1: list[list[str]], top1_prob: np.ndarray, tokens: list[str], offset: int = 0) -> go.Figure:
    """Logit lens: for each layer and position, the probability the lens gives the token that
    actually comes next (colour) and the lens's own top-1 token (text and hover). The lens
    covers positions offset.. of `tokens`; the last position, whose next token the prompt does not
    contain (the one the model is asked for), shows the top-1 only, on a blank cell."""
    L1, Tm1 = next_prob.shape
    T = Tm1 + 1  # positions offset .. offset + Tm1, the last included
    text = np.array(top1)[:, :T]
    z = np.concatenate([next_prob, np.full((L1, 1), np.nan)], axis=1)
    nxt = [tokens[offset + p + 1] for p in range(Tm1)] + ["(end of prompt)"]
    custom = np.dstack([text, np.array([nxt] * L1), np.round(top1_prob[:, :T], 3)])
    shown = tokens[offset: offset + T]
    step = max(1, int(np.ceil(T / 48)))
    ticks = sorted(set(range(offset, offset + T, step)) | {offset + T - 1})
    fig = go.Figure(go.Heatmap(
        x=np.arange(offset, offset + T), z=z, colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="p(next)", thickness=12),
        text=text if T <= 40 else None, texttemplate="%{text}" if T <= 40 else None, textfont=dict(size=9),
        customdata=custom, hoverongaps=True,
        hovertemplate="layer %{y}, position %{x}<br>next token '%{customdata[1]}': p=%{z:.3f}<br>lens top-1 '%{customdata[0]}' (p=%{customdata[2]})<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title="Logit lens: p(next token); text: lens top-1",
                      height=min(760, 200 + 22 * L1),
                      xaxis=dict(title="position (predicting the next token)", tickmode="array", tickangle=-60, tickfont=dict(size=10),
                                 tickvals=ticks, ticktext=[shown[t - offset] for t in ticks]),
                      yaxis=dict(title="layer", dtick=max(1, L1 // 15)))
    return fig


def chip_text(s: str) -> str:
    """A token as shown on its own chip: whitespace-only tokens as ␣ (or · when empty), newlines and
    tabs visible."""
    if not s.strip():
        return s.replace(" ", "\u2423").replace("\n", "⏎").replace("\t", "⇥") or "\u00b7"
    return s.replace("\n", "⏎").replace("\t", "⇥")


def prompt_lens_figure(a, tokenizer) -> go.Figure:
    """The logit-lens heatmap of an analysis (computed with `compute_lens`)."""
    top1 = [[show_token(t) for t in a.decode(row, tokenizer)] for row in a.lens_top1]
    return logit_lens_figure(a.lens_next_prob.numpy(), top1, a.lens_top1_prob.numpy(), [show_token(t) for t in a.tokens],
                             offset=a.lens_start)


def dla_figure(heads: np.ndarray, mlps: np.ndarray, what: str, logit: float, total: float) -> go.Figure:
    """Direct logit attribution: one cell per layer x head and a column for each layer's MLP
    (red raises the logit, blue lowers it; the colour scale is symmetric around 0)."""
    L, H = heads.shape
    z = np.concatenate([heads, mlps[:, None]], axis=1)
    lim = float(np.abs(z).max()) or 1.0
    x = [f"head {h}" for h in range(H)] + ["MLP"]
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=list(range(L)), colorscale="RdBu", reversescale=True, zmin=-lim, zmax=lim, zmid=0,
        colorbar=dict(title="logit", thickness=12), hovertemplate="layer %{y}, %{x}: %{z:+.3f}<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title=two_line(f"Direct logit attribution to {what}", f"logit {logit:.2f}; the terms sum to {total:.2f}"), margin=dict(t=80),
                      height=min(760, 200 + 20 * L), xaxis=dict(title="component", type="category"),
                      yaxis=dict(title="layer", autorange="reversed", dtick=max(1, L // 15)))
    return fig


def patching_figure(effect: np.ndarray, columns: list[str], kind: str, what: str) -> go.Figure:
    """Activation patching: share of the clean logit difference restored by each patch (1 = the
    clean run, 0 = the corrupted run), layers down."""
    L = effect.shape[0]
    lim = max(1.0, float(np.nanmax(np.abs(effect))))
    titles = {"resid_pre": "residual stream entering each block", "attn_out": "attention output", "head": "each head's output (all positions)"}
    labels = [f"{c} ·{i}" for i, c in enumerate(columns)] if kind != "head" else columns
    fig = go.Figure(go.Heatmap(
        z=effect, x=labels, y=list(range(L)), colorscale="RdBu", reversescale=True, zmin=-lim, zmax=lim, zmid=0,
        colorbar=dict(title="restored", thickness=12), hovertemplate="layer %{y}, %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(template=TEMPLATE, title=f"Patching the {titles.get(kind, kind)}: {what}", height=min(760, 200 + 20 * L),
                      xaxis=dict(title="position" if kind != "head" else "head", type="category", tickangle=-60 if kind != "head" else 0),
                      yaxis=dict(title="layer", autorange="reversed", dtick=max(1, L // 15)))
    return fig
