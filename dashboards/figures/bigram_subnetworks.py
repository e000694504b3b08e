"""Figures of the bigram-subnetworks probe (`probes.bigram_subnetworks`): bigram r against
sparsity over the lambda sweep, where the kept weights sit (layer x matrix), the ablation losses,
the overlap with the optimal subnetwork against its null, the rotation angles per layer, and the
mask-training curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLORS, TEMPLATE, empty_figure, two_line

MATRIX_ORDER = ["attn q", "attn k", "attn v", "attn o", "mlp in", "mlp gate", "mlp out"]


def _kind_color(kind: str) -> str:
    return COLORS[0] if kind == "bigram" else COLORS[3]


def r_vs_sparsity(res) -> go.Figure:
    """Bigram r of each subnetwork against its kept fraction; the full model's r as a line."""
    sw = res.sweep
    if sw.empty:
        return empty_figure("no subnetworks in this result")
    fig = go.Figure()
    for kind, g in sw.groupby("kind", sort=False):
        g = g.sort_values("kept_frac")
        fig.add_trace(go.Scatter(
            x=g["kept_frac"], y=g["r"], mode="lines+markers+text" if kind == "bigram" else "markers+text", name=f"{kind} subnetworks",
            text=[f"λ={lam:g}" for lam in g["lam"]], textposition="top center", marker=dict(size=11, color=_kind_color(kind)),
            line=dict(color=_kind_color(kind)),
            customdata=np.c_[g["kept"], g["maskable"], g["lm_loss"], g["steps"]],
            hovertemplate="%{text}<br>kept %{customdata[0]:,} / %{customdata[1]:,} (%{x:.3%})<br>r = %{y:.3f}<br>"
                          "LM loss %{customdata[2]:.3f}<br>%{customdata[3]} steps<extra>" + str(kind) + "</extra>"))
    sel = sw[sw["selected"].astype(bool)] if "selected" in sw else sw.iloc[:0]
    if not sel.empty:
        fig.add_trace(go.Scatter(x=sel["kept_frac"], y=sel["r"], mode="markers", name="selected λ",
                                 marker=dict(size=20, symbol="circle-open", line=dict(width=3, color="#000"))))
    full_r = res.full_model.get("r")
    if full_r is not None:
        fig.add_hline(y=full_r, line=dict(dash="dash", color="#7b8794"), annotation_text=f"full model r = {full_r:.3f}",
                      annotation_position="bottom right")
    fig.update_layout(template=TEMPLATE, title="Bigram r against subnetwork size", height=420,
                      xaxis=dict(title="kept / maskable weights", type="log", tickformat=".1%"),
                      yaxis=dict(title="Pearson r of surprisals (model vs bigram)"), legend=dict(orientation="h", y=-0.2))
    return fig


def _matrix_grid(res, label: str, value: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    t = res.kept[res.kept["run"] == label].copy()
    t["col"] = t["block"] + " " + t["matrix"]
    z = t.pivot_table(index="layer", columns="col", values=value, aggfunc="sum")
    k = t.pivot_table(index="layer", columns="col", values="kept", aggfunc="sum")
    cols = [c for c in MATRIX_ORDER if c in z.columns]
    return z[cols], k[cols]


def kept_heatmap(res, label: str | None, value: str = "kept_frac") -> go.Figure:
    """Layer x weight-matrix heatmap of one subnetwork: kept fraction (or share of the subnetwork)."""
    if not label or res.kept.empty or label not in set(res.kept["run"]):
        return empty_figure("choose a subnetwork")
    z, k = _matrix_grid(res, label, value)
    title = "kept fraction of each matrix" if value == "kept_frac" else "share of the subnetwork"
    fig = go.Figure(go.Heatmap(
        z=z.to_numpy(), x=list(z.columns), y=[f"layer {i}" for i in z.index], customdata=k.to_numpy(), colorscale="Viridis",
        colorbar=dict(title=dict(text="kept" if value == "kept_frac" else "share"), tickformat=".1%"),
        hovertemplate="%{y}, %{x}<br>%{z:.3%}<br>%{customdata:,} kept<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=f"{label}: {title}", height=120 + 45 * len(z), yaxis=dict(autorange="reversed"))
    return fig


def compare_blocks(res, a: str | None, b: str | None) -> go.Figure:
    """Share of each subnetwork in every (layer, block): two subnetworks side by side."""
    blocks = res.block_table()
    if blocks.empty or not a:
        return empty_figure("choose subnetworks to compare")
    fig = go.Figure()
    for i, label in enumerate([x for x in (a, b) if x]):
        g = blocks[blocks["run"] == label].sort_values(["layer", "block"])
        fig.add_trace(go.Bar(x=[f"L{l} {blk}" for l, blk in zip(g["layer"], g["block"])], y=g["share_of_kept"], name=label,
                             marker_color=COLORS[[0, 3][i]], customdata=np.c_[g["kept"], g["kept_frac"]],
                             hovertemplate="%{x}: %{y:.1%} of the subnetwork<br>%{customdata[0]:,} kept (%{customdata[1]:.3%} of the block)"
                                           "<extra>" + label + "</extra>"))
    fig.update_layout(template=TEMPLATE, title=two_line("Where the kept weights sit", "share of each subnetwork"), margin=dict(t=80), barmode="group", height=400,
                      yaxis=dict(title="share of kept weights", tickformat=".0%"), legend=dict(orientation="h", y=-0.25))
    return fig


def ablation_bars(res) -> go.Figure:
    """LM loss with a subnetwork zeroed (or kept alone) against count-matched random masks."""
    a = res.ablation
    if a.empty:
        return empty_figure("no ablation in this result")
    colors = [COLORS[7] if c == "full model" else COLORS[5] if "random" in c else COLORS[3] if "optimal" in c else COLORS[0]
              for c in a["condition"]]
    fig = go.Figure(go.Bar(
        x=a["condition"], y=a["loss"], marker_color=colors, error_y=dict(type="data", array=a["loss_sd"], visible=True),
        customdata=np.c_[a["zeroed"], a["n"]],
        hovertemplate="%{x}<br>loss %{y:.3f} nats<br>%{customdata[0]:,} weights zeroed<br>%{customdata[1]} mask(s)<extra></extra>"))
    full = a.loc[a["condition"] == "full model", "loss"]
    if len(full):
        fig.add_hline(y=float(full.iloc[0]), line=dict(dash="dash", color="#7b8794"), annotation_text="full model")
    fig.update_layout(template=TEMPLATE, title="Ablation: LM loss on held-out text", height=430,
                      yaxis=dict(title="next-token loss (nats)"), xaxis=dict(tickangle=-20))
    return fig


def overlap_null(res) -> go.Figure:
    """Observed overlap |C0 ∩ C1| / maskable against the count-matched null distribution."""
    ov, null = res.overlap, res.overlap_null
    if not ov or null.numel() == 0:
        return empty_figure("no optimal subnetwork in this result")
    fig = go.Figure(go.Histogram(x=null.numpy(), nbinsx=60, name="random pairs (same per-matrix counts)", marker_color=COLORS[5]))
    fig.add_vline(x=ov["observed"], line=dict(color=COLORS[3], width=3))
    fig.add_annotation(x=ov["observed"], y=1, yref="paper", showarrow=False, xanchor="right", yanchor="top",
                       text=f"observed {ov['observed']:.3%}<br>{ov['ratio_to_chance']:.2f}× chance, p = {ov['p_value']:.2g}<br>"
                            f"{ov['contained']:.1%} of {ov['a']} inside {ov['b']}")
    fig.update_layout(template=TEMPLATE, title=f"Overlap of {ov['a']} with {ov['b']}", height=380, showlegend=True,
                      xaxis=dict(title="overlap / maskable weights", tickformat=".3%"), yaxis=dict(title="samples"),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def rotation_angles(res) -> go.Figure:
    """Median |eigen-angle| of the ridge map from each layer to the input embeddings and to the final residual."""
    rot = res.rotation
    if rot.empty:
        return empty_figure("no rotation analysis in this result")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("to the input token embedding", "to the final (pre-norm) residual"))
    for i, (label, g) in enumerate(rot.groupby("run", sort=False)):
        c = COLORS[7] if label == "full" else COLORS[3] if label.startswith("optimal") else COLORS[0]
        for col, key in ((1, "to_input_deg"), (2, "to_output_deg")):
            fig.add_trace(go.Scatter(x=g["layer"], y=g[key], mode="lines+markers", name=label, legendgroup=label, showlegend=col == 1,
                                     line=dict(color=c, width=3), hovertemplate="layer %{x}: %{y:.1f}°<extra>" + label + "</extra>"),
                          row=1, col=col)
    fig.update_xaxes(title_text="layer (0 = embeddings)", dtick=1)
    fig.update_yaxes(title_text="median |angle| (degrees)", row=1, col=1)
    fig.update_layout(template=TEMPLATE, title=two_line("Rotation of each layer's representation", "ridge, alpha 1"), margin=dict(t=80), height=400,
                      legend=dict(orientation="h", y=-0.25))
    return fig


def training_curves(res) -> go.Figure:
    """Soft-target cross-entropy and kept fraction over mask-training steps, per subnetwork."""
    log = res.train_log
    if log.empty:
        return empty_figure("no training log")
    fig = make_subplots(rows=1, cols=2, subplot_titles=("cross-entropy against the target", "mask values above 0.9"))
    for i, (label, g) in enumerate(log.groupby("run", sort=False)):
        c = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=g["step"], y=g["ce"], mode="lines", name=label, legendgroup=label, line=dict(color=c)), row=1, col=1)
        fig.add_trace(go.Scatter(x=g["step"], y=g["kept_frac"], mode="lines", name=label, legendgroup=label, showlegend=False,
                                 line=dict(color=c)), row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(type="log", tickformat=".1%", row=1, col=2)
    fig.update_layout(template=TEMPLATE, title="Mask training", height=380, legend=dict(orientation="h", y=-0.25))
    return fig


def summary_rows(res) -> list[tuple[str, str]]:
    """Key numbers of a result as (label, value) strings."""
    s = res.summary()
    if not s:
        return [("result", "empty")]
    rows = [("selected subnetwork", str(s.get("selected"))),
            ("bigram r: subnetwork / full model", f"{s.get('subnetwork_r')} / {s.get('full_model_r')}"),
            ("active / maskable weights", f"{s.get('active', 0):,} / {s.get('maskable', 0):,} ({s.get('kept_frac', 0):.3%})"),
            ("share in the first MLP / all MLPs", f"{s.get('first_mlp_share', 0):.1%} / {s.get('mlp_share', 0):.1%}")]
    if "overlap_times_chance" in s:
        rows.append(("overlap with optimal", f"{s['overlap_times_chance']}× chance (p = {s['overlap_p']:.2g})"))
    b = res.bigram
    if b:
        rows.append(("eval contexts unseen / infinite surprisal", f"{b.get('eval_unseen_context_rate', 0):.2%} / {b.get('eval_inf_surprisal_rate', 0):.2%}"))
    return rows
