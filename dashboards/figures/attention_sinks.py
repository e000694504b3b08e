"""Figures of the attention-sinks probe (`probes.attention_sinks`): attention maps with the sink
column marked, layer × head heatmaps of sink mass and of the difference between two domains,
residual and value norms of the first token against the rest, head-ablation scatter, the BB
token-level active/dormant test, and training dynamics of the BB variants side by side."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from dashboards.figures import COLORS, TEMPLATE, two_line
from probes.attention_sinks import domain_contrast

VARIANT_NAMES = {"adam": "AdamW", "sgd": "SGD (momentum)", "relu": "ReLU attention (AdamW)"}


def _labels(tokens: Sequence[str]) -> list[str]:
    """Unique axis labels: position and a visible form of the token."""
    return [f"{i}:{t!r}"[:18] for i, t in enumerate(tokens)]


def _grid(heads: pd.DataFrame, value: str) -> np.ndarray:
    L, H = int(heads["layer"].max()) + 1, int(heads["head"].max()) + 1
    z = np.full((L, H), np.nan)
    z[heads["layer"].to_numpy(), heads["head"].to_numpy()] = heads[value].to_numpy()
    return z


def attention_map(pattern: np.ndarray | torch.Tensor, tokens: Sequence[str], title: str = "attention pattern") -> go.Figure:
    """Query × key heatmap of one head; the first key (the sink) is outlined and its mass shown."""
    p = np.asarray(pattern, dtype=float)
    T = p.shape[0]
    labels = _labels(tokens[:T])
    sink = float(p[1:, 0].mean()) if T > 1 else float("nan")
    fig = go.Figure(go.Heatmap(z=p, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=max(1e-9, float(np.nanmax(p))),
                               colorbar=dict(title="weight"),
                               hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>"))
    fig.add_shape(type="rect", x0=-0.5, x1=0.5, y0=-0.5, y1=T - 0.5, line=dict(color="#D55E00", width=2))
    fig.update_layout(template=TEMPLATE, title=two_line(title, f"sink mass on the first token {sink:.2f}"), margin=dict(t=80), height=520,
                      xaxis=dict(title="key", tickangle=-60, tickfont=dict(size=9)),
                      yaxis=dict(title="query", autorange="reversed", tickfont=dict(size=9)))
    return fig


def sink_heatmap(heads: pd.DataFrame, domain: str) -> go.Figure:
    """Layer × head sink mass on one domain (hover: Δloss when the head is zeroed, dormant flag)."""
    h = heads[heads["domain"] == domain]
    z = _grid(h, "sink_mass")
    dl = _grid(h, "delta_loss") if "delta_loss" in h else np.full_like(z, np.nan)
    fig = go.Figure(go.Heatmap(z=z, customdata=dl, colorscale="Viridis", zmin=0, zmax=1, colorbar=dict(title="sink mass"),
                               hovertemplate="L%{y}H%{x}<br>sink mass %{z:.3f}<br>Δloss if zeroed %{customdata:.4f}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=two_line("Attention on the first token per head", domain), margin=dict(t=80), height=560,
                      xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", autorange="reversed", dtick=1))
    return fig


def dormancy_difference_heatmap(heads: pd.DataFrame, a: str, b: str) -> go.Figure:
    """Sink mass on domain b minus domain a per head (blue: more dormant on b; red: more active on b)."""

    t = domain_contrast(heads, a, b)
    z = _grid(t.rename(columns={"sink_diff": "v"}), "v")
    cd = np.stack([_grid(t.rename(columns={"delta_loss_a": "v"}), "v"), _grid(t.rename(columns={"delta_loss_b": "v"}), "v")], -1)
    m = float(np.nanmax(np.abs(z))) or 1.0
    fig = go.Figure(go.Heatmap(z=z, customdata=cd, colorscale="RdBu", zmid=0, zmin=-m, zmax=m, colorbar=dict(title="Δ sink"),
                               hovertemplate=f"L%{{y}}H%{{x}}<br>sink({b}) − sink({a}) %{{z:+.3f}}<br>Δloss {a} %{{customdata[0]:.4f}}"
                                             f"<br>Δloss {b} %{{customdata[1]:.4f}}<extra></extra>"))
    flips = t[t["flips"]]
    if len(flips):
        fig.add_trace(go.Scatter(x=flips["head"], y=flips["layer"], mode="markers", name="dormant on one domain only",
                                 marker=dict(symbol="x", color="black", size=9), hoverinfo="skip"))
    fig.update_layout(template=TEMPLATE, title=f"Active-dormant difference: {b} − {a}", height=560,
                      xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", autorange="reversed", dtick=1),
                      legend=dict(orientation="h", y=-0.12))
    return fig


def residual_norms_figure(layers: pd.DataFrame) -> go.Figure:
    """Residual norm per layer: the first token (dashed) against the mean of the others, per domain."""
    fig = go.Figure()
    for i, (dom, t) in enumerate(layers.groupby("domain", sort=False)):
        c = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=t["layer"], y=t["resid_rest"], mode="lines+markers", name=f"{dom}: other tokens",
                                 line=dict(color=c, width=3), legendgroup=dom))
        fig.add_trace(go.Scatter(x=t["layer"], y=t["resid_first"], mode="lines+markers", name=f"{dom}: first token",
                                 line=dict(color=c, dash="dash"), marker=dict(symbol="diamond"), legendgroup=dom))
    fig.update_layout(template=TEMPLATE, title=two_line("Residual-state peak", "‖resid‖ of the first token vs the rest"), height=420,
                      xaxis=dict(title="layer (0 = embeddings)"), yaxis=dict(title="‖x‖", type="log"), hovermode="x unified",
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=80, b=110))
    return fig


def value_norms_figure(heads: pd.DataFrame, domain: str) -> go.Figure:
    """Value drain per head: ‖W_O v‖ of the first token divided by the mean over the others (log colour)."""
    h = heads[heads["domain"] == domain].copy()
    h["ratio"] = h["value_norm_first"] / h["value_norm_rest"]
    z = np.log10(_grid(h, "ratio"))
    fig = go.Figure(go.Heatmap(z=z, customdata=_grid(h, "ratio"), colorscale="RdBu", zmid=0, colorbar=dict(title="log10 ratio"),
                               hovertemplate="L%{y}H%{x}<br>first / rest = %{customdata:.3f}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, title=f"Value drain, {domain}: ‖W_O v_first‖ / ‖W_O v_other‖", height=560,
                      xaxis=dict(title="head", dtick=1), yaxis=dict(title="layer", autorange="reversed", dtick=1))
    return fig


def value_profile_figure(profiles: Mapping[str, torch.Tensor], domain: str, layer: int, head: int, max_pos: int = 64) -> go.Figure:
    """One head per position t: mean ‖W_O v_t‖ (bars) and the mean attention query t puts on the first token."""
    v = profiles[f"value|{domain}"][layer, head, :max_pos].numpy()
    s = profiles[f"sink|{domain}"][layer, head, :max_pos].numpy()
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=np.arange(len(v)), y=v, name="‖W_O v_t‖", marker_color=COLORS[0]), secondary_y=False)
    fig.add_trace(go.Scatter(x=np.arange(1, len(s)), y=s[1:], name="attention on first token from query t",
                             line=dict(color=COLORS[3], width=2)), secondary_y=True)
    fig.update_layout(template=TEMPLATE, title=f"L{layer}H{head} per position — {domain}", height=400,
                      legend=dict(orientation="h", y=-0.3), margin=dict(b=110))
    fig.update_xaxes(title="position t")
    fig.update_yaxes(title="value norm", secondary_y=False)
    fig.update_yaxes(title="sink weight", range=[0, 1], secondary_y=True)
    return fig


def ablation_scatter(heads: pd.DataFrame, dormant_sink: float, dormant_loss: float) -> go.Figure:
    """Each head on each domain: sink mass against |Δloss| when zeroed; the dormant corner is shaded."""
    fig = go.Figure()
    h = heads.dropna(subset=["delta_loss"])
    for i, (dom, t) in enumerate(h.groupby("domain", sort=False)):
        fig.add_trace(go.Scatter(x=t["sink_mass"], y=t["delta_loss"].abs().clip(lower=1e-6), mode="markers", name=dom,
                                 marker=dict(color=COLORS[i % len(COLORS)], size=7, opacity=0.75),
                                 text=[f"L{l}H{hh}" for l, hh in zip(t["layer"], t["head"])],
                                 hovertemplate="%{text}<br>sink %{x:.3f}<br>|Δloss| %{y:.4f}<extra>" + dom + "</extra>"))
    fig.add_shape(type="rect", x0=dormant_sink, x1=1.0, y0=1e-6, y1=dormant_loss, fillcolor="rgba(0,114,178,0.08)", line=dict(width=0))
    fig.update_layout(template=TEMPLATE, title="Dormant heads: sink mass vs Δloss", height=440,
                      xaxis=dict(title="sink mass", range=[0, 1]), yaxis=dict(title="|Δ loss| (nats)", type="log"),
                      legend=dict(orientation="h", y=-0.3), margin=dict(b=110))
    return fig


def token_dormancy_figure(tokens: pd.DataFrame, threshold: float, layer: int | None = None) -> go.Figure:
    """BB token-level test: attention on ⟨s⟩ at the last position per token; triggers in orange."""
    layer = int(tokens["layer"].max()) if layer is None else layer
    t = tokens[tokens["layer"] == layer].sort_values("sink_last")
    colors = [COLORS[1] if trig else COLORS[0] for trig in t["is_trigger"]]
    fig = go.Figure(go.Bar(x=[repr(c) for c in t["token"]], y=t["sink_last"], marker_color=colors,
                           customdata=np.stack([t["active"], t["agrees"]], -1),
                           hovertemplate="%{x}: %{y:.3f}<br>active %{customdata[0]}<br>agrees with rule %{customdata[1]}<extra></extra>"))
    fig.add_hline(y=threshold, line=dict(color="#D55E00", dash="dot"), annotation_text=f"threshold {threshold}")
    agree = float(t["agrees"].mean())
    fig.update_layout(template=TEMPLATE, title=two_line(f"Active vs dormant tokens, layer {layer}",
                                                             f"agreement with 'active iff trigger': {agree:.0%}"), margin=dict(t=80), height=400,
                      xaxis=dict(title="token (orange = trigger)", tickfont=dict(size=9)), yaxis=dict(title="attention on ⟨s⟩", range=[0, 1]))
    return fig


DYNAMICS_ROWS = (
    # (column, short axis title, log axis, dashed companion column)
    ("sink_mass", "sink mass", False, None),
    ("resid_first", "‖resid ⟨s⟩‖", False, "resid_rest"),
    ("value_norm_first", "‖W_O v ⟨s⟩‖", True, "value_norm_rest"),
    ("bigram_risk", "risk", True, "backcopy_risk"),
)
STEP0_X = 0.5  # where step 0 sits on the log axis


def _steps(d: pd.DataFrame) -> pd.Series:
    return d["step"].astype(float).where(d["step"] > 0, STEP0_X)


def dynamics_figure(runs: Mapping[str, pd.DataFrame], optimum: float | None = None,
                    reference: Mapping[str, Mapping[str, Mapping[int, float]]] | None = None,
                    reference_label: str = "paper (released curve)") -> go.Figure:
    """Training dynamics per variant (columns) against log step: attention sink on non-trigger
    queries, residual and value norm of ⟨s⟩ (solid) against the other tokens (dashed), and the
    bigram (solid) and backcopy (dashed) risks. One colour per layer; step 0 is drawn at 0.5.
    Each row shares one y range across the variants so they compare at a glance. `reference`
    (variant -> row column -> {step: value}, e.g. a paper's published curve) is drawn as grey
    diamonds, within the run's step range."""
    names = [VARIANT_NAMES.get(k, k) for k in runs]
    fig = make_subplots(rows=len(DYNAMICS_ROWS), cols=len(runs), shared_xaxes=True, column_titles=names,
                        vertical_spacing=0.05, horizontal_spacing=0.04)
    seen: dict[int, list[float]] = {r: [] for r in range(1, len(DYNAMICS_ROWS) + 1)}
    ref_shown = False
    for c, (variant, d) in enumerate(runs.items(), start=1):
        if d.empty:
            continue
        for r, (col, _, _, dashed) in enumerate(DYNAMICS_ROWS, start=1):
            groups = [(None, d[d["layer"] == d["layer"].min()])] if col == "bigram_risk" else list(d.groupby("layer"))
            for l, t in groups:
                color = "black" if l is None else COLORS[int(l) % len(COLORS)]
                name = f"layer {l}" if l is not None else "bigram risk"
                for ycol, dash, label in ((col, None, name), (dashed, "dash", "backcopy risk" if l is None else None)):
                    if ycol is None:
                        continue
                    y = t[ycol].clip(lower=1e-6) if ycol == "backcopy_risk" else t[ycol]
                    seen[r] += [float(v) for v in y if np.isfinite(v)]
                    show = c == 1 and (r == 1 or (l is None and r == len(DYNAMICS_ROWS))) and label is not None
                    fig.add_trace(go.Scatter(x=_steps(t), y=y, name=label or name, legendgroup=label or name, showlegend=show,
                                             line=dict(color=color, dash=dash), mode="lines+markers", marker=dict(size=4)), row=r, col=c)
        for r, (col, _, _, _) in enumerate(DYNAMICS_ROWS, start=1):
            points = {k: v for k, v in ((reference or {}).get(variant, {}).get(col, {})).items() if k <= d["step"].max()}
            if points:
                seen[r] += list(points.values())
                fig.add_trace(go.Scatter(x=[k if k > 0 else STEP0_X for k in points], y=list(points.values()), mode="markers",
                                         name=reference_label, legendgroup="paper", showlegend=not ref_shown,
                                         marker=dict(symbol="diamond", size=9, color="grey")), row=r, col=c)
                ref_shown = True
        if optimum is not None:
            x = _steps(d)
            fig.add_trace(go.Scatter(x=[x.min(), x.max()], y=[optimum, optimum], name="bigram optimum", showlegend=c == 1,
                                     line=dict(color=COLORS[3], dash="dot")), row=len(DYNAMICS_ROWS), col=c)
            seen[len(DYNAMICS_ROWS)].append(optimum)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title="training step", row=len(DYNAMICS_ROWS))
    for r, (_, title, logy, _) in enumerate(DYNAMICS_ROWS, start=1):
        vals = np.asarray(seen[r])
        fig.update_yaxes(title=title, row=r, col=1)
        if r == 1:
            fig.update_yaxes(range=[0, 1.02], row=r)
        elif len(vals):
            if logy:
                lo, hi = np.log10(vals.min()), np.log10(vals.max())
                pad = 0.05 * max(hi - lo, 0.1)
                fig.update_yaxes(type="log", range=[lo - pad, hi + pad], row=r)
            else:
                pad = 0.05 * max(vals.max() - vals.min(), 1e-3)
                fig.update_yaxes(range=[min(0.0, vals.min() - pad), vals.max() + pad], row=r)
    fig.update_layout(template=TEMPLATE, title="Bigram-Backcopy training dynamics<br><sup>norm rows: ⟨s⟩ solid, the other "
                      "tokens dashed; sink mass over non-trigger queries</sup>", height=240 * len(DYNAMICS_ROWS), margin=dict(t=110),
                      legend=dict(orientation="h", y=-0.06))
    return fig


def delta_logit_bands_figure(runs: Mapping[str, pd.DataFrame], layer: int | None = None) -> go.Figure:
    """Δlogit (score to ⟨s⟩ minus the mean score to the other keys) over training, median and
    10–90% band, for non-trigger and trigger queries; one panel per variant."""
    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, subplot_titles=[VARIANT_NAMES.get(k, k) for k in runs])
    for c, (variant, d) in enumerate(runs.items(), start=1):
        if d.empty:
            continue
        lay = int(d["layer"].max()) if layer is None else layer
        t = d[d["layer"] == lay]
        x = _steps(t).to_numpy()
        for j, (suffix, name) in enumerate((("", "non-trigger"), ("_trigger", "trigger"))):
            col = COLORS[j]
            lo, mid, hi = (t[f"delta_logit{suffix}_q{q}"].to_numpy() for q in (10, 50, 90))
            fig.add_trace(go.Scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", fillcolor=f"rgba({int(col[1:3], 16)},"
                                     f"{int(col[3:5], 16)},{int(col[5:7], 16)},0.2)", line=dict(width=0), hoverinfo="skip",
                                     showlegend=False), row=1, col=c)
            fig.add_trace(go.Scatter(x=x, y=mid, name=f"{name} queries", showlegend=c == 1, line=dict(color=col, width=2)), row=1, col=c)
    fig.update_xaxes(type="log", title="training step")
    fig.update_yaxes(title="Δlogit of ⟨s⟩", col=1)
    fig.update_layout(template=TEMPLATE, title=two_line("Δlogit of the sink over training", "median, 10–90% band"), margin=dict(t=80), height=400,
                      legend=dict(orientation="h", y=-0.25))
    return fig
