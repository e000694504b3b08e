"""Figures of the key-space probe (`probes.key_space`): the key map coloured by cluster, token
families against clusters, a prompt's top-N ranking by main-cluster membership and correctness,
precision per group, ICN against baseline discovery curves, and the query's dot product with the
explored keys round by round. Builders take the result's tables (or a live `InstructionProbe`'s),
so stored and freshly computed probes draw the same way."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLORS, TEMPLATE, empty_figure, show_token, two_line

GROUP_COLORS = {"top": "#0072B2", "main": "#E69F00", "other": "#9AA5B1"}
GROUP_LABELS = {"top": "top-K (defines the main clusters)", "main": "middle rank, in a main cluster", "other": "middle rank, other cluster"}
METHOD_COLORS = {"icn": "#009E73", "baseline": "#D55E00"}
# 24 distinguishable colours for clusters (cycled: clusters far apart may share one)
CLUSTER_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
                   "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363",
                   "#9c9ede", "#cedb9c", "#e7ba52", "#e7969c"]


def verdict(correct) -> str:
    """'correct', 'wrong', or 'not judged' (no gold list)."""
    if correct is None or (isinstance(correct, float) and correct != correct):
        return "not judged"
    return "correct" if bool(correct) else "wrong"


def cluster_color(c: int) -> str:
    return CLUSTER_PALETTE[int(c) % len(CLUSTER_PALETTE)]


def key_map_figure(
    key_map: np.ndarray,
    cluster_ids: np.ndarray,
    vocab: Sequence[str],
    token_id: int | None = None,
    neighbours: Sequence[int] = (),
    max_points: int = 8000,
    seed: int = 0,
    explained: Sequence[float] | None = None,
) -> go.Figure:
    """PCA map of the keys coloured by cluster; the chosen token, its cluster and its neighbours highlighted.

    At most `max_points` background keys are drawn (a seeded sample); the chosen token's cluster and
    neighbours are always drawn.
    """
    xy = np.asarray(key_map)
    cl = np.asarray(cluster_ids)
    V = len(cl)
    if V == 0:
        return empty_figure("no key map in this result")
    rng = np.random.default_rng(seed)
    keep = np.zeros(V, dtype=bool)
    keep[rng.choice(V, size=min(max_points, V), replace=False)] = True
    focus = np.zeros(V, dtype=bool)
    if token_id is not None:
        focus = cl == cl[token_id]
    keep |= focus
    idx = np.flatnonzero(keep & ~focus)
    fig = go.Figure()
    fig.add_trace(go.Scatter(
        x=xy[idx, 0], y=xy[idx, 1], mode="markers", name="keys (coloured by cluster)",
        marker=dict(size=3, color=[cluster_color(c) for c in cl[idx]], opacity=0.45),
        text=[f"{show_token(vocab[i])} · cluster {cl[i]}" for i in idx], hovertemplate="%{text}<extra></extra>",
    ))
    if token_id is not None:
        f = np.flatnonzero(focus)
        fig.add_trace(go.Scatter(
            x=xy[f, 0], y=xy[f, 1], mode="markers", name=f"cluster {cl[token_id]} ({len(f)} keys)",
            marker=dict(size=7, color=cluster_color(cl[token_id]), line=dict(width=1, color="#1f2933")),
            text=[show_token(vocab[i]) for i in f], hovertemplate="%{text}<extra>same cluster</extra>",
        ))
        nb = [int(n) for n in neighbours]
        if nb:
            fig.add_trace(go.Scatter(
                x=xy[nb, 0], y=xy[nb, 1], mode="markers+text", name="cosine neighbours",
                marker=dict(size=11, color="#D55E00", symbol="circle-open", line=dict(width=2)),
                text=[show_token(vocab[i]) for i in nb], textposition="top center",
                customdata=[cl[i] for i in nb], hovertemplate="%{text} · cluster %{customdata}<extra>neighbour</extra>",
            ))
        fig.add_trace(go.Scatter(
            x=[xy[token_id, 0]], y=[xy[token_id, 1]], mode="markers+text", name=f"token {show_token(vocab[token_id])!r}",
            marker=dict(size=16, color="#000000", symbol="star"), text=[show_token(vocab[token_id])], textposition="bottom center",
            hovertemplate=f"{show_token(vocab[token_id])} · cluster {cl[token_id]}<extra>chosen</extra>",
        ))
    ev = f"PC1 {explained[0]:.1%}, PC2 {explained[1]:.1%} of variance" if explained else ""
    fig.update_layout(template=TEMPLATE, title=two_line("Unembedding keys, PCA", ev), margin=dict(t=80), height=560, xaxis=dict(title="PC1"), yaxis=dict(title="PC2"),
                      legend=dict(orientation="h", y=-0.15))
    return fig


def family_figure(families: pd.DataFrame, summary: pd.DataFrame | None = None) -> go.Figure:
    """Each family member's cluster: one row per family, one marker per token, coloured by cluster."""
    if families is None or families.empty:
        return empty_figure("no token families in this result")
    fams = list(dict.fromkeys(families["family"]))
    n_cl = families.groupby("family")["cluster"].nunique()
    labels = {f: f"{f} ({n_cl[f]} cluster{'s' if n_cl[f] != 1 else ''})" for f in fams}
    if summary is not None and not summary.empty:
        exp = summary.set_index("family")["expected_clusters_if_random"]
        labels = {f: f"{labels[f]}<br><sup>random tokens: {exp.get(f, float('nan')):.1f}</sup>" for f in fams}
    fig = go.Figure()
    for f in fams:
        g = families[families["family"] == f].reset_index(drop=True)
        fig.add_trace(go.Scatter(
            x=list(range(len(g))), y=[labels[f]] * len(g), mode="markers+text", showlegend=False,
            marker=dict(size=24, color=[cluster_color(c) for c in g["cluster"]], symbol="square"),
            text=[show_token(t) for t in g["token"]], textfont=dict(color="white", size=11),
            customdata=np.c_[g["cluster"], g["token_id"]], hovertemplate="%{text}: cluster %{customdata[0]} (id %{customdata[1]})<extra></extra>",
        ))
    fig.update_layout(template=TEMPLATE, title=two_line("Token families and their k-means clusters", "same colour = same cluster"),
                      height=120 + 70 * len(fams), xaxis=dict(visible=False), yaxis=dict(autorange="reversed"), margin=dict(l=230, t=80))
    return fig


def ranking_figure(candidates: pd.DataFrame, category: str | None = None, top_k: int | None = None) -> go.Figure:
    """Top-N first tokens by logit: bar colour = group (top-K / in main cluster / other), marker = judged answer."""
    c = candidates if category is None else candidates[candidates["category"] == category]
    if c.empty:
        return empty_figure("no candidates for this category")
    c = c.sort_values("rank")
    fig = go.Figure()
    for grp in ("top", "main", "other"):
        g = c[c["group"] == grp]
        if g.empty:
            continue
        fig.add_trace(go.Bar(
            x=g["rank"], y=g["logit"], name=GROUP_LABELS[grp], marker_color=GROUP_COLORS[grp],
            customdata=np.c_[g["token"].map(show_token), g["answer"], g["cluster"], g["correct"].map(verdict)],
            hovertemplate="#%{x} %{customdata[0]} → “%{customdata[1]}”<br>cluster %{customdata[2]}, %{customdata[3]}<extra></extra>",
        ))
    lo = float(c["logit"].min())
    span = float(c["logit"].max()) - lo or 1.0
    judged = c["correct"].map(verdict)
    for ok, sym, col, name in (("correct", "circle", "#009E73", "answer correct"), ("wrong", "x-thin", "#D55E00", "answer wrong")):
        g = c[judged == ok]
        if g.empty:
            continue
        fig.add_trace(go.Scatter(x=g["rank"], y=g["logit"] + 0.04 * span, mode="markers", name=name, hoverinfo="skip",
                                 marker=dict(symbol=sym, size=7, color=col, line=dict(width=2, color=col))))
    if top_k:
        fig.add_vline(x=top_k + 0.5, line=dict(dash="dot", color="#52606d"))
    title = f"Top-{len(c)} first tokens" + (f": {category}" if category else "")
    ranks = c["rank"].tolist()
    labels = [show_token(t) for t in c["token"]]
    fig.update_layout(template=TEMPLATE, title=title, height=460, bargap=0.1,
                      xaxis=dict(title="first token, by logit rank", tickmode="array", tickvals=ranks, ticktext=labels, tickangle=-60,
                                 tickfont=dict(size=10)),
                      yaxis=dict(title="logit", range=[lo - 0.05 * span, lo + 1.1 * span]), legend=dict(orientation="h", y=-0.2))
    return fig


def precision_figure(groups: pd.DataFrame) -> go.Figure:
    """Precision per group and category (pooled 'ALL' and per-category 'MEAN' last)."""
    if groups is None or groups.empty:
        return empty_figure("no precision table")
    fig = go.Figure()
    for grp in ("top", "main", "other"):
        g = groups[groups["group"] == grp]
        fig.add_trace(go.Bar(
            x=g["category"], y=g["precision"], name=GROUP_LABELS[grp], marker_color=GROUP_COLORS[grp],
            customdata=np.c_[g["n"], g["mean_rank"].round(1)], hovertemplate="%{x}: %{y:.1%} (n=%{customdata[0]}, mean rank %{customdata[1]})<extra></extra>",
        ))
    fig.update_layout(template=TEMPLATE, title=two_line("Answer precision by group", "middle ranks split by main-cluster membership"), margin=dict(t=80),
                      barmode="group", height=430, yaxis=dict(title="precision", tickformat=".0%", range=[0, 1.02]), legend=dict(orientation="h", y=-0.3))
    return fig


def discovery_figure(icn: pd.DataFrame, categories: Sequence[str] | None = None, cols: int = 4) -> go.Figure:
    """Correct-and-distinct answers against the number explored, ICN against the baseline, per category."""
    if icn is None or icn.empty:
        return empty_figure("no ICN results")
    cats = list(categories) if categories else list(dict.fromkeys(icn["category"]))
    cols = max(1, min(cols, len(cats)))
    rows = math.ceil(len(cats) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=cats if len(cats) > 1 else None, shared_xaxes=True,
                        vertical_spacing=0.12 if rows > 1 else 0.1)
    for i, cat in enumerate(cats):
        r, c = i // cols + 1, i % cols + 1
        for method in ("icn", "baseline"):
            g = icn[(icn["category"] == cat) & (icn["method"] == method)].sort_values("step")
            fig.add_trace(go.Scatter(
                x=g["step"], y=g["distinct_correct"], mode="lines+markers", name="ICN" if method == "icn" else "baseline (top-k of one distribution)",
                line=dict(color=METHOD_COLORS[method], width=2), marker=dict(size=4), legendgroup=method, showlegend=i == 0,
                customdata=np.c_[g["answer"], g["correct"].map(verdict)],
                hovertemplate="%{x} explored: %{y} correct & distinct<br>last: “%{customdata[0]}” (%{customdata[1]})<extra>" + method + "</extra>",
            ), row=r, col=c)
    title = two_line("Correct and distinct answers", "against answers explored" + (f": {cats[0]}" if len(cats) == 1 else ""))
    fig.update_layout(template=TEMPLATE, title=title, margin=dict(t=80), height=max(320, 230 * rows),
                      legend=dict(orientation="h", y=-0.12 if rows > 1 else -0.25))
    fig.update_xaxes(title_text="explored", row=rows)
    fig.update_yaxes(rangemode="tozero")
    return fig


def query_key_figure(dots: pd.DataFrame, category: str | None = None, current_round: int | None = None) -> go.Figure:
    """The query's dot product with each explored key over ICN rounds (the last round is the prompt
    holding every explored answer). Thin lines: one per explored key, coloured by the round that
    explored it. Thick lines: mean over keys whose answers the prompt already lists, and over the rest."""
    d = dots if category is None else dots[dots["category"] == category]
    if d.empty:
        return empty_figure("no ICN rounds for this category")
    fig = go.Figure()
    for step, g in d.groupby("step"):
        g = g.sort_values("round")
        er = int(g["explored_round"].iloc[0])
        fig.add_trace(go.Scatter(
            x=g["round"], y=g["dot"], mode="lines", line=dict(width=1, color=COLORS[er % len(COLORS)]), opacity=0.55, showlegend=False,
            customdata=np.c_[g["logit_rank"]], hovertemplate=f"{show_token(g['token'].iloc[0])} (explored in round {er})<br>round %{{x}}: "
            "q·k = %{y:.2f}, rank %{customdata[0]}<extra></extra>",
        ))
    for flag, name, col in ((True, "mean over keys already in the prompt", "#009E73"), (False, "mean over keys not yet in the prompt", "#0072B2")):
        m = d[d["in_prompt"] == flag].groupby("round")["dot"].mean()
        if len(m):
            fig.add_trace(go.Scatter(x=m.index, y=m.values, mode="lines+markers", name=name, line=dict(width=4, color=col)))
    if current_round is not None:
        fig.add_vline(x=current_round, line=dict(dash="dot", color="#52606d"))
    fig.update_layout(template=TEMPLATE, title="Query · explored keys<br>over ICN rounds" + (f": {category}" if category else ""), height=440,
                      margin=dict(t=80),
                      xaxis=dict(title="round (the prompt lists earlier answers)", dtick=1 if d["round"].max() <= 25 else None),
                      yaxis=dict(title="q · k"),
                      legend=dict(orientation="h", y=-0.2))
    return fig
