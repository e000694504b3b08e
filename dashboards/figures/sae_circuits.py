"""Figures for SAE circuit discovery: layer x head heatmaps of both methods, ROC curves, the circuit
graph laid out by layer, runtime bars, and a head's code histogram on positives against negatives."""

from __future__ import annotations

from typing import Any, Mapping

import networkx as nx
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLORS, TEMPLATE, empty_figure, two_line
from probes.sae_circuits import roc_points

KINDS = {
    "node": ("SAE node score", "Blues"),
    "edge": ("SAE edge score", "Blues"),
    "baseline": ("Baseline: share of total effect", "RdBu"),
    "truth": ("Ground truth", "Greys"),
}


def _grid(result: Any, kind: str) -> np.ndarray:
    s = result.stats
    L, H = s["n_layers"], s["heads_per_layer"]
    col = {"node": "node_score", "edge": "edge_score", "baseline": "baseline_share", "truth": "ground_truth"}[kind]
    return result.heads[col].to_numpy(dtype=float).reshape(L, H)


def _heatmap_trace(result: Any, kind: str, showscale: bool = True) -> go.Heatmap:
    z = _grid(result, kind)
    L, H = z.shape
    truth = _grid(result, "truth").astype(bool)
    text = np.where(truth, "in ground truth", "")
    extra: dict[str, Any] = {}
    if kind == "baseline":
        m = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
        extra = dict(zmid=0, zmin=-m, zmax=m)
    return go.Heatmap(
        z=z, x=list(range(H)), y=list(range(L)), colorscale=KINDS[kind][1], showscale=showscale, text=text,
        hovertemplate="L%{y}H%{x}<br>" + KINDS[kind][0] + ": %{z:.3g}<br>%{text}<extra></extra>", **extra,
    )


def _truth_markers(result: Any) -> go.Scatter:
    truth = _grid(result, "truth").astype(bool)
    ys, xs = np.nonzero(truth)
    return go.Scatter(x=xs, y=ys, mode="markers", marker=dict(symbol="square-open", size=9, color="#D55E00", line=dict(width=2)),
                      name="ground truth", hoverinfo="skip")


def head_heatmap(result: Any, kind: str = "node") -> go.Figure:
    """One layer x head heatmap (click a cell to pick a head); ground-truth heads outlined."""
    if kind == "baseline" and np.isnan(_grid(result, "baseline")).all():
        return empty_figure("this run has no baseline (ground truth from a published circuit or the backcopy head)")
    fig = go.Figure([_heatmap_trace(result, kind), _truth_markers(result)])
    L, H = result.stats["n_layers"], result.stats["heads_per_layer"]
    fig.update_layout(template=TEMPLATE, title=KINDS[kind][0], height=max(300, 22 * L + 120), showlegend=False,
                      xaxis=dict(title="head", **_ticks(H)), yaxis=dict(title="layer", autorange="reversed", **_ticks(L)))
    return fig


def _ticks(n: int) -> dict:
    """Integer ticks: every one for small grids, every fifth for large ones."""
    return dict(tickmode="linear", tick0=0, dtick=1 if n <= 16 else 5)


def score_heatmaps(result: Any) -> go.Figure:
    """Node score, edge score and the baseline's effect share (or the ground truth) side by side."""
    has_baseline = not np.isnan(_grid(result, "baseline")).all()
    kinds = ["node", "edge", "baseline" if has_baseline else "truth"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[KINDS[k][0] for k in kinds], horizontal_spacing=0.08)
    for i, k in enumerate(kinds, start=1):
        tr = _heatmap_trace(result, k, showscale=False)
        fig.add_trace(tr, row=1, col=i)
        m = _truth_markers(result)
        m.showlegend = i == 1
        fig.add_trace(m, row=1, col=i)
        fig.update_yaxes(autorange="reversed", title_text="layer" if i == 1 else None, row=1, col=i, **_ticks(result.stats["n_layers"]))
        fig.update_xaxes(title_text="head", row=1, col=i, **_ticks(result.stats["heads_per_layer"]))
    s = result.stats
    fig.update_layout(template=TEMPLATE, height=max(340, 22 * s["n_layers"] + 160), width=1250, margin=dict(t=100),
                      title=two_line(f"{s['task']}: SAE scores (mean of {len(result.trials)} seeds)",
                                     f"outlined: ground truth, {s['circuit_size']} heads ({s['ground_truth_source']})"))
    return fig


def roc_figure(results: Mapping[str, Any]) -> go.Figure:
    """ROC curves of node and edge scores against each run's ground truth, one faint line per seed."""

    fig = make_subplots(rows=1, cols=2, subplot_titles=["node score", "edge score"])
    for c, (name, r) in enumerate(results.items()):
        truth = r.heads["ground_truth"].to_numpy(dtype=bool)
        if truth.all() or not truth.any():
            continue
        color = COLORS[c % len(COLORS)]
        for col, (kind, scores) in enumerate((("node", r.node_scores), ("edge", r.edge_scores)), start=1):
            for s in range(scores.shape[0]):
                fpr, tpr = roc_points(truth, scores[s].numpy())
                fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", line=dict(color=color, width=1.5), opacity=0.45,
                                         legendgroup=name, showlegend=(s == 0 and col == 1), name=f"{name} (mean AUC node {r.stats['node_auc_mean']:.2f}, edge {r.stats['edge_auc_mean']:.2f})",
                                         hovertemplate=f"{name} seed {s}<br>FPR %{{x:.2f}} TPR %{{y:.2f}}<extra></extra>"), row=1, col=col)
    for col in (1, 2):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(color="#9aa5b1", dash="dot"), showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text="false positive rate", range=[0, 1], row=1, col=col)
        fig.update_yaxes(title_text="true positive rate", range=[0, 1.02], row=1, col=col)
    fig.update_layout(template=TEMPLATE, height=460, title="ROC against the ground truth",
                      legend=dict(orientation="h", yanchor="top", y=-0.22, x=0), margin=dict(t=70, b=110))
    return fig


def layered_positions(graph: nx.Graph) -> dict[str, tuple[float, float]]:
    """Heads placed by layer (rows, top to bottom) and head index (columns)."""
    return {n: (float(d["head"]), float(d["layer"])) for n, d in graph.nodes(data=True)}


def circuit_graph_figure(graph: nx.Graph, n_layers: int | None = None) -> go.Figure:
    """The SAE circuit graph laid out by layer; edge width grows with the co-occurrence score U."""
    if graph.number_of_nodes() == 0:
        return empty_figure("no head pair has codes unique to positives")
    pos = layered_positions(graph)
    wmax = max((d["weight"] for *_, d in graph.edges(data=True)), default=1.0) or 1.0
    traces = []
    for u, v, d in graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        traces.append(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", line=dict(width=0.5 + 5 * d["weight"] / wmax, color="#7b8794"),
                                 opacity=0.6, hoverinfo="text", text=f"{u} – {v}: U = {d['weight']:.1f}", showlegend=False))
    for truth, name, color in ((True, "in ground truth", "#D55E00"), (False, "not in ground truth", "#56B4E9")):
        nodes = [n for n, d in graph.nodes(data=True) if bool(d.get("ground_truth")) == truth]
        if not nodes:
            continue
        traces.append(go.Scatter(
            x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text", text=nodes, textposition="top center",
            marker=dict(size=[10 + 2 * np.sqrt(graph.nodes[n]["edge_score"]) for n in nodes], color=color, line=dict(width=1, color="#1f2933")),
            name=name, customdata=[[graph.nodes[n]["node_score"], graph.nodes[n]["edge_score"]] for n in nodes],
            hovertemplate="%{text}<br>node score %{customdata[0]:.2f}<br>edge score %{customdata[1]:.1f}<extra></extra>"))
    fig = go.Figure(traces)
    top = n_layers - 1 if n_layers else max(p[1] for p in pos.values())
    n_heads = int(max(p[0] for p in pos.values())) + 1
    fig.update_layout(template=TEMPLATE, height=max(360, 24 * (top + 1) + 120), title=two_line("Circuit graph", "head pairs with the most codes unique to positives"), margin=dict(t=80),
                      xaxis=dict(title="head", **_ticks(n_heads)), yaxis=dict(title="layer", range=[top + 0.5, -0.5], **_ticks(top + 1)))
    return fig


def runtime_figure(results: Mapping[str, Any]) -> go.Figure:
    """Wall time of the SAE method (head outputs + one trial) against the patching baseline, per run."""
    names = list(results)
    acts = [results[n].stats["activations_s"] for n in names]
    sae = [results[n].stats["sae_s_per_trial"] for n in names]
    base = [results[n].stats.get("baseline_s") or 0.0 for n in names]
    fig = go.Figure([
        go.Bar(name="SAE method: head outputs", x=names, y=acts, marker_color=COLORS[0], offsetgroup="sae"),
        go.Bar(name="SAE method: one SAE trial", x=names, y=sae, base=acts, marker_color=COLORS[5], offsetgroup="sae"),
        go.Bar(name="baseline: per-head patching", x=names, y=base, marker_color=COLORS[1], offsetgroup="base"),
    ])
    fig.update_layout(template=TEMPLATE, barmode="group", height=380, yaxis=dict(title="seconds", type="log"),
                      title="Runtime on this machine (log scale)")
    return fig


def code_histogram(result: Any, head: int, seed: int = 0) -> go.Figure:
    """How often head `head` emits each code on positives and on negatives (one SAE trial)."""
    codes = result.codes[seed, :, head].long().numpy()
    n = result.n_positive
    pos, neg = codes[:n], codes[n:]
    used = np.union1d(pos, neg)
    label = result.heads.loc[head, "label"]
    only = np.setdiff1d(pos, neg)
    fig = go.Figure([
        go.Bar(x=[str(c) for c in used], y=[int((pos == c).sum()) for c in used], name="positives", marker_color=COLORS[0]),
        go.Bar(x=[str(c) for c in used], y=[int((neg == c).sum()) for c in used], name="negatives", marker_color=COLORS[1]),
    ])
    fig.update_layout(template=TEMPLATE, barmode="group", height=320, xaxis=dict(title="code (SAE feature)", type="category"),
                      yaxis_title="examples", title=two_line(f"{label}, seed {seed}: {len(only)} code(s) only on positives",
                                                             f"{', '.join(map(str, only[:8]))}{'…' if len(only) > 8 else ''}"), margin=dict(t=80))
    return fig


def summary_rows(result: Any) -> list[tuple[str, str]]:
    s = result.stats
    rows = [
        ("task", s["task"]), ("model", str(result.meta.get("model", {}).get("id", "?"))),
        ("heads", str(s["n_heads"])), ("accuracy (metric > 0)", f"{s['accuracy']:.2f}"),
        ("metric pos / neg", f"{s['positive_metric_mean']:.2f} / {s['negative_metric_mean']:.2f}"),
        ("ground truth", f"{s['ground_truth_source']} ({s['circuit_size']} heads)"),
        ("node AUC", f"{s['node_auc_mean']:.3f} ± {s['node_auc_std']:.3f}"),
        ("edge AUC", f"{s['edge_auc_mean']:.3f} ± {s['edge_auc_std']:.3f}"),
        ("SAE method", f"{s['sae_method_s']:.1f} s"),
    ]
    if s.get("paper_auc"):
        rows.append(("paper node / edge AUC", f"{s['paper_auc'][0]:.3f} / {s['paper_auc'][1]:.3f}"))
    if s.get("baseline_s") is not None:
        rows.append(("baseline", f"{s['baseline_s']:.1f} s ({s['baseline_pairs']} pairs, {s['baseline_s'] / s['sae_method_s']:.1f}x)"))
    ev = s.get("evidence") or {}
    names = {"sae_node": "SAE node", "sae_edge": "SAE edge", "attribution": "attribution patching",
             "mean-ablation": "mean ablation", "patching": "activation patching"}
    for key, e in (ev.get("auc") or {}).items():
        interval = "" if e["lo"] == e["hi"] else f" [{e['lo']:.3f}, {e['hi']:.3f}]"
        rows.append((f"AUC vs truth, {names.get(key, key)}", f"{e['value']:.3f}{interval}"))
    if ev.get("split_half"):
        sh = ev["split_half"]
        rows.append(("truth split-half Spearman", f"{sh['spearman']:.2f} ({sh['stable_heads']} of {sh['circuit_size']} heads stable)"))
    return rows
