"""Figures of one SAE feature (see `probes.sae_features`)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from dashboards.figures import COLORS, TEMPLATE, show_token, two_line


def histogram_figure(counts: list[int], edges: list[float], density: float, mean: float) -> go.Figure:
    """Positive activations on a log10 axis (the end bins also hold what lies beyond the range)."""
    e = np.asarray(edges)
    centres = 10 ** ((e[:-1] + e[1:]) / 2)
    widths = 10 ** e[1:] - 10 ** e[:-1]
    fig = go.Figure(go.Bar(x=centres, y=counts, width=widths, marker_color=COLORS[0],
                           hovertemplate="activation ≈ %{x:.3g}: %{y} tokens<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=f"Where it fires: density {density:.2%},<br>mean activation {mean:.3g}", margin=dict(t=70),
                      height=320, bargap=0, xaxis=dict(title="activation", type="log"), yaxis=dict(title="tokens"))
    return fig


def logit_effects_figure(top: list[tuple[str, float]], bottom: list[tuple[str, float]]) -> go.Figure:
    """The tokens the feature's decoder direction promotes (right) and suppresses (left)."""
    rows = sorted(bottom, key=lambda x: x[1]) + sorted(top, key=lambda x: x[1])
    labels = [f"{show_token(t)} ·{i}" for i, (t, _) in enumerate(rows)]
    values = [v for _, v in rows]
    fig = go.Figure(go.Bar(x=values, y=labels, orientation="h", marker_color=[COLORS[3] if v < 0 else COLORS[0] for v in values],
                           text=[show_token(t) for t, _ in rows], textposition="outside", cliponaxis=False,
                           hovertemplate="%{text}: %{x:+.3f}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title="Logit effects of the decoder direction", height=160 + 20 * len(rows),
                      xaxis=dict(title="logit effect per unit activation"),
                      yaxis=dict(showticklabels=False), showlegend=False)
    return fig


def firing_tokens_figure(tokens: list[tuple[str, int]], fired: int) -> go.Figure:
    """The tokens at which the feature fires most often (share of its firings)."""
    names = [f"{show_token(t)} ·{i}" for i, (t, _) in enumerate(tokens)][::-1]
    shares = [c / max(fired, 1) for _, c in tokens][::-1]
    fig = go.Figure(go.Bar(x=shares, y=names, orientation="h", marker_color=COLORS[2],
                           hovertemplate="%{y}: %{x:.1%} of its firings<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title="Tokens it fires on most often", height=140 + 22 * len(tokens),
                      xaxis=dict(title="share of the feature's firings", tickformat=".0%"), yaxis=dict(tickfont=dict(size=11)))
    return fig


def density_figure(density: np.ndarray) -> go.Figure:
    """How often the SAE's features fire: log10 firing density over features (dead ones counted apart)."""
    live = density[density > 0]
    dead = int((density == 0).sum())
    fig = go.Figure(go.Histogram(x=np.log10(live), nbinsx=40, marker_color=COLORS[0],
                                 hovertemplate="log10 density %{x}: %{y} features<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=two_line("Feature firing density", f"{len(live):,} live, {dead:,} never fired"), margin=dict(t=80), height=320,
                      xaxis=dict(title="log10(share of tokens where it fires)"), yaxis=dict(title="features"))
    return fig
