"""Cross-analysis views: measurements that connect two analyses on the same model.

(a) Sink heads against function tokens. For every head, the attention on the first (BOS) position
    from queries that are function tokens (the most frequent Brown types covering 40% of the corpus,
    as in the function-tokens analysis) and from content-token queries, beside the attention-sinks
    survey's sink mass and zero-ablation dormancy. Question: do dormant heads park on BOS more when
    the query is a function token?
(b) Bigram-subnetwork layers against where the residual peak at the first position forms. On the
    model a stored bigram-subnetworks result was trained on: the share of the kept weights per layer,
    beside the first-position / rest residual-norm ratio per layer (residual-norms probe). The same
    ratio for the embedded model comes from the survey in (a). Skipped, and said so, when the store
    holds no bigram-subnetworks result.
(c) Key-space clusters of the tokens that function-token SAE features promote. SAE features that
    fire (almost) only on function tokens, their decoder direction through the unembedding (top
    promoted tokens), and how many of those tokens share one k-means cluster of the unembedding keys
    (key-space analysis), against content-token features and random token sets. Needs SAEs
    (workbench-trained ones for the model, or the preset's SAE Lens release); skipped otherwise.

The measurements are the `cross-analysis` study (`probes.cross_analysis`): every part is a probe run
through the store (the attention-sinks experiment's own survey when it is stored for the model),
and the study's result is stored too. This script draws its figures and writes the report section.
Deviations: a few thousand Brown tokens on CPU; zero-ablation on a few hundred tokens (dormancy is
noisy at that size); function/content split by corpus frequency only.

Usage: python -m experiments.cross_analysis [--quick] [--preset cpu|gpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments import attention_sinks as exp_sinks
from experiments import bigram_subnetworks as exp_bigram
from experiments.presets import declare
from experiments.reporting import report as register_report
from experiments.run_all import publish_report
from experiments.common import DEFAULT_OUT, ReportSection, Timer, hardware, write_figure
from probes.cross_analysis import NAME, CrossAnalysisConfig
from workbench.runner import run_study

# The paper's headline, as the report's summary table states it beside ours.
PAPER_HEADLINE = (
    "None: the views join two analyses on one model (the workbench's own questions)"
)

PRESETS: dict[str, Any] = declare("cross_analysis", {
    # zero-ablation of all 270 heads on one 128-token chunk: ~140 forward-equivalents, about 5 min on 2 shared cores
    "cpu": dict(model="smollm2-135m", max_tokens=2048, seq_len=128, batch_size=8, ablation_tokens=128, saes=[],
                sae_layers=(5, 15, 25), min_fires=20, purity=0.9, n_promoted=10, resid_tokens=8192),
    "gpu": dict(model="smollm2-135m", max_tokens=65_536, seq_len=256, batch_size=16, ablation_tokens=8192, saes=[],
                sae_layers=(5, 15, 25), min_fires=50, purity=0.9, n_promoted=10, resid_tokens=65_536),
    "quick": dict(model="tiny", max_tokens=512, seq_len=64, batch_size=4, ablation_tokens=64, saes=[],
                  sae_layers=(0, 1), min_fires=3, purity=0.9, n_promoted=10, resid_tokens=512),
})


# ----------------------------------------------------------------------------- (a) survey + function/content split


def head_figures(t: pd.DataFrame, model_name: str) -> dict[str, go.Figure]:
    dorm = t["dormant"].astype(bool)
    scatter = go.Figure()
    for flag, name, color in ((False, "other heads", "#7f7f7f"), (True, "dormant heads", "#d62728")):
        d = t[dorm == flag]
        scatter.add_trace(go.Scatter(
            x=d["sink_content"], y=d["sink_function"], mode="markers", name=f"{name} ({len(d)})",
            marker=dict(color=color, size=7, opacity=0.75),
            text=[f"L{int(r.layer)}H{int(r.head)} sink {r.sink_mass:.3f}, Δloss {r.delta_loss:+.4f}" for r in d.itertuples()],
            hovertemplate="%{text}<br>content queries %{x:.3f}<br>function queries %{y:.3f}<extra></extra>"))
    scatter.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="black"), name="equal", hoverinfo="skip"))
    scatter.update_layout(title=f"{model_name}: attention on BOS per head, function-token vs content-token queries",
                          xaxis_title="mean attention on BOS, content-token queries", yaxis_title="… function-token queries",
                          width=760, height=620, template="plotly_white", legend=dict(orientation="h", y=-0.15))
    L, H = int(t["layer"].max()) + 1, int(t["head"].max()) + 1
    z = np.full((L, H), np.nan)
    z[t["layer"].to_numpy(), t["head"].to_numpy()] = t["f_minus_c"].to_numpy()
    lim = float(np.nanmax(np.abs(z))) or 1.0
    heat = go.Figure(go.Heatmap(z=z, x=list(range(H)), y=list(range(L)), colorscale="RdBu", reversescale=True, zmin=-lim, zmax=lim,
                                colorbar=dict(title="function − content"),
                                hovertemplate="L%{y}H%{x}: %{z:+.3f}<extra></extra>"))
    dl = t[dorm]
    heat.add_trace(go.Scatter(x=dl["head"], y=dl["layer"], mode="markers", marker=dict(symbol="x", color="black", size=8),
                              name="dormant", hoverinfo="skip"))
    heat.update_layout(title=f"{model_name}: BOS attention from function minus content queries (x = dormant head)",
                       xaxis_title="head", yaxis_title="layer", width=620, height=max(420, 22 * L + 160), template="plotly_white",
                       xaxis=dict(dtick=1), yaxis=dict(dtick=1 if L <= 12 else 5), legend=dict(orientation="h", y=-0.12))
    return {"sink_function_vs_content": scatter, "sink_function_minus_content_heatmap": heat}


# ----------------------------------------------------------------------------- (b) bigram layers vs residual peaks


def layer_figure(t: pd.DataFrame | None, bigram_model: str | None, smol: dict[str, Any], model_name: str) -> go.Figure:
    rows = 2 if t is not None else 1
    fig = make_subplots(rows=rows, cols=1, specs=[[{"secondary_y": True}]] * rows, vertical_spacing=0.18,
                        subplot_titles=([f"{bigram_model}: bigram-subnetwork weights per layer and the BOS residual peak"] if t is not None else [])
                        + [f"{model_name}: BOS / rest residual-norm ratio per layer"])
    if t is not None:
        for col, name, color in (("kept_share_bigram", "bigram subnetwork: share of kept weights", "#1f77b4"),
                                 ("kept_share_optimal", "optimal subnetwork: share of kept weights", "#aec7e8")):
            if col in t:
                fig.add_trace(go.Bar(x=t["layer"], y=t[col], name=name, marker_color=color), row=1, col=1)
        fig.add_trace(go.Scatter(x=t["layer"], y=t["resid_ratio_after"], name="BOS/rest residual ratio after the block",
                                 mode="lines+markers", line=dict(color="#d62728")), row=1, col=1, secondary_y=True)
        fig.update_yaxes(title_text="share of kept weights", row=1, col=1)
        fig.update_yaxes(title_text="BOS / rest", row=1, col=1, secondary_y=True)
        fig.update_xaxes(title_text="layer (block)", dtick=1, row=1, col=1)
    r = smol["ratios"]
    fig.add_trace(go.Scatter(x=list(range(len(r))), y=r, mode="lines+markers", name=f"{model_name}: BOS/rest residual ratio",
                             line=dict(color="#2ca02c")), row=rows, col=1)
    fig.update_xaxes(title_text="layer (0 = embeddings, l = after block l−1)", row=rows, col=1)
    fig.update_yaxes(title_text="BOS / rest", type="log", row=rows, col=1)
    fig.update_layout(width=820, height=420 * rows, template="plotly_white", legend=dict(orientation="h", y=-0.12), barmode="group")
    return fig


# ----------------------------------------------------------------------------- (c) key-space clusters of promoted tokens


def cluster_figure(t: pd.DataFrame, chance: float, model_name: str) -> go.Figure:
    fig = go.Figure()
    for kind, color in (("function", "#d62728"), ("content", "#1f77b4")):
        d = t[t["kind"] == kind]
        fig.add_trace(go.Box(x=d["sae"], y=d["concentration"], name=f"{kind}-token features", marker_color=color, boxmean=True,
                             text=d["top_tokens"], hovertemplate="%{x} %{text}<br>share in one cluster %{y:.2f}<extra></extra>"))
    fig.add_hline(y=chance, line_dash="dot", annotation_text=f"random token sets {chance:.2f}")
    fig.update_layout(title=f"{model_name}: promoted tokens of SAE features, largest share in one key-space cluster",
                      yaxis_title="largest share of the top tokens in one cluster", xaxis_title="SAE", boxmode="group",
                      width=760, height=520, template="plotly_white", legend=dict(orientation="h", y=-0.18))
    return fig


# ----------------------------------------------------------------------------- report


def _f(x, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def study_config(preset: str, quick: bool) -> CrossAnalysisConfig:
    """The study's config for a preset: its own settings, the attention-sinks experiment's survey when
    it ran on the same model, and the bigram-subnetworks experiment's recipe and probe config."""

    name = "quick" if quick else preset
    p = PRESETS[name]
    theirs = exp_sinks.PRESETS.get(preset)
    survey = {**theirs["survey"], "domains": ["python-stdlib"]} if theirs and theirs.get("lm") == p["model"] and not quick else None
    bp = exp_bigram.PRESETS.get(name)
    bigram = {"recipe": bp["recipe"], "probe": bp["probe"]} if bp else None
    return CrossAnalysisConfig(
        model=p["model"], max_tokens=p["max_tokens"], seq_len=p["seq_len"], batch_size=p["batch_size"],
        ablation_tokens=p["ablation_tokens"], survey=survey, saes=list(p["saes"]), sae_layers=list(p["sae_layers"]),
        min_fires=p["min_fires"], purity=p["purity"], n_promoted=p["n_promoted"], resid_tokens=p["resid_tokens"],
        bigram=bigram, min_bigram_steps=0 if quick else 100)


def run(out: Path, quick: bool = False, preset: str = "cpu", device: str | None = None) -> ReportSection:
    name = "quick" if quick else preset
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r} for the cross-analysis; choose from {sorted(PRESETS)}")
    p = PRESETS[name]
    cfg = study_config(preset, quick)
    out = Path(out)
    figures: list[str] = []
    md: list[str] = ["**Verdict: no paper headline**: these views join two analyses each; the questions are the "
                     "workbench's own, and each part states what it finds.", ""]
    with Timer() as timer:
        outcome = run_study(NAME, cfg, device=device)
        res = outcome.result
        src = res.sources
        heads, s = res.heads, res.head_summary
        split_info = src["split"]
        out.mkdir(parents=True, exist_ok=True)
        heads.to_csv(out / "heads.csv", index=False)
        for fname, fig in head_figures(heads, p["model"]).items():
            figures += write_figure(fig, out, fname)
        cfgd = src["dormant"]
        top = heads.sort_values("f_minus_c", ascending=False).head(5)
        md += [
            f"Model `{p['model']}` (raw numerics), Brown. {'**Quick smoke settings on a tiny random model: the numbers mean nothing.** ' if quick else ''}"
            f"Function tokens: the {split_info['n_function_tokens']:,} most frequent types covering {cfg.mass:.0%} of Brown under this tokenizer "
            f"(the function-tokens analysis's rule). Machine: {hardware()}.",
            "",
            "**(a) Sink heads against function tokens.** Per head, mean attention on the BOS position from function-token "
            f"queries and from content-token queries ({split_info['n_function_queries']:,} and {split_info['n_content_queries']:,} "
            f"query positions, {split_info.get('n_positions') or p['max_tokens']:,} Brown tokens in chunks of {p['seq_len']}), beside "
            f"sink mass and dormancy from {src['survey']} (dormant: sink ≥ {cfgd['dormant_sink']} and |Δloss| below {cfgd['dormant_loss']} nats "
            f"by more than two standard errors under zero-ablation; {s.get('n_undecided', 0)} heads within two standard errors are "
            "undecided and counted in neither group).",
            "",
            "| heads | quantity | value |", "|---|---|---|",
            f"| all {s['n_heads']} | mean (function − content) BOS attention | {_f(s['mean_f_minus_c'])} |",
            f"| all | share of heads with function > content | {s['share_f_gt_c']:.0%} |",
            f"| {s['n_dormant']} dormant | mean (function − content) | {_f(s['dormant_mean_f_minus_c'])} "
            f"({_f(s['dormant_share_f_gt_c'], 2)} of them function > content) |",
            f"| {s['n_heads'] - s['n_dormant'] - s.get('n_undecided', 0)} active | mean (function − content) | {_f(s['other_mean_f_minus_c'])} |",
            f"| {s['n_sink_heads']} with sink mass ≥ 0.5 | mean (function − content) | {_f(s['sink_heads_mean_f_minus_c'])} |",
            f"| all | Spearman ρ(sink mass, function − content) | {_f(s['rho_sink_vs_f_minus_c'], 2)} |",
            f"| all | Spearman ρ(|Δloss|, function − content) | {_f(s['rho_absdl_vs_f_minus_c'], 2)} |",
            "",
            "Heads with the largest function-over-content BOS attention: " + "; ".join(
                f"L{int(r.layer)}H{int(r.head)} {r.sink_function:.3f} vs {r.sink_content:.3f} (sink {r.sink_mass:.3f}"
                f"{', dormant' if r.dormant else ''})" for r in top.itertuples()) + ".",
            "",
            _finding_a(s),
        ]

        smol = res.peaks
        found = src.get("bigram")
        t_b = res.bigram_layers if not res.bigram_layers.empty else None
        sb, bigram_model, how = res.layer_summary, (found or {}).get("model"), found or {}
        if t_b is not None:
            t_b.to_csv(out / "bigram_layers.csv", index=False)
        figures += write_figure(layer_figure(t_b, bigram_model, smol, p["model"]), out, "bigram_layers_vs_residual_peak")
        md += ["", "**(b) Bigram-subnetwork layers against the residual peak.** "
               f"On `{p['model']}`, the BOS/rest residual-norm ratio is {smol['embed_ratio']:.2f} at the embeddings and peaks at "
               f"{smol['peak_ratio']:.3g} after block {smol['peak_layer']}; the largest single jump ({smol['growth']:+.3g}) is made by "
               f"block {smol['growth_block']}."]
        if t_b is None:
            md += ["", "No bigram-subnetworks result is in the store for a model that can be loaded, so the layer comparison is "
                   "not made (`python -m experiments.bigram_subnetworks` stores one)."
                   + (f" ({how.get('error')})" if how.get("error") else "")]
        else:
            rec = how.get("recipe", {})
            md += ["", f"Bigram subnetworks were trained on `{bigram_model}` ({rec.get('n_layers', '?')} layers, d_model "
                   f"{rec.get('d_model', '?')}, {rec.get('steps', '?')} steps; {how['how']}; selected {how.get('selected')}, optimal "
                   f"{how.get('optimal')}). Residual norms on {p['resid_tokens']:,} Brown tokens of that model:", "",
                   "| block | share of the bigram subnetwork | share of the optimal subnetwork | BOS/rest ratio after it | growth |",
                   "|---|---|---|---|---|"]
            for r in t_b.itertuples():
                md.append(f"| {r.layer} | {_f(getattr(r, 'kept_share_bigram', None))} | {_f(getattr(r, 'kept_share_optimal', None))} | "
                          f"{r.resid_ratio_after:.2f} | {r.resid_ratio_growth:+.2f} |")
            grows = float(t_b["resid_ratio_growth"].max()) > 0
            where = (f"the BOS residual ratio grows most in block {sb['growth_layer']} (from {sb['embed_ratio']:.2f} at the "
                     f"embeddings to a peak of {sb['peak_ratio']:.2f} after block {sb['peak_layer']})" if grows else
                     f"no residual peak forms in this model: the BOS/rest ratio never grows (from {sb['embed_ratio']:.2f} at the "
                     f"embeddings to {float(t_b['resid_ratio_after'].iloc[-1]):.2f} after the last block), so there is no peak layer "
                     "to compare with")
            md += ["", f"The bigram subnetwork is densest in block {sb['bigram_layer']}; {where}; Spearman ρ over blocks between "
                   f"kept share and growth: {_f(sb['rho_share_vs_growth'], 2)} ({len(t_b)} blocks, so this is descriptive only). "
                   + (("They coincide." if sb["bigram_layer"] == sb["growth_layer"] else "They are different blocks.") if grows else "")]

        md += ["", "**(c) Key-space clusters of the tokens function-token features promote.**"]
        if src.get("saes"):
            t_c, sc = res.clusters, res.cluster_summary
            t_c.to_csv(out / "sae_feature_clusters.csv", index=False)
            if not t_c.empty:
                figures += write_figure(cluster_figure(t_c, sc["chance"], p["model"]), out, "promoted_token_clusters")
            md += [f"Features firing on ≥ {p['min_fires']} query positions of the slice, ≥ {p['purity']:.0%} of them on function (or "
                   f"content) tokens; their decoder direction through the final norm gain and W_U; the top {p['n_promoted']} tokens "
                   f"placed in the key-space k-means clustering of the unembedding ({sc['n_clusters']} clusters"
                   f"{', cached fit' if sc['cached_fit'] else ''}). Random sets of {p['n_promoted']} tokens put {sc['chance']:.2f} of "
                   "their tokens in their largest cluster.", "",
                   "| SAE | d_sae | fired | function features | their concentration | promoted tokens that are function tokens | "
                   "content features | their concentration | promoted function-token share |", "|---|---|---|---|---|---|---|---|---|"]
            for lb, v in sc["saes"].items():
                fv, cv = v.get("function", {}), v.get("content", {})
                md.append(f"| {lb} | {v['d_sae']} | {v['alive']} | {fv.get('n', 0)} | {_f(fv.get('mean_concentration'), 2)} | "
                          f"{_f(fv.get('mean_promoted_function_share'), 2)} | {cv.get('n', 0)} | {_f(cv.get('mean_concentration'), 2)} | "
                          f"{_f(cv.get('mean_promoted_function_share'), 2)} |")
            md += ["", _finding_c(t_c, sc)]
        else:
            md += ["No SAE for this model was found (train them with `python -m experiments.train_saes`), so this view is not made."
                   + (f" ({src['sae_error']})" if src.get("sae_error") else "")]
        md += ["", f"Cost: {timer_str(time.perf_counter() - timer.t0)} ({'the stored study reused' if outcome.reused else 'study run'} #{outcome.run_id}); "
               f"reproduce with `python -m experiments.cross_analysis{' --quick' if quick else f' --preset {preset}'}`."]
    section = ReportSection("Cross-analysis views", "\n".join(md), figures, timer.seconds)
    (out / "section.md").write_text(f"## {section.title}\n\n{section.markdown}\n")
    return section


def timer_str(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _finding_a(s: dict) -> str:
    d, o = s["dormant_mean_f_minus_c"], s["other_mean_f_minus_c"]
    if s["n_dormant"] == 0:
        return (f"Finding: no head is dormant at these thresholds on this slice; across all heads, function-token queries put "
                f"{_f(s['mean_f_minus_c'])} more attention on BOS than content-token queries on average.")
    more = "more" if d > 0 else "less"
    rel = "more than" if d > o else "less than"
    return (f"Finding: dormant heads put {abs(d):.3f} {more} attention on BOS from function-token queries than from content-token "
            f"queries ({rel} the other heads' {o:+.3f}); {s['dormant_share_f_gt_c']:.0%} of dormant heads park more on BOS for "
            "function tokens.")


def _finding_c(t: pd.DataFrame, sc: dict) -> str:
    if t.empty:
        return "Finding: no feature met the firing and purity thresholds on this slice."
    f = t[t["kind"] == "function"]["concentration"]
    c = t[t["kind"] == "content"]["concentration"]
    return (f"Finding: pooled over SAEs, function-token features' promoted tokens fall {_f(f.mean() if len(f) else float('nan'), 2)} "
            f"into one key cluster ({len(f)} features), content-token features' {_f(c.mean() if len(c) else float('nan'), 2)} "
            f"({len(c)} features), random sets {sc['chance']:.2f}.")


REPORT = register_report("cross_analysis", description="views that join two analyses (sinks by token kind, bigram heads, SAE features of heads)", presets=PRESETS, order=7)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="cpu", choices=sorted(k for k in PRESETS if k != "quick"))
    ap.add_argument("--out", default=str(DEFAULT_OUT / "cross_analysis"))
    a = ap.parse_args()
    publish_report("cross_analysis", Path(a.out), a.quick, a.preset)
