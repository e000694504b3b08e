"""Figures of the function-token probes (`probes.function_tokens`, `probes.function_tokens.loss`,
`probes.function_tokens.steering`): degree against frequency rank, coverage curves and the
Table 1 comparison, top-n function against content tokens, the bipartite graph, the loss
decomposition (bars, and curves over training), and the case-study heatmaps."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from dashboards.figures import COLORS, TEMPLATE, show_token, two_line

# The paper's Table 1 (coverage %, Gemma-2-9B, Gemma Scope residual SAEs, layers 9 / 20 / 31).
PAPER_TABLE1 = pd.DataFrame({
    "k": [1, 2, 3, 5, 10], "token": [".", ",", "the", "and", "in"],
    "L9": [23.19, 32.01, 36.88, 41.21, 48.52], "L20": [51.32, 62.45, 66.93, 71.97, 76.46], "L31": [37.21, 49.78, 55.15, 61.48, 68.27],
})
GROUP_COLORS = {"F->F": COLORS[0], "F->C": COLORS[3], "C->F": COLORS[2], "C->C": COLORS[1]}


def degree_rank_figure(result) -> go.Figure:
    """Token degree against frequency rank, log-log, one series per SAE; function tokens filled."""
    t = result.tokens[result.tokens["slice_count"] > 0]
    traces = []
    for i, label in enumerate(result.labels):
        c = COLORS[i % len(COLORS)]
        d = t[t[f"degree_{label}"] > 0]
        for is_f, sub in d.groupby("is_function"):
            traces.append(go.Scattergl(
                x=sub["rank"], y=sub[f"degree_{label}"], mode="markers", name=f"{label} {'function' if is_f else 'content'}",
                legendgroup=label, marker=dict(color=c, size=7 if is_f else 4, symbol="circle" if is_f else "circle-open", opacity=0.9 if is_f else 0.45),
                text=[show_token(s) for s in sub["token"]], customdata=sub["slice_count"],
                hovertemplate="%{text}<br>rank %{x}, degree %{y}<br>%{customdata} occurrences<extra>" + label + "</extra>"))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title="Token degree against frequency rank", height=440,
        xaxis=dict(title="frequency rank (corpus)", type="log"), yaxis=dict(title="degree (distinct features activated)", type="log"),
        legend=dict(orientation="h", y=-0.2)))


def coverage_figure(result, max_k: int | None = None) -> go.Figure:
    """Cumulative coverage of the top-k tokens' neighbourhoods: solid = share of ever-active
    features, dotted = share of all SAE features."""
    traces = []
    for i, label in enumerate(result.labels):
        c = COLORS[i % len(COLORS)]
        cv = result.coverage[result.coverage["sae"] == label]
        if max_k:
            cv = cv[cv["k"] <= max_k]
        tok = [show_token(s) for s in cv["token"]]
        traces.append(go.Scatter(x=cv["k"], y=100 * cv["cov_active"], mode="lines", name=f"{label} (of active)", line=dict(color=c, width=3),
                                 text=tok, hovertemplate="k=%{x} (+%{text}): %{y:.1f}%<extra>" + label + "</extra>", legendgroup=label))
        traces.append(go.Scatter(x=cv["k"], y=100 * cv["cov_all"], mode="lines", name=f"{label} (of all)", line=dict(color=c, dash="dot"),
                                 text=tok, hovertemplate="k=%{x} (+%{text}): %{y:.1f}%<extra>" + label + " all</extra>", legendgroup=label))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title=two_line("Feature coverage of the top-k tokens", "tokens by frequency"), margin=dict(t=80), height=420,
        xaxis=dict(title="k (tokens, by frequency)", type="log"), yaxis=dict(title="features reached (%)", range=[0, 101]),
        legend=dict(orientation="h", y=-0.2)))


def coverage_rows(result, ks: range = range(1, 11)) -> pd.DataFrame:
    """Coverage (%) for k in `ks` with the token added at each k, beside the paper's Table 1."""
    ours = result.coverage_table(ks)
    paper = PAPER_TABLE1.rename(columns={"token": "paper token", "L9": "paper L9", "L20": "paper L20", "L31": "paper L31"})
    out = ours.merge(paper, on="k", how="left")
    out["token"] = out["token"].map(show_token)
    return out


def coverage_table_figure(result, ks: range = range(1, 11)) -> go.Figure:
    """Table 1 layout: ours (both denominators, per SAE) next to the paper's numbers."""
    t = coverage_rows(result, ks)
    cols = ["k", "token"] + [c for c in t.columns if c not in ("k", "token")]
    vals = [[("" if pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v))) for v in t[c]] for c in cols]
    fill = ["#ffffff" if not c.startswith("paper") else "#f5f7fa" for c in cols]
    return go.Figure(go.Table(header=dict(values=cols, fill_color="#e4e7eb", align="center"),
                              cells=dict(values=vals, fill_color=[[f] * len(t) for f in fill], align="center")),
                     layout=dict(template=TEMPLATE, title=two_line("Coverage (%) of the top-k tokens", "beside the paper's Table 1 (Gemma-2-9B)"),
                                 height=110 + 28 * len(t), margin=dict(l=10, r=10, t=80, b=10)))


def comparison_figure(result) -> go.Figure:
    """Coverage (of active features) of the top-n function tokens against the top-n content tokens."""
    labels = result.labels
    cmp_ = result.comparison
    n = cmp_[labels[0]]["n"] if labels else 10
    fig = go.Figure([
        go.Bar(x=labels, y=[100 * cmp_[lb]["function_active"] for lb in labels], name=f"top-{n} function tokens", marker_color=COLORS[0],
               text=[f"{100 * cmp_[lb]['function_active']:.1f}%" for lb in labels], textposition="outside",
               hovertext=[", ".join(show_token(s) for s in cmp_[lb]["function_tokens"]) for lb in labels]),
        go.Bar(x=labels, y=[100 * cmp_[lb]["content_active"] for lb in labels], name=f"top-{n} content tokens", marker_color=COLORS[1],
               text=[f"{100 * cmp_[lb]['content_active']:.1f}%" for lb in labels], textposition="outside",
               hovertext=[", ".join(show_token(s) for s in cmp_[lb]["content_tokens"]) for lb in labels]),
    ])
    fig.update_layout(template=TEMPLATE, barmode="group", height=380, title=two_line("Active features reached", f"top-{n} function vs top-{n} content tokens"), margin=dict(t=80),
                      yaxis=dict(title="share of active features (%)", range=[0, 110]), legend=dict(orientation="h", y=-0.2))
    return fig


def feature_degree_figure(result) -> go.Figure:
    """How many token types activate each feature (log-binned histogram per SAE; dead features left out)."""
    traces = []
    for i, label in enumerate(result.labels):
        deg = result.features.loc[(result.features["sae"] == label) & (result.features["degree"] > 0), "degree"].to_numpy()
        if deg.size == 0:
            continue
        edges = np.unique(np.logspace(0, np.log10(deg.max() + 1), 30).astype(int))
        hist, _ = np.histogram(deg, bins=edges)
        traces.append(go.Scatter(x=edges[:-1], y=hist, mode="lines+markers", name=label, line=dict(color=COLORS[i % len(COLORS)], shape="hv")))
    return go.Figure(traces, layout=dict(template=TEMPLATE, title="Feature degree (token types per feature)", height=380,
                                         xaxis=dict(title="degree", type="log"), yaxis=dict(title="features", type="log")))


def bipartite_positions(g: nx.Graph, width: float = 600.0, height: float = 500.0) -> dict:
    """Tokens on the left (by rank), features on the right (ordered by their strongest token)."""
    tokens = sorted((n for n, a in g.nodes(data=True) if a["kind"] == "token"), key=lambda n: g.nodes[n]["rank"])
    order = {n: i for i, n in enumerate(tokens)}
    feats = [n for n, a in g.nodes(data=True) if a["kind"] == "feature"]
    feats.sort(key=lambda f: min(order[t] for t in g.neighbors(f)) if any(True for _ in g.neighbors(f)) else 0)
    pos = {}
    for col, nodes in ((0.0, tokens), (width, feats)):
        for i, n in enumerate(nodes):
            pos[n] = (col, height * (i + 0.5) / max(len(nodes), 1))
    return pos


def styled_graph(g: nx.Graph) -> nx.Graph:
    """A copy with display attributes (colour, size by degree, hover title) for graph cards."""
    h = g.copy()
    tdeg = [a.get("degree", 1) for _, a in h.nodes(data=True) if a["kind"] == "token"] or [1]
    fdeg = [a.get("degree", 1) for _, a in h.nodes(data=True) if a["kind"] == "feature"] or [1]
    for n, a in h.nodes(data=True):
        if a["kind"] == "token":
            a["label"] = show_token(a["label"])
            a["color"] = COLORS[0] if a.get("is_function") else COLORS[1]
            a["size"] = 14 + 30 * np.sqrt(a.get("degree", 1) / max(tdeg))
            feats = sorted(h[n].items(), key=lambda kv: -kv[1]["weight"])
            a["title"] = (f"{a['label']}  rank {a['rank']}, degree {a.get('degree')}, {a['count']} occurrences; strongest: "
                          + ", ".join(f"f{h.nodes[f]['feature']} ({d['weight']:.2f})" for f, d in feats[:6]))
        else:
            a["color"] = COLORS[2]
            a["size"] = 8 + 22 * np.sqrt(a.get("degree", 1) / max(fdeg))
            a["title"] = f"{a['label']}: fires for {a.get('degree')} token types, {a.get('active_count')} positions (click for contexts)"
    return h


def bipartite_figure(g: nx.Graph, title: str = "Top tokens x strongest features") -> go.Figure:
    """The bipartite graph drawn with Plotly (static export): tokens left, features right, sized by degree."""
    h = styled_graph(g)
    pos = bipartite_positions(h, 1.0, 1.0)
    wmax = max((d["weight"] for *_, d in h.edges(data=True)), default=1.0)
    traces = []
    for u, v, d in h.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        traces.append(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="rgba(82,96,109,0.35)", width=0.5 + 3.5 * d["weight"] / wmax)))
    for kind, side in (("token", "left"), ("feature", "right")):
        nodes = [n for n, a in h.nodes(data=True) if a["kind"] == kind]
        traces.append(go.Scatter(
            x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text", name=f"{kind}s",
            text=[h.nodes[n]["label"] for n in nodes], textposition=f"middle {'left' if side == 'left' else 'right'}",
            hovertext=[h.nodes[n]["title"] for n in nodes], hoverinfo="text",
            marker=dict(size=[h.nodes[n]["size"] * 0.8 for n in nodes], color=[h.nodes[n]["color"] for n in nodes], line=dict(width=1, color="#52606d"))))
    n_rows = max(sum(1 for _, a in h.nodes(data=True) if a["kind"] == k) for k in ("token", "feature")) if len(h) else 1
    return go.Figure(traces, layout=dict(template=TEMPLATE, title=title, height=max(420, 18 * n_rows), showlegend=False,
                                         xaxis=dict(visible=False, range=[-0.35, 1.35]), yaxis=dict(visible=False, autorange="reversed")))


def loss_bars_figure(tables: list[tuple[str, pd.DataFrame]]) -> go.Figure:
    """Mean cross-entropy per (current, target) group, with each group's share of the total loss."""
    traces = []
    for i, (label, t) in enumerate(tables):
        traces.append(go.Bar(x=t["group"], y=t["mean_ce"], name=label, marker_color=COLORS[i % len(COLORS)],
                             text=[f"{ce:.2f}<br>{100 * s:.0f}% of loss" for ce, s in zip(t["mean_ce"], t["loss_share"])], textposition="outside",
                             customdata=np.c_[100 * t["loss_share"], 100 * t["count_share"]],
                             hovertemplate="%{x}: CE %{y:.3f}<br>%{customdata[0]:.1f}% of the loss, %{customdata[1]:.1f}% of predictions<extra>" + label + "</extra>"))
    top = max((float(t["mean_ce"].max()) for _, t in tables), default=1.0)
    return go.Figure(traces, layout=dict(template=TEMPLATE, barmode="group", height=400, title="Loss by (current token → target) type",
                                         xaxis=dict(title="F = function token, C = content token"),
                                         yaxis=dict(title="mean cross-entropy (nats)", range=[0, top * 1.3]), legend=dict(orientation="h", y=-0.2)))


def loss_curves_figure(df: pd.DataFrame, title: str = "Loss decomposition over training") -> go.Figure:
    """Per-group mean CE (left) and share of the total loss (right) against training step."""
    traces = []
    for g, c in GROUP_COLORS.items():
        d = df[df["group"] == g].sort_values("step")
        traces.append(go.Scatter(x=d["step"], y=d["mean_ce"], mode="lines+markers", name=g, line=dict(color=c, width=3), legendgroup=g))
        traces.append(go.Scatter(x=d["step"], y=100 * d["loss_share"], mode="lines+markers", name=g, line=dict(color=c, dash="dot"),
                                 xaxis="x2", yaxis="y2", showlegend=False, legendgroup=g))
    return go.Figure(traces, layout=dict(
        template=TEMPLATE, title=title, height=400, hovermode="x unified",
        xaxis=dict(title="step", type="log", domain=[0, 0.46]), yaxis=dict(title="mean CE (nats)"),
        xaxis2=dict(title="step", type="log", domain=[0.54, 1]), yaxis2=dict(title="share of total loss (%)", anchor="x2"),
        legend=dict(orientation="h", y=-0.25)))


def case_heatmaps_figure(result) -> go.Figure:
    """Tokens x features SAE activations for both prompts (the steering feature first)."""
    h = result.heatmaps
    info = result.info
    feats = list(dict.fromkeys(h["feature"]))
    fig = go.Figure()
    zmax = float(h["activation"].max()) or 1.0
    n_a = h[h["prompt"] == "a"]["position"].nunique()
    for k, (dom, name) in {"a": ([0, 0.47], "A"), "b": ([0.53, 1], "B")}.items():
        d = h[h["prompt"] == k].pivot(index="position", columns="feature", values="activation")[feats]
        rows = h[h["prompt"] == k].drop_duplicates("position").sort_values("position")
        ylabels = [f"{i}:{show_token(t)}" for i, t in zip(rows["position"], rows["token"])]
        fig.add_trace(go.Heatmap(z=d.to_numpy(), x=[f"f{f}" for f in feats], y=ylabels, coloraxis="coloraxis",
                                 xaxis="x" if k == "a" else "x2", yaxis="y" if k == "a" else "y2",
                                 hovertemplate="%{y} · %{x}: %{z:.2f}<extra>prompt " + name + "</extra>"))
    word = f"A: {info.get('word_a', '')!r} / B: {info.get('word_b', '')!r}"
    fig.update_layout(template=TEMPLATE, title=two_line(f"SAE features per token ({word})", f"final token {show_token(info.get('final_token', ''))!r}"), margin=dict(t=80),
                      height=max(380, 22 * n_a + 120), coloraxis=dict(colorscale="Viridis", cmin=0, cmax=zmax, colorbar=dict(title="act.")),
                      xaxis=dict(domain=[0, 0.47], title="feature (prompt A)"), yaxis=dict(autorange="reversed"),
                      xaxis2=dict(domain=[0.53, 1], title="feature (prompt B)"), yaxis2=dict(anchor="x2", autorange="reversed"))
    return fig


def generations_table(result) -> pd.DataFrame:
    """The steering runs as a small table (continuation and first-step top-5)."""
    g = result.generations.copy()
    g["continuation"] = g["continuation"].map(lambda s: s.replace("\n", "⏎"))
    g["top5"] = g["top5"].map(lambda s: s.replace("\n", "⏎"))
    return g[["run", "strength", "position", "continuation", "mentions_a", "mentions_b", "top5"]]


__all__ = ["PAPER_TABLE1", "bipartite_figure", "bipartite_positions", "case_heatmaps_figure", "comparison_figure", "coverage_figure",
           "coverage_rows", "coverage_table_figure", "degree_rank_figure", "feature_degree_figure", "generations_table",
           "loss_bars_figure", "loss_curves_figure", "show_token", "styled_graph"]
