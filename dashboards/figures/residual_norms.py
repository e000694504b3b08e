"""Figures of the residual-norms probe (`probes.residual_norms`): norms per layer, the logit lens
per layer, and how far the first (BOS) position's norm stands out. Each builder takes one or more
`(label, table)` pairs, so runs (models) can be overlaid."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.figures import COLORS, TEMPLATE

Series = Sequence[tuple[str, pd.DataFrame]]


def label_of(result, run_id: int | None = None) -> str:
    """A short legend label for a stored result: '#12 smollm2-135m'."""
    model = result.meta.get("model", {})
    name = model.get("id") if isinstance(model, dict) else str(model)
    return f"#{run_id} {name}" if run_id is not None else str(name)


def _layer_axis(series: Series, title: str = "layer (0 = embeddings)") -> dict:
    """Integer layer ticks (about 15 at most)."""
    n = max((len(t) for _, t in series), default=1)
    return dict(title=title, tickmode="linear", tick0=0, dtick=max(1, round(n / 15)))


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    return f"rgba({int(h[0:2], 16)},{int(h[2:4], 16)},{int(h[4:6], 16)},{alpha})"


def norms_figure(series: Series, log_y: bool = True) -> go.Figure:
    """Mean residual norm per layer (band: ± one std over positions) and the BOS position's norm."""
    traces = []
    for i, (label, t) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        x, m, s = t["layer"].to_numpy(), t["mean_norm"].to_numpy(), t["std_norm"].to_numpy()
        lo = np.maximum(m - s, m * 0.05) if log_y else m - s
        traces.append(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[m + s, lo[::-1]], mode="lines", fill="toself", fillcolor=_rgba(c, 0.15),
                                 line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=label))
        traces.append(go.Scatter(x=x, y=m, mode="lines+markers", name=f"{label}: mean (non-BOS)", line=dict(color=c, width=3),
                                 legendgroup=label, customdata=s, hovertemplate="layer %{x}: %{y:.2f} ± %{customdata:.2f}<extra>mean</extra>"))
        if "bos_norm" in t and t["bos_norm"].notna().any():
            traces.append(go.Scatter(x=x, y=t["bos_norm"], mode="lines+markers", name=f"{label}: BOS position", legendgroup=label,
                                     line=dict(color=c, dash="dash", width=2), marker=dict(symbol="diamond"),
                                     hovertemplate="layer %{x}: %{y:.2f}<extra>BOS</extra>"))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title="Residual-stream norm per layer", height=420, hovermode="x unified",
        xaxis=_layer_axis(series), yaxis=dict(title="‖x‖", type="log", dtick=1) if log_y else dict(title="‖x‖"),
        legend=dict(orientation="h", y=-0.2)))


def lens_figure(series: Series) -> go.Figure:
    """Logit lens per layer: top-1 accuracy against the next token (top) and cross-entropy (bottom)."""
    traces = []
    for i, (label, t) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        traces.append(go.Scatter(x=t["layer"], y=t["lens_top1"], mode="lines+markers", name=label, line=dict(color=c, width=3),
                                 legendgroup=label, hovertemplate="layer %{x}: %{y:.1%}<extra>" + label + "</extra>"))
        traces.append(go.Scatter(x=t["layer"], y=t["lens_ce"], mode="lines+markers", name=label, line=dict(color=c, width=3), yaxis="y2",
                                 legendgroup=label, showlegend=False, hovertemplate="layer %{x}: %{y:.2f}<extra>" + label + "</extra>"))
    top = max((float(t["lens_top1"].max()) for _, t in series), default=1.0)
    # two panels sharing the layer axis (laid out by hand: make_subplots costs more than the figure)
    fig = go.Figure(traces, layout=dict(
        template=TEMPLATE, title="Logit lens per layer", height=480, legend=dict(orientation="h", y=-0.15),
        xaxis=dict(**_layer_axis(series), anchor="y2"),
        yaxis=dict(domain=[0.56, 1.0], tickformat=".0%" if top > 0.1 else ".1%", rangemode="tozero", title="top-1 accuracy"),
        yaxis2=dict(domain=[0.0, 0.44], title="cross-entropy (nats)"),
    ))
    return fig


def bos_ratio_figure(series: Series) -> go.Figure:
    """How many times larger the BOS position's norm is than an ordinary position's, per layer."""
    traces = []
    for i, (label, t) in enumerate(series):
        if "bos_norm" not in t or not t["bos_norm"].notna().any():
            continue
        ratio = t["bos_norm"] / t["mean_norm"]
        traces.append(go.Bar(x=t["layer"], y=ratio, name=label, marker_color=COLORS[i % len(COLORS)],
                             hovertemplate="layer %{x}: %{y:.1f}×<extra>" + label + "</extra>"))
    one = dict(type="line", xref="paper", x0=0, x1=1, y0=1, y1=1, line=dict(color="#9aa5b1", dash="dot"))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title="BOS norm ÷ mean norm", height=340, barmode="group", shapes=[one],
        xaxis=_layer_axis(series, "layer"), yaxis=dict(title="ratio", type="log", dtick=1), legend=dict(orientation="h", y=-0.25)))


def summary_rows(result) -> list[tuple[str, str]]:
    """Provenance and headline numbers of a result, for a small table."""
    m = result.meta
    model = m.get("model", {})
    sl = m.get("slice", {})
    rows = [
        ("model", f"{model.get('id', '?')} ({m.get('numerics', '?')})" if isinstance(model, dict) else str(model)),
        ("corpus", str(m.get("corpus"))),
        ("computed", f"{m.get('finished', '?')} in {m.get('wall_s', 0):.1f} s"),
    ]
    summary = result.summary()
    if "tokens" not in summary:
        rows.append(("tokens", f"{sl.get('n_positions', '?')}"))
    rows += [(k.replace("_", " "), str(v)) for k, v in summary.items()]
    return rows
