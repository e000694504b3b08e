"""Function tokens and SAE features (arXiv 2510.08203) on Brown, with the embedded SmolLM2 by default:

1. the SAEs: the workbench's own TopK SAEs at layers 5 / 15 / 25 (`experiments.train_saes`, cached),
   or, when the settings name SAE Lens releases ("saes": "release:sae_id" entries), those pretrained
   SAEs, loaded through `workbench.saes` and scored on Brown's validation split instead of trained;
2. the function-token set (40% mass) and its closed-class overlap; the token-feature bipartite
   graph over a Brown slice: degree against rank, coverage of the top-k tokens (k = 1..10 beside
   the paper's Table 1, both denominators), top-10 function tokens against top-10 content tokens;
3. the loss decomposition F->F, F->C, C->F, C->C for SmolLM2, and over the checkpoints of a small
   LM the workbench trains on Brown (`workbench.zoo`);
4. the case study and steering at the last function token, with the content-token control.

Presets: "cpu" (SAEs from one pass over 49,152 tokens, 393,216 samples each; a 24,576-token
graph slice; measured on 2 shared cores: about 15 minutes for the SAEs, 15 for this script, of which 9.5 train
the 1500-step Brown LM for the over-training curves and are cached for reruns), "gpu" (4M-token
SAEs, 1M-token slice). `quick` runs the whole pipeline on the tiny random model with seconds-long SAEs (a smoke
test; its numbers mean nothing). Everything goes through the store and caches, so a rerun reuses it.
The hub presets of `experiments.presets` replace "model", "layers", "steer_layer" and "saes" of the
"gpu" entry: GPT-2 small and Pythia-70M use their SAE Lens residual releases, Pythia-160M (no
release) trains its SAEs with the "gpu" recipe.

Usage: python -m experiments.function_tokens [--quick] [--preset cpu|gpu] [--out DIR]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pandas as pd

from dashboards.figures import function_tokens as figs
from dashboards.figures.function_tokens import coverage_rows, show_token
from experiments.presets import declare
from experiments.reporting import report as register_report
from experiments.run_all import publish_report
from experiments.common import DEFAULT_OUT, ReportSection, Timer, hardware, write_figure
from experiments.train_saes import quality_table
from probes.function_tokens import (
    FunctionTokenLossConfig,
    FunctionTokensConfig,
    FunctionTokenSteeringConfig,
    export_graph,
    loss_over_checkpoints,
)
from workbench import hooks
from workbench.config import StreamConfig
from workbench.corpora import load_corpus
from workbench.models import default_device, load_model
from workbench.runner import run_probe
from workbench.saes import (
    check_fits,
    evaluate_sae,
    load_sae,
    preset_spec,
    read_recipe,
    train_saes,
)
from workbench.stats import mean_ci
from workbench.store import ResultStore
from workbench.zoo import LMRecipe

# The paper's headline, as the report's summary table states it beside ours.
PAPER_HEADLINE = (
    'The top-10 function tokens reach 48.5 / 76.5 / 68.3% of the SAE features (Gemma-2-9B, layers 9 / 20 '
    '/ 31); content tokens after function tokens (F->C) carry the most loss; a feature added at the last '
    'function token steers the continuation'
)

# saes: SAE Lens "release:sae_id" sources, one per layer of `layers` (empty: train the workbench's own
# SAEs at `layers` with the `sae_preset` recipe)
PRESETS: dict[str, Any] = declare("function_tokens", {
    "cpu": dict(model="smollm2-135m", layers=(5, 15, 25), saes=(), sae_preset="cpu", sae_overrides={}, graph_tokens=24_576,
                loss_tokens=12_288, zoo=dict(), zoo_tokens=8192, steer_layer=15),
    "gpu": dict(model="smollm2-135m", layers=(5, 15, 25), saes=(), sae_preset="gpu", sae_overrides={}, graph_tokens=1_000_000,
                loss_tokens=300_000, zoo=dict(), zoo_tokens=200_000, steer_layer=15),
    "quick": dict(model="tiny", layers=(0, 1), saes=(), sae_preset="cpu",
                  sae_overrides=dict(expansion=2, k=4, training_tokens=1024, activation_tokens=512, train_batch_tokens=128, context_size=32,
                                     store_batch_prompts=4, n_batches_in_buffer=8, n_batches_for_norm_estimate=2, eval_tokens=256,
                                     dead_feature_window=4, lr_warm_up_steps=2),
                  graph_tokens=2048, loss_tokens=1024, zoo=dict(n_layers=1, d_model=32, steps=40, batch_size=4, n_ctx=64, n_checkpoints=4,
                                                                warmup_steps=5), zoo_tokens=1024, steer_layer=1),
})


def _train_saes(model, corpus, p: dict) -> dict[int, Path]:

    specs = [preset_spec(hooks.resid_post(layer), p["sae_preset"], **p["sae_overrides"]) for layer in p["layers"]]
    return dict(zip(p["layers"], train_saes(model, corpus, specs)))


def pretrained_sources(p: dict) -> dict[int, str]:
    """layer -> "release:sae_id" for the settings' SAE Lens SAEs; they must cover exactly `layers`."""
    by_layer: dict[int, str] = {}
    for src in p["saes"]:
        release, sep, sae_id = str(src).partition(":")
        m = re.match(r"^blocks\.(\d+)\.", sae_id)
        if not sep or not release or not m:
            raise SystemExit(f"function_tokens: SAE {src!r} is not an SAE Lens 'release:blocks.L.<hook>' id")
        if int(m.group(1)) in by_layer:
            raise SystemExit(f"function_tokens: two SAEs for layer {m.group(1)}: {by_layer[int(m.group(1))]!r} and {src!r}")
        by_layer[int(m.group(1))] = str(src)
    if sorted(by_layer) != sorted(p["layers"]):
        raise SystemExit(f"function_tokens: the SAEs {list(p['saes'])} are for layers {sorted(by_layer)}, the settings' layers "
                         f"are {list(p['layers'])}")
    if p["steer_layer"] not in by_layer:
        raise SystemExit(f"function_tokens: steer_layer {p['steer_layer']} has no SAE (layers {sorted(by_layer)})")
    return dict(sorted(by_layer.items()))


def pretrained_quality(model, corpus, sources: dict[int, str], max_tokens: int, seq_len: int = 128) -> dict[int, dict]:
    """Load each pretrained SAE through `workbench.saes` (release by id, or its Hugging Face cache),
    check it fits the model, and score it on Brown's validation split (nothing is trained)."""

    rows = {}
    for layer, src in sources.items():
        sae = load_sae(src, model=model)  # on the model's device
        check_fits(sae, model)
        q = evaluate_sae(model, sae, corpus, StreamConfig(split="validation", max_tokens=max_tokens, seq_len=seq_len, batch_size=8))
        rows[layer] = {"source": src, "architecture": sae.cfg.architecture(), "d_sae": sae.cfg.d_sae, "quality": q.to_dict()}
        del sae
    return rows


def pretrained_quality_table(rows: dict[int, dict]) -> str:
    lines = ["| layer | SAE (release:id) | architecture | d_sae | eval tokens | explained var. | L0 | dead share | CE clean | "
             "CE spliced | CE increase | CE recovered |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for layer, r in sorted(rows.items()):
        q = r["quality"]
        lines.append(f"| {layer} | `{r['source']}` | {r['architecture']} | {r['d_sae']:,} | {q['n_tokens']:,} | {q['explained_variance']:.3f} | "
                     f"{q['l0']:.1f} | {q['dead_share']:.3f} | {q['ce_clean']:.3f} | {q['ce_spliced']:.3f} | {q['ce_increase']:.3f} | "
                     f"{q['ce_loss_recovered']:.3f} |")
    return "\n".join(lines)


def _train_budget(recipe: dict) -> str:
    """How much Brown an SAE saw, in words."""
    spec, distinct = recipe["spec"], recipe.get("distinct_train_tokens")
    if distinct:
        return f"{spec['training_tokens']:,} samples drawn in shuffled passes over the activations of {distinct:,} Brown tokens"
    return f"{spec['training_tokens']:,} Brown tokens each"


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", "⏎")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def coverage_markdown(result) -> str:
    """k = 1..10 per SAE (both denominators) next to the paper's Table 1."""

    t = coverage_rows(result)
    labels = result.labels
    head = ["k", "token"] + [f"{lb} active" for lb in labels] + [f"{lb} all" for lb in labels] + ["paper token", "paper L9", "paper L20", "paper L31"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in t.iterrows():
        cells = [str(int(r["k"])), f"`{_cell(r['token'])}`"] + [f"{r[f'{lb} (active)']:.2f}" for lb in labels] + [f"{r[f'{lb} (all)']:.2f}" for lb in labels]
        paper = ["" if pd.isna(r["paper token"]) else f"`{r['paper token']}`"] + ["" if pd.isna(r[c]) else f"{r[c]:.2f}" for c in ("paper L9", "paper L20", "paper L31")]
        lines.append("| " + " | ".join(cells + paper) + " |")
    return "\n".join(lines)


def comparison_markdown(result) -> str:

    lines = ["| SAE | active / all features | top-1 | top-10 function tokens | top-10 content tokens | their share of occurrences (F / C) |",
             "|---|---|---|---|---|---|"]
    for lb in result.labels:
        c = result.comparison[lb]
        lines.append(f"| {lb} | {c['n_active']} / {c['d_sae']} | {_pct(c['top1_active'])}% | {_pct(c['function_active'])}% "
                     f"({_pct(c['function_all'])}% of all) | {_pct(c['content_active'])}% ({_pct(c['content_all'])}% of all) | "
                     f"{_pct(c['function_count_share'])}% / {_pct(c['content_count_share'])}% |")
    first = result.comparison[result.labels[0]]
    lines.append("")
    lines.append("Top-10 function tokens: " + ", ".join(f"`{show_token(s)}`" for s in first["function_tokens"])
                 + "; top-10 content tokens: " + ", ".join(f"`{show_token(s)}`" for s in first["content_tokens"]) + ".")
    return "\n".join(lines)


def loss_markdown(table: pd.DataFrame) -> str:
    lines = ["| group | predictions | share of predictions | mean CE ± s.e. | share of loss |", "|---|---|---|---|---|"]
    for _, r in table.iterrows():
        se = f" ± {r['ce_se']:.3f}" if "ce_se" in r and pd.notna(r["ce_se"]) else ""
        lines.append(f"| {r['group']} | {int(r['n'])} | {_pct(r['count_share'])}% | {r['mean_ce']:.3f}{se} | {_pct(r['loss_share'])}% |")
    return "\n".join(lines)


def steering_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Per strength: the mean change of the target's log-probability over pairs with a bootstrap
    interval, at B's final function token and at its content word, and their paired difference.
    Pairs that steer towards the same word A (one per template) share its feature and target, so
    the bootstrap resamples words A with all their pairs, not single pairs."""
    rows = []
    for strength, d in effects.groupby("strength"):
        f = d[d["position"] == "function"].set_index("pair")
        c = d[d["position"] == "content"].set_index("pair").loc[f.index]
        words = f["word_a"].to_numpy()
        fn, ct = mean_ci(f["delta_logp"].to_numpy(), clusters=words), mean_ci(c["delta_logp"].to_numpy(), clusters=words)
        diff = mean_ci((f["delta_logp"] - c["delta_logp"]).to_numpy(), clusters=words)
        rows.append({"strength": float(strength), "pairs": len(f), "function": fn, "content": ct, "difference": diff,
                     "top_function": float(f["target_top"].mean()), "top_content": float(c["target_top"].mean()),
                     "top_before": float(f["target_is_b_top"].mean())})
    return pd.DataFrame(rows)


def steering_markdown(effects: pd.DataFrame) -> str:
    lines = ["| strength | pairs | Δ log p(target), at the function token | at the content word | function − content | "
             "target becomes top-1 (function / content; before) |", "|---|---|---|---|---|---|"]
    for r in steering_summary(effects).itertuples():
        lines.append(f"| {r.strength:g} | {r.pairs} | {r.function.value:+.3f} [{r.function.lo:+.3f}, {r.function.hi:+.3f}] | "
                     f"{r.content.value:+.3f} [{r.content.lo:+.3f}, {r.content.hi:+.3f}] | "
                     f"{r.difference.value:+.3f} [{r.difference.lo:+.3f}, {r.difference.hi:+.3f}] | "
                     f"{r.top_function:.0%} / {r.top_content:.0%}; {r.top_before:.0%} |")
    return "\n".join(lines)


def template_means(effects: pd.DataFrame, strength: float) -> pd.DataFrame:
    """Per template (in sweep order) at one strength: pairs, and the mean change at the function
    token and at the content word (columns "pairs", "function", "content")."""
    d = effects[effects["strength"] == strength]
    means = d.pivot_table(index="template", columns="position", values="delta_logp", aggfunc="mean", sort=False)
    pairs = d[d["position"] == "function"].groupby("template", sort=False).size()
    return means.assign(pairs=pairs)[["pairs", "function", "content"]]


def steering_by_template(effects: pd.DataFrame) -> str:
    """Each template's mean change at the middle strength of the grid: the spread the word-resampling
    interval holds fixed (it generalises over words for these templates, not over templates)."""
    strengths = sorted(effects["strength"].unique())
    mid = strengths[len(strengths) // 2]
    lines = [f"| template (strength {mid:g}) | pairs | mean Δ log p at the function token | at the content word |", "|---|---|---|---|"]
    for template, r in template_means(effects, mid).iterrows():
        lines.append(f"| `{_cell(template)}` | {int(r['pairs'])} | {r['function']:+.3f} | {r['content']:+.3f} |")
    return "\n".join(lines)


def function_tokens_verdict(res, loss_table: pd.DataFrame, effects: pd.DataFrame) -> str:
    """The section's verdict on the paper's three claims: a few function tokens reach most of the
    features (top-10 function against top-10 content tokens, per SAE); F->C is the costliest
    prediction group; steering with a content feature at the last function token moves the output
    towards that content (the largest strength's mean change with its interval, and against the
    same addition at the content word; reproduced only when the rise also holds in most templates)."""
    cmp_ = [res.comparison[lb] for lb in res.labels]
    fa, ca = [c["function_active"] for c in cmp_], [c["content_active"] for c in cmp_]
    cover_ok = all(f > c for f, c in zip(fa, ca)) and min(fa) > 0.5
    part1 = (f"coverage {'reproduced' if cover_ok else 'not reproduced'}: the top-10 function tokens reach "
             f"{_pct(min(fa))}–{_pct(max(fa))}% of the active features over the {len(fa)} SAEs, the top-10 content tokens "
             f"{_pct(min(ca))}–{_pct(max(ca))}%")
    t = loss_table.set_index("group")
    worst = str(t["mean_ce"].idxmax())
    others = t.drop(index=worst)
    gap_se = [(t.loc[worst, "mean_ce"] - r.mean_ce) / max((t.loc[worst, "ce_se"] ** 2 + r.ce_se ** 2) ** 0.5, 1e-12)
              for r in others.itertuples()] if "ce_se" in t else [float("inf")]
    loss_ok = worst == "F->C" and min(gap_se) > 2
    part2 = (f"loss decomposition {'reproduced' if loss_ok else 'not reproduced' if worst != 'F->C' else 'inconclusive'}"
             f": the costliest group is {worst} ({t.loc[worst, 'mean_ce']:.3f} nats"
             + (f", at least {min(gap_se):.1f} standard errors above the next" if "ce_se" in t else "") + "; the paper: F->C)")
    met = [cover_ok, loss_ok]
    if effects.empty:
        part3 = "steering not run"
    else:
        summary = steering_summary(effects)
        up = summary[[r.function.lo > 0 for r in summary.itertuples()]]
        best = max((up if not up.empty else summary).itertuples(), key=lambda r: r.function.value)
        beats = [r.strength for r in summary.itertuples() if r.difference.lo > 0]
        per_template = template_means(effects, best.strength)["function"]
        n_up, n_templates = int((per_template > 0).sum()), len(per_template)
        ok = not up.empty and 2 * n_up > n_templates  # above zero over pairs, and in most templates, not a few
        lead = ("steering at the function token " + ("reproduced" if ok else "inconclusive") + ": the target's log-probability "
                "rises at strength " + ", ".join(f"{x:g}" for x in up["strength"]) + " (interval above zero)"
                + ("" if ok else f", but in only {n_up} of {n_templates} templates")) if not up.empty else \
               ("steering at the function token not reproduced: at no strength is the rise in the target's log-probability "
                "above zero")
        part3 = (lead + f"; the largest mean change, {best.function.value:+.3f} [{best.function.lo:+.3f}, {best.function.hi:+.3f}] over "
                 f"{best.pairs} pairs (words resampled, templates fixed), is at strength {best.strength:g}, where the same addition "
                 f"at the content word gives {best.content.value:+.3f} [{best.content.lo:+.3f}, {best.content.hi:+.3f}]; the function "
                 "token beats the content word at " + (("strength " + ", ".join(f"{x:g}" for x in beats)) if beats else "no strength")
                 + (f"; at strength {best.strength:g} the mean rises in {n_up} of {n_templates} templates" if ok else ""))
        met.append(ok)
    word = "reproduced" if all(met) else "partly reproduced" if any(met) else "not reproduced"
    return f"**Verdict: {word}**. " + "; ".join([part1, part2, part3]) + "."


def training_markdown(df: pd.DataFrame) -> str:
    steps = sorted(df["step"].unique())
    lines = ["| step | " + " | ".join(f"{g} CE (loss share)" for g in ("F->F", "F->C", "C->F", "C->C")) + " |", "|---" * 5 + "|"]
    for s in steps:
        d = df[df["step"] == s].set_index("group")
        lines.append(f"| {s} | " + " | ".join(f"{d.loc[g, 'mean_ce']:.3f} ({_pct(d.loc[g, 'loss_share'])}%)" for g in ("F->F", "F->C", "C->F", "C->C")) + " |")
    return "\n".join(lines)


def run(out: Path, quick: bool = False, preset: str = "cpu", device: str | None = None) -> ReportSection:

    p = PRESETS["quick" if quick else preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore()
    figures: list[str] = []
    with Timer() as timer:
        device = device or default_device()
        model = load_model(p["model"], numerics="raw", device=device)
        corpus = load_corpus("brown")
        pretrained = pretrained_quality(model, corpus, pretrained_sources(p), min(10_000, p["loss_tokens"]),
                                        128 if not quick else 64) if p["saes"] else None
        sae_dirs = {layer: r["source"] for layer, r in pretrained.items()} if pretrained else _train_saes(model, corpus, p)
        graph = run_probe("function-tokens", model, corpus, FunctionTokensConfig(
            saes=[str(sae_dirs[layer]) for layer in p["layers"]], max_tokens=p["graph_tokens"], seq_len=128 if not quick else 64,
            batch_size=8), store=store)
        res = graph.result
        loss = run_probe("function-token-loss", model, corpus, FunctionTokenLossConfig(split="validation", max_tokens=p["loss_tokens"],
                                                                                     seq_len=128 if not quick else 64), store=store).result
        recipe = LMRecipe(**p["zoo"])
        over_training = loss_over_checkpoints(recipe, corpus, device=device, config=FunctionTokenLossConfig(split="validation", max_tokens=p["zoo_tokens"],
                                                                                      seq_len=min(128, recipe.n_ctx)), store=store)
        steer_cfg = FunctionTokenSteeringConfig(sae=str(sae_dirs[p["steer_layer"]]))
        steer = run_probe("function-token-steering", model, corpus, steer_cfg, store=store).result

        mid = res.labels[len(res.labels) // 2]
        final_zoo = over_training[over_training["step"] == over_training["step"].max()]
        for name, fig in [
            ("degree_rank", figs.degree_rank_figure(res)), ("coverage", figs.coverage_figure(res)),
            ("coverage_table", figs.coverage_table_figure(res)), ("function_vs_content", figs.comparison_figure(res)),
            ("feature_degree", figs.feature_degree_figure(res)),
            ("bipartite", figs.bipartite_figure(res.layer_graph(mid), f"Top-20 tokens x strongest features ({mid})")),
            ("loss_bars", figs.loss_bars_figure([(p["model"], loss.table), (f"Brown LM (step {int(final_zoo['step'].iloc[0])})", final_zoo)])),
            ("loss_over_training", figs.loss_curves_figure(over_training, f"Loss decomposition over training ({recipe.name})")),
            ("case_study", figs.case_heatmaps_figure(steer)),
        ]:
            figures += write_figure(fig, out, name)
        for lb in res.labels:
            export_graph(res.layer_graph(lb), out / f"bipartite_{lb}.graphml")
        export_graph(res.graph, out / "bipartite_all.json")
        over_training.to_csv(out / "loss_over_training.csv", index=False)

    fs = res.function_set
    cc = fs.get("closed_class") or {}
    gens = figs.generations_table(steer)
    info = steer.info
    hook_list = ", ".join(sorted({str(info["hook"]) for info in res.saes.values() if info.get("hook")}))
    where = (f"pretrained SAE Lens SAEs {', '.join(f'`{s}`' for s in sae_dirs.values())}, loaded by id (not trained here)" if pretrained
             else f"SAEs trained by the workbench with SAE Lens at {', '.join(f'layer {layer}' for layer in p['layers'])} (resid_post)")
    md = [
        function_tokens_verdict(res, loss.table, steer.effects), "",
        f"Setting: {p['model']} (raw numerics) on Brown; {where}; graph over "
        f"{res.meta['slice']['n_positions']:,} positions of a shuffled-document slice ({res.meta['slice']['tokens_per_s']:.0f} tok/s); "
        f"machine: {hardware()}. Preset `{'quick' if quick else preset}`.",
        "",
        "**SAEs** (quality on Brown's validation split, BOS and special tokens excluded; ΔCE with the reconstruction spliced in"
        + (f"; hooks {hook_list}; measured here, as the releases were trained on other text):" if pretrained else "):"),
        "",
        pretrained_quality_table(pretrained) if pretrained else quality_table(sae_dirs),
        "",
        f"**Function-token set**: {fs['size']} tokens cover {_pct(fs['covered_mass'])}% of {fs['corpus']} under `{fs['tokenizer']}` "
        f"(the paper: 122 tokens for SlimPajama with the LLaMA-3.1 tokenizer). Tokens: "
        + ", ".join(f"`{figs.show_token(t)}`" for t in fs["tokens"]) + ".",
    ]
    if cc:
        md += ["", f"Closed-class overlap (Brown POS tags; {cc['rule']}): {cc['n_function_closed_class']} of {cc['n_function']} function "
               f"tokens are closed-class ({_pct(cc['function_closed_class_share'])}%); {_pct(cc['function_occurrences_in_closed_class_words'])}% "
               f"of function-token occurrences lie in closed-class words; the set holds {_pct(cc['closed_class_types_in_function_set'])}% of the "
               f"{cc['n_closed_class_types']} closed-class token types but {_pct(cc['closed_class_mass_covered_by_function_set'])}% of their "
               f"occurrences. Open-class by their tags: " + (", ".join(f"`{figs.show_token(t)}`" for t in cc["function_open_class"]) or "none")
               + "; in no tagged word (whitespace): " + (", ".join(f"`{figs.show_token(t)}`" for t in cc["function_untagged"]) or "none") + "."]
    md += [
        "", "**Coverage of the top-k tokens** (%; *active* = share of features that fire anywhere in the slice, *all* = share of all "
        "d_sae features), beside the paper's Table 1 (Gemma-2-9B, Gemma Scope width 2^20, layers 9/20/31, ~5M SlimPajama tokens):", "",
        coverage_markdown(res), "",
        "**Top-10 function tokens against the top-10 content tokens** (most frequent tokens outside the function set):", "",
        comparison_markdown(res), "",
        f"**Loss decomposition, {p['model']}** ({loss.meta['slice']['n_positions']:,} positions of Brown's validation split; "
        "the paper: F->C is the highest, about 4.88 for its 1.5B model):", "", loss_markdown(loss.table), "",
        f"**Over training**: {recipe.name} (the workbench's Brown LM: {recipe.n_layers} layers, d_model {recipe.d_model}, "
        f"{recipe.steps} steps, BPE-4096 tokenizer with its own function-token set), at every saved checkpoint:", "",
        training_markdown(over_training), "",
        f"**Case study**: prompts A {steer_cfg.prompt_a!r} and B {steer_cfg.prompt_b!r} "
        f"differ in {info['word_a']!r} / {info['word_b']!r}; the shared final token {info['final_token']!r} is "
        f"{'a' if info['final_is_function_token'] else 'not a'} function token. At the SAE on {info['hook']}, it carries {info['n_final_active_a']} / {info['n_final_active_b']} active features, of which "
        f"{info['n_reactivated_a']} / {info['n_reactivated_b']} were also active on the content word (reactivated). "
        f"Steering feature f{info['feature']} ({info['feature_choice']}), added at B's last token (position {info['steer_position']}) "
        f"or, as the control, at the content token {figs.show_token(info['control_token'])!r} (position {info['control_position']}), "
        f"scaled to a multiple of its activation at A's final token ({info['base_activation']:.2f}):", "",
        f"| run | strength | position | continuation | names {info['word_a']!r} | names {info['word_b']!r} | first-step top-5 |",
        "|---|---|---|---|---|---|---|",
        *[f"| {r.run} | {r.strength:g} | {r.position} | `{_cell(r.continuation)}` | {'yes' if r.mentions_a else 'no'} | "
          f"{'yes' if r.mentions_b else 'no'} | {_cell(r.top5)} |" for r in gens.itertuples()],
        "",
        *([f"**Steering sweep** ({steer.effects['pair'].nunique()} pairs: the templates "
           + ", ".join(f"`{_cell(t)}`" for t in steer.effects["template"].unique())
           + f" with consecutive words of {', '.join(steer_cfg.sweep_words)}; each ends in a token of the function-token set"
           + (f"; left out, not ending in one: {', '.join(info['sweep_skipped_templates'])}" if info.get("sweep_skipped_templates") else "")
           + "). The target is the model's own top next token on prompt A; each pair's feature (chosen as in the case study) "
           "is added on prompt B at its final function token or at its content word, at each strength (a multiple of the "
           "feature's activation at A's final token). Mean change of the target's log-probability over pairs with 95% bootstrap "
           "intervals that resample words A with all their pairs (pairs sharing word A share its feature and target; the "
           "templates are held fixed, and their spread is the second table):", "", steering_markdown(steer.effects), "",
           steering_by_template(steer.effects), ""] if not steer.effects.empty else []),
        "Deviations: "
        + (f"the SAEs are SAE Lens's pretrained {', '.join(sorted({s.split(':', 1)[0] for s in sae_dirs.values()}))} (width "
           f"{res.saes[res.labels[0]]['d_sae']:,}, {res.saes[res.labels[0]]['architecture']}), trained by their authors on web text, "
           "not Brown" if pretrained else
           f"our SAEs are small (width {res.saes[res.labels[0]]['d_sae']}, {res.saes[res.labels[0]]['architecture']}, trained "
           f"on {_train_budget(read_recipe(sae_dirs[p['layers'][0]]))})")
        + f", where the paper uses Gemma Scope "
        f"SAEs of width 2^20 trained on billions of tokens; our slice is {res.meta['slice']['n_positions']:,} tokens, not ~5M; the "
        f"frequency ranking and function set come from all of Brown with {p['model']}'s tokenizer ({fs['size']} tokens, not 122); the "
        f"over-training curves come from a {recipe.n_layers}-layer Brown LM, not the paper's 1.5B/8B pretraining runs. Expect the shape "
        "(a handful of function tokens reach most features), not the values.",
        "",
        ("Regenerate: `python -m experiments.train_saes` then `python -m experiments.function_tokens`"
         if preset in ("cpu", "gpu") or quick else f"Regenerate: `python -m experiments.run_all --only function_tokens --preset {preset}`")
        + "; the graph overhead benchmark is `python -m benchmarks.function_tokens`.",
    ]
    return ReportSection("Function tokens and SAE features", "\n".join(md), figures, timer.seconds)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT / "function_tokens")
    args = ap.parse_args(argv)
    publish_report("function_tokens", args.out, args.quick, args.preset)


REPORT = register_report("function_tokens", description="function tokens and SAE features: coverage, loss by bigram class, steering", presets=PRESETS, order=2)


if __name__ == "__main__":
    main()
