"""Linguistic collapse (Wu & Papyan 2024): train the zoo sweep on Brown, measure NC1-NC4 and
validation loss per model, correlate, run a pretrained model (the embedded SmolLM2 by default) on
Brown, and write figures and a report section with our numbers beside the paper's trends.

Settings (`PRESETS`): "grid" names the sweep grid (`probes.linguistic_collapse.sweep.GRIDS`), "model" the pretrained
model of the second part (raw weights; the hub presets of `experiments.presets` put theirs here) and
"pretrained" its token budget. The sweep always trains workbench models on Brown.

Usage: python -m experiments.linguistic_collapse [--quick] [--preset cpu|gpu] [--out DIR]
       python -m experiments.linguistic_collapse --sweep-run ID --smollm2-run ID   (report stored runs as they are)
"""

from __future__ import annotations

from typing import Any

import argparse
import math
import re
from pathlib import Path

import pandas as pd
from scipy.stats import t as student_t

from dashboards.figures import linguistic_collapse as figs
from experiments.presets import declare
from experiments.reporting import report as register_report
from experiments.run_all import publish_report
from experiments.common import DEFAULT_OUT, ReportSection, Timer, hardware, write_figure
from probes.linguistic_collapse import (
    EXPECTED_SIGN,
    GRIDS,
    METRICS,
    LinguisticCollapseResult,
    SweepConfig,
    correlations,
    etf_error_floor,
    load_sweep,
    run_sweep,
)
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.runner import result_of_run, run_probe
from workbench.store import ResultStore
from workbench.zoo import train_batches

# SmolLM2's forward is ~300 tokens/s on 2 free cores (far less on a shared machine): 40k + 10k tokens.
SMOL_CONFIG = {"max_tokens": 40_000, "heldout_max_tokens": 10_000, "batch_size": 8, "seq_len": 128}
SMOL_QUICK = {"max_tokens": 2_000, "heldout_max_tokens": 1_000, "batch_size": 4, "seq_len": 64}

# The paper's headline, as the report's summary table states it beside ours.
PAPER_HEADLINE = (
    'Neural-collapse properties (NC1 CDNV, NC2, NC3, NC4) correlate with validation loss, partly '
    'independently of scale (about 230 TinyStories models)'
)

# grid: key of GRIDS (the sweep); model: the pretrained model's workbench / TransformerLens name;
# pretrained: its linguistic-collapse probe budget
PRESETS: dict[str, Any] = declare("linguistic_collapse", {
    "cpu": {"grid": "cpu", "model": "smollm2-135m", "pretrained": SMOL_CONFIG},
    "gpu": {"grid": "gpu", "model": "smollm2-135m", "pretrained": SMOL_CONFIG},
    "quick": {"grid": "quick", "model": "smollm2-135m", "pretrained": SMOL_QUICK},
})
MODEL_LABELS = {"smollm2-135m": "SmolLM2-135M"}


def model_label(model_id) -> str:
    """How the report names the pretrained model."""
    return MODEL_LABELS.get(str(model_id), str(model_id))


def figure_tag(model_id) -> str:
    """File-name prefix of the pretrained model's figures ("smollm2" for the embedded model)."""
    return "smollm2" if str(model_id) == "smollm2-135m" else re.sub(r"[^A-Za-z0-9]+", "_", str(model_id)).strip("_").lower()

# The paper's public 12x1024 TinyStories model (10 epochs) and its 1x64 model (method note).
PAPER = {
    "12x1024 (10 ep.)": {"val_loss": 1.100, "nc1_cdnv": 1.77e-4, "nc2_equinorm_cov": 0.0605, "nc3_duality_mean": 0.308,
                          "nc3_duality_std": 0.222, "nc4_mismatch": 0.632},
    "1x64": {"nc1_cdnv": 0.211, "nc2_equinorm_cov": 0.133, "nc4_mismatch": 0.966},
}
SHOWN = ["heldout_loss", "n_classes", "nc1_cdnv", "nc2_equinorm_cov", "nc2_cos_mean", "nc2_cos_std", "nc2_etf_error",
         "gnc2_uniformity", "nc3_duality_mean", "nc3_duality_std", "unc3_cov", "nc3_dual_error", "nc4_mismatch",
         "nc4_mismatch_kept", "nc4_class_avg_mismatch"]


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (int,)) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    return f"{v:.4g}"


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(_fmt(r[c]) if not isinstance(r[c], str) else r[c] for c in cols) + " |")
    return "\n".join(lines)


def _correlation_md(corr: pd.DataFrame) -> str:
    rows = []
    for _, r in corr.iterrows():
        sign = EXPECTED_SIGN.get(r["metric"], 0)
        rho = r["rho_loss"]
        verdict = "–" if math.isnan(rho) else ("agrees" if rho * sign > 0 else "opposite")
        if not math.isnan(rho) and r["p_loss"] > 0.05:
            verdict += " (n.s.)"
        pr = r.get("partial_rho_loss", math.nan)
        partial = "–" if pr is None or math.isnan(pr) else f"{pr:+.2f} [{r['partial_lo']:+.2f}, {r['partial_hi']:+.2f}], p {r['partial_p']:.2g}"
        rows.append({"metric": figs.metric_label(r["metric"]), "paper's trend vs loss": "+" if sign > 0 else "−",
                     "ρ(val loss)": rho, "p": r["p_loss"], "ρ(params)": r["rho_params"], "p ": r["p_params"],
                     "partial ρ(val loss | size) [95% CI]": partial, "verdict": verdict})
    return _md_table(pd.DataFrame(rows))


def _smol_md(metrics: dict, label: str = "SmolLM2") -> str:
    keys = ["val_loss" if k == "heldout_loss" else k for k in SHOWN]
    rows = []
    for k, ours_key in zip(keys, SHOWN):
        rows.append({"metric": k, f"{label} on Brown (ours)": metrics.get(ours_key),
                     "paper 12x1024": PAPER["12x1024 (10 ep.)"].get(k), "paper 1x64": PAPER["1x64"].get(k)})
    return _md_table(pd.DataFrame(rows))


HEADLINE = ["nc1_cdnv", "nc2_equinorm_cov", "gnc2_uniformity", "nc3_duality_mean", "nc4_mismatch"]


def _budget_correlations_md(table: pd.DataFrame) -> str:
    """Spearman correlations inside each step budget (size varies, training length fixed)."""
    rows = []
    for steps, sub in table.groupby("steps"):
        for _, r in correlations(sub, HEADLINE).iterrows():
            rows.append({"steps": f"{int(steps)}", "n": f"{len(sub)}", "metric": figs.metric_label(r["metric"]),
                         "paper's trend vs loss": "+" if EXPECTED_SIGN[r["metric"]] > 0 else "−",
                         "ρ(val loss)": r["rho_loss"], "p": r["p_loss"], "ρ(params)": r["rho_params"], "p ": r["p_params"]})
    return _md_table(pd.DataFrame(rows))


def _minutes(seconds) -> str:
    return "–" if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)) else f"{seconds / 60:.1f} min"


def _critical_rho(n: int) -> float:
    """|rho| above which a rank correlation of n points has p < 0.05 (t approximation, as scipy's p-values)."""
    if n < 4:
        return math.nan
    t = student_t.ppf(0.975, n - 2)
    return float(t / math.sqrt(n - 2 + t * t))


def _findings(sweep) -> str:
    """Which headline metrics follow the paper's trend, pooled and inside the longest step budget."""
    corr = sweep.correlations.set_index("metric")
    longest = int(sweep.table["steps"].max())
    lc = correlations(sweep.table[sweep.table["steps"] == longest], HEADLINE).set_index("metric")

    def part(metrics, table):
        return ", ".join(f"{figs.metric_label(k)} ρ = {table.loc[k, 'rho_loss']:+.2f} (p = {table.loc[k, 'p_loss']:.2g})" for k in metrics)

    paper = ["nc1_cdnv", "nc2_equinorm_cov", "nc4_mismatch"]
    against = [k for k in METRICS if k in corr.index and corr.loc[k, "rho_loss"] * EXPECTED_SIGN[k] < 0]
    size = ", ".join(f"{figs.metric_label(k)} {lc.loc[k, 'rho_params']:+.2f}" for k in paper)
    text = (f"Pooled over the sweep, with validation loss: {part(paper, corr)}; the paper expects all three positive. "
            f"Inside the {longest}-step budget: {part(paper, lc)}, and with parameter count {size} "
            f"(the paper's direction is negative). ")
    if against:
        text += f"Against the paper's direction (pooled): {part(against, corr)}."
    return text


def lc_verdict(corr: pd.DataFrame) -> str:
    """The section's verdict on the paper's "collapse tracks generalisation independent of scale":
    for each headline metric, the partial Spearman correlation with validation loss holding
    parameters and steps fixed, and whether its 95% interval lies on the paper's side of zero, on
    the other side, or spans it."""
    corr = corr.set_index("metric")
    if "partial_rho_loss" not in corr or corr["partial_rho_loss"].isna().all():
        return "**Verdict: not testable here**: the sweep has one model per size (no partial correlation)."
    parts, words = [], []
    for k in HEADLINE:
        if k not in corr.index or pd.isna(corr.loc[k, "partial_rho_loss"]):
            continue
        r, lo, hi = (float(corr.loc[k, c]) for c in ("partial_rho_loss", "partial_lo", "partial_hi"))
        sign = EXPECTED_SIGN[k]
        w = "agrees" if min(lo * sign, hi * sign) > 0 else "opposite" if max(lo * sign, hi * sign) < 0 else "inconclusive"
        words.append(w)
        parts.append(f"{figs.metric_label(k)} {r:+.2f} [{lo:+.2f}, {hi:+.2f}] ({w})")
    word = ("reproduced" if set(words) == {"agrees"} else "contradicted" if set(words) == {"opposite"} else
            "inconclusive" if set(words) == {"inconclusive"} else "partly reproduced" if "agrees" in words else "mixed")
    return (f"**Verdict: {word}** (collapse tracks validation loss at fixed size). Partial Spearman ρ with validation loss, "
            "parameters and steps held fixed, 95% CI, against the paper's direction: " + "; ".join(parts) + ".")


def _computed_run(store: ResultStore, run_id: int) -> str:
    """'#N' for a run that computed its result, '#N (reused as #M)' for a reuse of run N."""
    row = store.get_run(int(run_id)) or {}
    if row.get("status") != "reused":
        return f"#{run_id}"
    done = [r["run_id"] for r in store.runs(limit=100_000, probe=row["probe"]) if r["key"] == row["key"] and r["status"] == "done"]
    return f"#{max(done)} (reused as #{run_id})" if done else f"#{run_id}"


def _stored_smollm2(store: ResultStore, run_id: int) -> tuple[LinguisticCollapseResult, dict]:
    """A finished linguistic-collapse run's result, through the store (verified against its manifest
    and its key; a corrupt one is quarantined), and its registry row."""
    result = result_of_run(run_id, store, expect="linguistic-collapse")
    return result, store.get_run(run_id)


def run(out: Path, quick: bool = False, preset: str = "cpu", sweep_run: int | None = None,
        smollm2_run: int | None = None, device: str | None = None) -> ReportSection:
    """Run (or reuse) the sweep and the pretrained model's probe (SmolLM2 under the cpu/gpu presets);
    with run ids, report those stored runs as they are."""
    out = Path(out)
    name = "quick" if quick else preset
    if name not in PRESETS:
        raise SystemExit(f"unknown linguistic-collapse preset {preset!r}; known: {sorted(PRESETS)}")
    settings = PRESETS[name]
    grid = GRIDS[settings["grid"]]
    store = ResultStore()
    stored_note = []
    with Timer() as t_sweep:
        if sweep_run is None:
            sweep, sweep_run = run_sweep(grid, store=store, device=device)
        else:
            sweep = load_sweep(store, sweep_run)
            grid = SweepConfig(**sweep.meta["config"])
            stored_note.append(f"sweep #{sweep_run} (code version {sweep.meta.get('code_version')})")
    sweep_row = store.get_run(sweep_run) or {}
    sweep_reused = sweep_row.get("status") == "reused" or bool(stored_note)
    corpus = load_corpus("brown")
    with Timer() as t_smol:
        if smollm2_run is None:
            smol = load_model(settings["model"], numerics="raw", device=device)
            outcome = run_probe("linguistic-collapse", smol, corpus, settings["pretrained"])
            res, smol_run_id, smol_reused = outcome.result, outcome.run_id, outcome.reused
        else:
            res, _ = _stored_smollm2(store, smollm2_run)
            smol_run_id, smol_reused = smollm2_run, True
    lm = model_label(res.meta.get("model", {}).get("id") or settings["model"])
    if smollm2_run is not None:
        stored_note.append(f"{lm} #{smollm2_run} (code version {res.meta.get('code_version')})")

    files: list[str] = []
    files += write_figure(figs.scaling_grid(sweep.table, ["nc1_cdnv", "nc2_equinorm_cov", "gnc2_uniformity", "nc3_duality_mean",
                                                           "nc4_mismatch"]), out, "sweep_metrics")
    files += write_figure(figs.correlation_figure(sweep.correlations), out, "sweep_correlations")
    largest = sweep.table.sort_values(["n_params", "steps"]).iloc[-1]
    tag = figure_tag(res.meta.get("model", {}).get("id") or settings["model"])
    files += write_figure(figs.cosine_heatmap(res), out, f"{tag}_cosines")
    files += write_figure(figs.projection_figure(res), out, f"{tag}_projection")
    files += write_figure(figs.sensitivity_figure(res), out, f"{tag}_min_count")

    table = sweep.table[["n_layers", "d_model", "steps", "n_params", "train_loss", "val_loss", "n_classes", *METRICS]].copy()
    table = table.sort_values(["steps", "n_layers", "d_model"])
    m = res.metrics
    cfg = grid
    n = len(sweep.table)
    r_crit = _critical_rho(n)
    epoch = train_batches(cfg.recipes()[0], "train").n_positions
    max_tokens = max(cfg.steps) * cfg.batch_size * cfg.n_ctx
    sweep_compute = sweep.meta.get("wall_s") or (t_sweep.seconds if not sweep_reused else
                                                 sweep_row.get("wall_s") if sweep_row.get("status") == "done" else None)
    probe_s = float(sweep.table["probe_s"].sum()) if "probe_s" in sweep.table else None
    sweep_time = (f"sweep {_minutes(sweep_compute)} wall when computed"
                  + (f" (probe passes {_minutes(probe_s)}; training, or loading cached zoo models, "
                     f"{_minutes(max(0.0, sweep_compute - probe_s))})" if probe_s and sweep_compute else "")
                  + (f"; reused from the store in this run ({t_sweep.seconds:.0f} s)" if sweep_reused else ""))
    smol_time = f"{lm} {_minutes(res.meta.get('wall_s'))} wall when computed" + (
        f"; reused from the store in this run ({t_smol.seconds:.0f} s)" if smol_reused else "")
    if stored_note:
        smol_time += ". Reported from stored runs as they were computed: " + ", ".join(stored_note)
    sens = res.sensitivity.set_index("min_count")
    top_m = int(sens.index.max())
    floor_zoo = etf_error_floor(int(sweep.table["n_classes"].median()), max(cfg.widths))
    floor_smol = etf_error_floor(int(m["n_classes"]), int(m["d_model"]))
    md = f"""
{lc_verdict(sweep.correlations)}

**Claim.** As causal LMs grow and train longer, their top-layer features (next tokens as classes) move toward
neural collapse, and the NC properties track validation loss. The paper (about 230 GPT-Neo models on TinyStories)
finds CDNV (NC1), equinorm CoV (NC2), hyperspherical uniformity (GNC2) and NCC mismatch (NC4) falling, and
self-duality (NC3) rising, as validation loss falls.

**Setting.** {len(sweep.table)} models from `workbench.zoo` trained on Brown's train split (BPE 4096, context {cfg.n_ctx},
batch {cfg.batch_size}, lr {cfg.lr}, cosine schedule, seeds {cfg.seeds}): depth {cfg.depths} x width {cfg.widths} x
steps {cfg.steps} (each budget its own run). For each: class statistics over {cfg.probe.get('max_tokens'):,} train-split
tokens, NC4 and validation loss over {cfg.probe.get('heldout_max_tokens'):,} validation-split tokens (min_count
{m.get('min_count', 1)}: classes seen once have zero variance by construction and are left out; the paper keeps every
seen class, but its TinyStories classes all have many samples). {lm} (raw numerics) over {m['n_tokens']:,} Brown train-split positions and
{m['heldout_positions']:,} validation positions. Hardware: {hardware()}. Time: {sweep_time}; {smol_time}.
Sweep run {_computed_run(store, sweep_run)}, {lm} run {_computed_run(store, smol_run_id)}. Features are `ln_final.hook_normalized` with the final norm's gain (the unembedding's input); metric
formulas follow the paper's final `analyze.py` (CDNV with distance^4); see `probes/_nc_metrics.py`.

**Rank correlations over the sweep** (Spearman, n = {len(sweep.table)}; "agrees" = sign of the paper's trend; the
partial correlation holds parameters and training steps fixed, so with several seeds per size it tests the paper's
"correlates with generalisation independent of scale"):

{_correlation_md(sweep.correlations)}

**Findings.** {_findings(sweep)}

**Inside each step budget** (model size varies, training length fixed; n = {len(sweep.table) // len(cfg.steps)} per
budget, |ρ| > {_critical_rho(len(sweep.table) // len(cfg.steps)):.2f} for p < 0.05). Pooling the budgets mixes two effects:
training length moves every metric far more than size does.

{_budget_correlations_md(sweep.table)}

**Sweep models.**

{_md_table(table)}

**{lm} on Brown, beside the paper's TinyStories models** (different corpus and tokenizer: compare directions and
magnitudes, not values). Classes kept: {m['n_classes']:,} of {m['n_classes_seen']:,} seen.

{_smol_md(m, lm)}

Largest sweep model: {largest['name']} (val loss {largest['val_loss']:.3f}, CDNV {largest['nc1_cdnv']:.4g},
NC4 {largest['nc4_mismatch']:.3f}).

**Caveats.** Our models are tiny and briefly trained (at most {max_tokens:,} training tokens, {max_tokens / epoch:.2f}
epochs of Brown's train split), far from the paper's regime, so absolute values are far from collapse; with
n = {n} models a correlation needs |ρ| > {r_crit:.2f} to reach p < 0.05 (two-sided). Statistics use a slice of the train
split, not the whole of it. NCC uses only classes seen in the slice; the linear decision is the model's own argmax
(unembedding bias included). NC4 near 1 is partly the rarest classes: with min_count {top_m}
({int(sens.loc[top_m, 'n_classes']):,} classes, {sens.loc[top_m, 'coverage']:.0%} of positions) {lm}'s NC4 is
{sens.loc[top_m, 'nc4_mismatch']:.3f} and its CDNV {sens.loc[top_m, 'nc1_cdnv']:.3g} (the last figure has every threshold).
The ETF and dual errors cannot approach 0 when K − 1 > d: their floor is sqrt(2 − 2 sqrt(d/(K−1))), about
{floor_zoo:.2f} for the widest sweep models (K ≈ {int(sweep.table['n_classes'].median()):,}, d = {max(cfg.widths)}) and {floor_smol:.2f} for {lm}
(K = {int(m['n_classes']):,}, d = {int(m['d_model'])}), against a value of about 1.41 for means with no ETF structure; read
them against that floor.
"""
    return ReportSection(title="Linguistic collapse (NC1–NC4) and a model-size sweep", markdown=md, figures=files,
                         wall_s=t_sweep.seconds + t_smol.seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke settings: a two-model grid and a tiny SmolLM2 slice")
    p.add_argument("--preset", default="cpu", choices=["cpu", "gpu"], help="settings (PRESETS): cpu (default) or the larger gpu grid")
    p.add_argument("--out", default=str(DEFAULT_OUT / "linguistic_collapse"))
    p.add_argument("--sweep-run", type=int, help="report this stored sweep run (registry id) instead of running the grid")
    p.add_argument("--smollm2-run", type=int, help="report this stored linguistic-collapse run of the pretrained model (registry id)")
    args = p.parse_args()
    if args.sweep_run is None and args.smollm2_run is None:
        publish_report("linguistic_collapse", Path(args.out), args.quick, args.preset)
    else:  # a section of chosen stored runs: printed and saved beside its figures, not a stored report
        section = run(Path(args.out), quick=args.quick, preset=args.preset, sweep_run=args.sweep_run, smollm2_run=args.smollm2_run)
        section.publish(Path(args.out), "quick" if args.quick else args.preset)


REPORT = register_report("linguistic_collapse", description="linguistic collapse (NC1-NC4) in a model-size sweep and in the pretrained model", presets=PRESETS, order=4)


if __name__ == "__main__":
    main()
