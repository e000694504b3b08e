"""Figures of the linguistic-collapse probe (`probes.linguistic_collapse`) and its scaling sweep
(`probes.linguistic_collapse.sweep`): each metric against parameters and validation loss, the correlation table,
the class-mean geometry of the most frequent classes, and the min_count sensitivity."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from dashboards.figures import COLORS, TEMPLATE, two_line

METRIC_LABELS = {
    "nc1_cdnv": "NC1 CDNV",
    "nc2_equinorm_cov": "NC2 equinorm (CoV of log-norms)",
    "nc2_cos_mean": "NC2 cosine mean",
    "nc2_cos_std": "NC2 cosine std (equiangularity)",
    "nc2_etf_error": "NC2 ETF error",
    "gnc2_uniformity": "GNC2 hyperspherical uniformity (variance)",
    "nc3_duality_mean": "NC3 self-duality cos mean",
    "unc3_cov": "UNC3 self-duality CoV",
    "nc3_dual_error": "NC3 dual error",
    "nc4_mismatch": "NC4 NCC mismatch",
    "nc4_mismatch_kept": "NC4 mismatch (argmax over kept classes)",
}
SHORT_LABELS = {
    "n_classes": "classes kept", "nc1_cdnv": "NC1 CDNV", "nc2_equinorm_cov": "NC2 equinorm CoV", "nc2_cos_mean": "NC2 cos mean",
    "nc2_cos_std": "NC2 cos std", "nc2_etf_error": "NC2 ETF error", "gnc2_uniformity": "GNC2 uniformity",
    "nc3_duality_mean": "NC3 self-duality", "unc3_cov": "UNC3 CoV", "nc3_dual_error": "NC3 dual error",
    "nc4_mismatch": "NC4 mismatch", "nc4_mismatch_kept": "NC4 mismatch (kept)",
}
LOG_METRICS = {"nc1_cdnv", "unc3_cov", "gnc2_uniformity"}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def short_label(metric: str) -> str:
    return SHORT_LABELS.get(metric, metric)


def _sizes(widths: pd.Series) -> np.ndarray:
    """Marker size by width (log scale, 9 to 24 px)."""
    w = np.log2(widths.astype(float).to_numpy())
    lo, hi = w.min(), w.max()
    return 9 + 15 * ((w - lo) / (hi - lo) if hi > lo else np.zeros_like(w))


SYMBOLS = ["circle", "diamond", "square", "triangle-up", "star"]


def _symbols(steps: pd.Series) -> dict[int, str]:
    """Marker symbol per step budget (fewest steps: circle)."""
    return {s: SYMBOLS[i % len(SYMBOLS)] for i, s in enumerate(sorted(steps.unique()))}


def _scatter_traces(table: pd.DataFrame, metric: str, x: str, showlegend: bool) -> list[go.Scatter]:
    traces = []
    sizes = pd.Series(_sizes(table["d_model"]), index=table.index)
    symbols = _symbols(table["steps"])
    for i, depth in enumerate(sorted(table["n_layers"].unique())):
        sub = table[table["n_layers"] == depth]
        custom = np.stack([sub["d_model"], sub["steps"], sub["n_params"], sub["val_loss"], sub["seed"]], axis=1)
        traces.append(go.Scatter(
            x=sub[x], y=sub[metric], mode="markers", name=f"{depth} layer{'s' if depth > 1 else ''}", legendgroup=f"L{depth}",
            showlegend=showlegend, marker=dict(color=COLORS[i % len(COLORS)], size=sizes[sub.index], symbol=sub["steps"].map(symbols),
                                               line=dict(width=1, color="white")),
            customdata=custom, text=sub["name"],
            hovertemplate=(f"depth {depth}, width %{{customdata[0]}}, %{{customdata[1]}} steps, seed %{{customdata[4]}}<br>"
                           "params %{customdata[2]:,}<br>val loss %{customdata[3]:.3f}<br>" + metric_label(metric) +
                           " %{y:.4g}<extra></extra>"),
        ))
    if showlegend and len(symbols) > 1:
        for steps, symbol in symbols.items():
            traces.append(go.Scatter(x=[None], y=[None], mode="markers", name=f"{steps} steps", legendgroup=f"S{steps}",
                                     marker=dict(symbol=symbol, size=10, color="#7b8794")))
    return traces


def _log_axis(log: bool) -> dict:
    """Axis settings: a log axis labelled at powers of ten only."""
    return dict(type="log", dtick=1, exponentformat="power") if log else dict(type="linear")


def scaling_figure(table: pd.DataFrame, metric: str) -> go.Figure:
    """One metric against parameter count (log x) and against validation loss; colour = depth, size = width."""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1, subplot_titles=("against parameters", "against validation loss"))
    for col, x in ((1, "n_params"), (2, "val_loss")):
        for tr in _scatter_traces(table, metric, x, showlegend=col == 1):
            fig.add_trace(tr, row=1, col=col)
    fig.update_xaxes(title="parameters", type="log", row=1, col=1)
    fig.update_xaxes(title="validation loss (nats/token)", row=1, col=2)
    fig.update_yaxes(title=metric_label(metric), **_log_axis(metric in LOG_METRICS and bool((table[metric] > 0).all())))
    fig.update_layout(template=TEMPLATE, height=380, title=two_line(f"{metric_label(metric)} across the sweep", "size = width, symbol = steps"), margin=dict(t=80),
                      legend=dict(orientation="h", y=-0.22))
    return fig


def scaling_grid(table: pd.DataFrame, metrics: Sequence[str]) -> go.Figure:
    """Every metric (rows) against parameters and validation loss (columns)."""
    fig = make_subplots(rows=len(metrics), cols=2, horizontal_spacing=0.1, vertical_spacing=0.25 / max(len(metrics), 1),
                        shared_xaxes=True)
    for r, metric in enumerate(metrics, start=1):
        for col, x in ((1, "n_params"), (2, "val_loss")):
            for tr in _scatter_traces(table, metric, x, showlegend=(r == 1 and col == 1)):
                fig.add_trace(tr, row=r, col=col)
        log_y = metric in LOG_METRICS and bool((table[metric] > 0).all())
        fig.update_yaxes(title=dict(text=short_label(metric), font=dict(size=12)), **_log_axis(log_y), row=r, col=1)
        fig.update_yaxes(**_log_axis(log_y), row=r, col=2)
        fig.update_xaxes(type="log", row=r, col=1)
    fig.update_xaxes(title="parameters", row=len(metrics), col=1)
    fig.update_xaxes(title="validation loss (nats/token)", row=len(metrics), col=2)
    fig.update_layout(template=TEMPLATE, height=210 * len(metrics) + 140, title="NC metrics across the sweep "
                      "(colour = depth, size = width, symbol = steps)", legend=dict(orientation="h", y=-0.04, yanchor="top"),
                      margin=dict(b=110))
    return fig


def correlation_figure(corr: pd.DataFrame) -> go.Figure:
    """Spearman rho of each metric with validation loss and with parameters, as an annotated table."""
    z = corr[["rho_loss", "rho_params"]].to_numpy(dtype=float)
    text = []
    for _, r in corr.iterrows():
        row = []
        for k in ("loss", "params"):
            rho, p = r[f"rho_{k}"], r[f"p_{k}"]
            row.append("n/a" if math.isnan(rho) else f"{rho:+.2f} (p={p:.2g})")
        text.append(row)
    expected = ["falls with loss" if s > 0 else "rises as loss falls" if s < 0 else "" for s in corr["expected_sign_loss"]]
    y = [f"{metric_label(m)}" for m in corr["metric"]]
    fig = go.Figure(go.Heatmap(
        z=z, x=["ρ with val loss", "ρ with parameters"], y=y, text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0,
        zmin=-1, zmax=1, customdata=np.array([[e, e] for e in expected], dtype=object),
        hovertemplate="%{y}<br>%{x}: %{text}<br>paper's trend: %{customdata}<extra></extra>", colorbar=dict(title="ρ"),
    ))
    fig.update_layout(template=TEMPLATE, height=70 + 34 * len(corr), title="Spearman rank correlations across the sweep",
                      yaxis=dict(autorange="reversed"), margin=dict(l=260))
    return fig


def _class_info(result) -> pd.DataFrame:
    """Rows of the result's class table for the geometry classes, in geometry order."""
    ids = result.geometry["ids"].tolist()
    return result.classes.set_index("token_id").loc[ids].reset_index()


def _hover_custom(info: pd.DataFrame) -> np.ndarray:
    return np.stack([info["token"].map(repr), info["count"], info["norm"], info["self_duality"]], axis=1)


CLASS_HOVER = "%{customdata[0]}<br>count %{customdata[1]:,.0f}<br>norm ‖μ−μ_G‖ %{customdata[2]:.3f}<br>self-duality %{customdata[3]:.3f}"


def cosine_heatmap(result) -> go.Figure:
    """Cosines between the centred class means of the most frequent classes (ideal ETF: −1/(K−1))."""
    info = _class_info(result)
    cos = result.geometry["cos"].numpy()
    labels = [f"{i}:{t!r}" for i, t in enumerate(info["token"])]
    custom = np.empty(cos.shape + (4,), dtype=object)
    row_info = _hover_custom(info)
    custom[:] = row_info[:, None, :]
    fig = go.Figure(go.Heatmap(
        z=cos, x=labels, y=labels, colorscale="RdBu", zmid=0, zmin=-1, zmax=1, customdata=custom,
        hovertemplate="%{y} · %{x}<br>cos %{z:.3f}<br>row class " + CLASS_HOVER + "<extra></extra>", colorbar=dict(title="cos"),
    ))
    k = int(result.metrics.get("n_classes", len(labels)))
    fig.update_layout(template=TEMPLATE, height=620, title=two_line(f"Cosines, top {len(labels)} classes", f"ETF ideal {-1 / max(k - 1, 1):.2g}"), margin=dict(t=80), yaxis=dict(autorange="reversed", tickfont=dict(size=9)),
                      xaxis=dict(tickfont=dict(size=9)))
    return fig


def projection_figure(result) -> go.Figure:
    """2-D PCA of the normalised centred means of the top classes, with their unembedding vectors."""
    info = _class_info(result)
    pm, pw = result.geometry["proj_means"].numpy(), result.geometry["proj_w"].numpy()
    ev = result.geometry["explained"].numpy()
    custom = _hover_custom(info)
    fig = go.Figure()
    xs, ys = [], []
    for (a, b), (c, d) in zip(pm, pw):
        xs += [a, c, None]
        ys += [b, d, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=dict(color="#cbd2d9", width=1), hoverinfo="skip", name="mean ↔ w_c"))
    fig.add_trace(go.Scatter(x=pw[:, 0], y=pw[:, 1], mode="markers", name="classifier w_c (normalised)", customdata=custom,
                             marker=dict(symbol="x", size=8, color=COLORS[1]), hovertemplate="w_c of " + CLASS_HOVER + "<extra></extra>"))
    fig.add_trace(go.Scatter(
        x=pm[:, 0], y=pm[:, 1], mode="markers+text", name="class mean (centred, normalised)", text=info["token"].str.strip(),
        textposition="top center", textfont=dict(size=9), customdata=custom, hovertemplate=CLASS_HOVER + "<extra></extra>",
        marker=dict(size=8 + 14 * np.sqrt(info["count"] / info["count"].max()), color=info["self_duality"], colorscale="Viridis",
                    cmin=-1, cmax=1, colorbar=dict(title="self-duality", x=1.02), line=dict(width=1, color="white")),
    ))
    fig.update_layout(template=TEMPLATE, height=560, title=two_line("Top classes: PCA", "of normalised centred means"), margin=dict(t=80),
                      xaxis=dict(title=f"PC1 ({ev[0]:.0%})", zeroline=False), yaxis=dict(title=f"PC2 ({ev[1]:.0%})", zeroline=False,
                      scaleanchor="x"), legend=dict(orientation="h", y=-0.15))
    return fig


SENSITIVITY_METRICS = ["n_classes", "nc1_cdnv", "nc2_equinorm_cov", "nc2_cos_std", "gnc2_uniformity", "nc3_duality_mean", "nc4_mismatch"]


def sensitivity_figure(result) -> go.Figure:
    """How each metric moves with min_count (classes with fewer samples dropped)."""
    s = result.sensitivity
    metrics = [m for m in SENSITIVITY_METRICS if m in s]
    cols = 4
    rows = math.ceil(len(metrics) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[short_label(m) for m in metrics],
                        horizontal_spacing=0.08, vertical_spacing=0.2)
    main = result.metrics.get("min_count")
    for i, m in enumerate(metrics):
        r, c = divmod(i, cols)
        fig.add_trace(go.Scatter(x=s["min_count"], y=s[m], mode="lines+markers", line=dict(color=COLORS[0]), showlegend=False,
                                 hovertemplate="min_count %{x}: %{y:.4g}<extra>" + m + "</extra>"), row=r + 1, col=c + 1)
        fig.update_xaxes(type="log", tickvals=list(s["min_count"]), row=r + 1, col=c + 1)
        if main is not None:
            fig.add_vline(x=main, line=dict(color="#9aa5b1", dash="dot"), row=r + 1, col=c + 1)
    fig.update_annotations(font_size=11)
    fig.update_layout(template=TEMPLATE, height=280 * rows + 60, title=two_line("Sensitivity to min_count", "dotted: the run's min_count"), margin=dict(t=80))
    return fig


def summary_rows(result) -> list[tuple[str, str]]:
    """(label, value) pairs of a run's headline numbers."""
    m = result.metrics

    def f(k: str, fmt: str = ".4g") -> str:
        v = m.get(k)
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return [
        ("classes kept / seen", f"{m.get('n_classes')} / {m.get('n_classes_seen')} (min_count {m.get('min_count')}, "
                                f"{f('coverage', '.1%')} of positions)"),
        ("training positions", f("n_tokens", ",")), ("held-out positions", f("heldout_positions", ",")),
        ("held-out loss / top-1", f"{f('heldout_loss', '.3f')} / {f('heldout_top1', '.1%')}"),
        ("NC1 CDNV", f("nc1_cdnv")),
        ("NC2 equinorm CoV (log-norms)", f("nc2_equinorm_cov")),
        ("NC2 cosine mean ± std", f"{f('nc2_cos_mean')} ± {f('nc2_cos_std')} (ideal {f('nc2_cos_ideal')})"),
        ("NC2 ETF error", f("nc2_etf_error")),
        ("GNC2 uniformity (log-distance variance)", f("gnc2_uniformity")),
        ("NC3 self-duality mean ± std / CoV", f"{f('nc3_duality_mean')} ± {f('nc3_duality_std')} / {f('unc3_cov')}"),
        ("NC3 dual error", f("nc3_dual_error")),
        ("NC4 mismatch (full vocab / kept classes / class average)",
         f"{f('nc4_mismatch', '.3f')} / {f('nc4_mismatch_kept', '.3f')} / {f('nc4_class_avg_mismatch', '.3f')}"),
    ]
