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

Everything comes from the probes' public functions and the result store: stored results are reused
(the attention-sinks experiment's own survey when it matches the model), new ones are stored.
Deviations: a few thousand Brown tokens on CPU; zero-ablation on a few hundred tokens (dormancy is
noisy at that size); function/content split by corpus frequency only.

Usage: python -m experiments.cross_analysis [--quick] [--preset cpu|gpu] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from experiments.common import DEFAULT_OUT, ReportSection, Timer, hardware, write_figure
from workbench import hooks

PRESETS: dict[str, dict[str, Any]] = {
    # zero-ablation of all 270 heads on one 128-token chunk: ~140 forward-equivalents, about 5 min on 2 shared cores
    "cpu": dict(model="smollm2-135m", max_tokens=2048, seq_len=128, batch_size=8, ablation_tokens=128, saes=[],
                sae_layers=(5, 15, 25), min_fires=20, purity=0.9, n_promoted=10, resid_tokens=8192),
    "gpu": dict(model="smollm2-135m", max_tokens=65_536, seq_len=256, batch_size=16, ablation_tokens=8192, saes=[],
                sae_layers=(5, 15, 25), min_fires=50, purity=0.9, n_promoted=10, resid_tokens=65_536),
    "quick": dict(model="tiny", max_tokens=512, seq_len=64, batch_size=4, ablation_tokens=64, saes=[],
                  sae_layers=(0, 1), min_fires=3, purity=0.9, n_promoted=10, resid_tokens=512),
}
MASS = 0.4  # function-token set: types covering this share of Brown (the function-tokens probe's default)


# ----------------------------------------------------------------------------- (a) survey + function/content split


def _attention_sinks_result(model, corpus, p: dict, preset: str, store) -> tuple[Any, str]:
    """The attention-sinks survey of `model`: the attention-sinks experiment's own stored result when
    it ran on this model, otherwise a smaller Brown-only survey (run now, stored)."""
    from experiments import attention_sinks as exp_sinks
    from probes.attention_sinks import AttentionSinksConfig
    from workbench.probe_api import get_probe
    from workbench.runner import probe_key, run_probe

    spec = get_probe("attention-sinks")
    theirs = exp_sinks.PRESETS.get(preset)
    if theirs and theirs.get("lm") == p["model"]:
        cfg = AttentionSinksConfig(**theirs["survey"], domains=["python-stdlib"])
        key = probe_key(spec, model, corpus, cfg)
        stored = store.get(spec.name, key, spec.result_cls)
        if stored is not None:
            return stored, f"the attention-sinks experiment's stored survey (key {key})"
    cfg = AttentionSinksConfig(max_tokens=p["max_tokens"], seq_len=p["seq_len"], batch_size=p["batch_size"],
                               ablation_tokens=p["ablation_tokens"], domains=[])
    out = run_probe("attention-sinks", model, corpus, cfg, store=store)
    return out.result, (f"an attention-sinks survey on {p['max_tokens']:,} Brown tokens with zero-ablation on "
                        f"{p['ablation_tokens']} ({'reused from the store' if out.reused else 'computed now'}, run #{out.run_id})")


class FunctionSinkAccumulator:
    """Per head: attention on position 0 summed separately over function-token and content-token
    queries (valid, q >= 1, not BOS). With SAEs, per feature: how often it fires on each kind."""

    needs_logits = False

    def __init__(self, model, is_function: torch.Tensor, saes: dict[str, Any] | None = None):
        self.L, self.H = model.cfg.n_layers, model.cfg.n_heads
        self.is_function = is_function
        self.saes = saes or {}
        self.sae_hooks = {label: _sae_hook(sae) for label, sae in self.saes.items()}
        self.hook_names = sorted(set(self.sae_hooks.values()) | {hooks.resid_post(self.L - 1)})
        self.pending: dict[int, torch.Tensor] = {}
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)  # noqa: E731
        self.state = {"sink_f": z(self.L, self.H), "sink_c": z(self.L, self.H), "n_f": z(1), "n_c": z(1)}
        for label, sae in self.saes.items():
            self.state[f"{label}/fires_f"] = z(sae.cfg.d_sae)
            self.state[f"{label}/fires_c"] = z(sae.cfg.d_sae)

    def hooks(self) -> list[tuple[str, Any]]:
        def grab(l: int):
            def fn(pattern: torch.Tensor, hook) -> None:
                self.pending[l] = pattern[..., 0].detach().double()  # [B, H, T]
            return fn
        return [(hooks.attn_pattern(l), grab(l)) for l in range(self.L)]

    def identity(self) -> str:
        return f"fsink-{int(self.is_function.sum())}-" + ",".join(sorted(self.saes))

    def update(self, batch, acts: dict[str, torch.Tensor], logits) -> None:
        T = batch.tokens.shape[1]
        pos = torch.arange(T, device=batch.tokens.device)
        query = batch.valid & ~batch.is_bos & (pos >= 1)
        fn = self.is_function.to(batch.tokens.device)[batch.tokens]
        mf, mc = (query & fn).double(), (query & ~fn).double()
        sink = torch.stack([self.pending[l] for l in range(self.L)])  # [L, B, H, T]
        self.pending.clear()
        self.state["sink_f"] += torch.einsum("lbht,bt->lh", sink, mf).cpu()
        self.state["sink_c"] += torch.einsum("lbht,bt->lh", sink, mc).cpu()
        self.state["n_f"] += mf.sum().cpu()
        self.state["n_c"] += mc.sum().cpu()
        for label, sae in self.saes.items():
            x = acts[self.sae_hooks[label]]
            feats = sae.encode(x[query].to(sae.W_dec.dtype)) > 0  # [n, d_sae]
            is_f = fn[query]
            self.state[f"{label}/fires_f"] += feats[is_f].sum(0).double().cpu()
            self.state[f"{label}/fires_c"] += feats[~is_f].sum(0).double().cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone().cpu() for k, v in state.items()}

    def head_table(self) -> pd.DataFrame:
        s = self.state
        f = (s["sink_f"] / s["n_f"].clamp(min=1)).numpy()
        c = (s["sink_c"] / s["n_c"].clamp(min=1)).numpy()
        layer, head = np.meshgrid(np.arange(self.L), np.arange(self.H), indexing="ij")
        return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "sink_function": f.ravel(), "sink_content": c.ravel()})


def _sae_hook(sae) -> str:
    from workbench.saes import hook_name

    return hook_name(sae)


def function_set(model, corpus) -> tuple[torch.Tensor, np.ndarray]:
    """Boolean [d_vocab] mask of function tokens and their ids, from the function-tokens probe's rule."""
    from probes.function_tokens import function_token_ids, token_stats
    from workbench.saes import special_token_ids

    stats = token_stats(model.tokenizer, corpus, "all", special_token_ids(model))
    ids = function_token_ids(stats.counts, MASS)
    mask = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    mask[torch.as_tensor(ids[ids < model.cfg.d_vocab])] = True
    return mask, ids


def sink_by_query_kind(model, corpus, p: dict, is_function: torch.Tensor, saes: dict[str, Any]) -> tuple[pd.DataFrame, dict, dict]:
    """Stream the same kind of Brown slice as the survey; per-head table, SAE fire counts, slice info."""
    from workbench.config import StreamConfig
    from workbench.slices import stream_corpus

    acc = FunctionSinkAccumulator(model, is_function, saes)
    cfg = StreamConfig(max_tokens=p["max_tokens"], seq_len=p["seq_len"], batch_size=p["batch_size"])
    with model.hooks(fwd_hooks=acc.hooks()):
        _, info = stream_corpus(model, corpus, cfg, acc, desc="cross-sink-function")
    fires = {label: (acc.state[f"{label}/fires_f"].numpy(), acc.state[f"{label}/fires_c"].numpy()) for label in saes}
    info["n_function_queries"], info["n_content_queries"] = int(acc.state["n_f"]), int(acc.state["n_c"])
    return acc.head_table(), fires, info


def spearman(x, y) -> float:
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return float("nan")
    return float(x[ok].rank().corr(y[ok].rank()))


def head_view(heads: pd.DataFrame, split: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join the survey's heads (one domain) with the function/content split; summary numbers."""
    t = heads[["layer", "head", "sink_mass", "delta_loss", "dormant"]].merge(split, on=["layer", "head"])
    t["f_minus_c"] = t["sink_function"] - t["sink_content"]
    dorm = t[t["dormant"].astype(bool)]
    rest = t[~t["dormant"].astype(bool)]
    sinky = t[t["sink_mass"] >= 0.5]
    s = {
        "n_heads": len(t), "n_dormant": len(dorm), "n_sink_heads": len(sinky),
        "mean_f_minus_c": float(t["f_minus_c"].mean()),
        "share_f_gt_c": float((t["f_minus_c"] > 0).mean()),
        "dormant_mean_f_minus_c": float(dorm["f_minus_c"].mean()) if len(dorm) else float("nan"),
        "dormant_share_f_gt_c": float((dorm["f_minus_c"] > 0).mean()) if len(dorm) else float("nan"),
        "other_mean_f_minus_c": float(rest["f_minus_c"].mean()) if len(rest) else float("nan"),
        "sink_heads_mean_f_minus_c": float(sinky["f_minus_c"].mean()) if len(sinky) else float("nan"),
        "rho_sink_vs_f_minus_c": spearman(t["sink_mass"], t["f_minus_c"]),
        "rho_absdl_vs_f_minus_c": spearman(t["delta_loss"].abs(), t["f_minus_c"]),
    }
    return t, s


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


def find_bigram_result(preset: str, quick: bool) -> tuple[Any, dict] | None:
    """The bigram-subnetworks result to compare: the bigram experiment's own (exact store key) when its
    model is cached, else the newest finished one in the store. None when the store has none."""
    from workbench.probe_api import get_probe
    from workbench.store import ResultStore

    spec = get_probe("bigram-subnetworks")
    store = ResultStore()
    try:
        from experiments import bigram_subnetworks as exp_bigram
        from workbench.corpora import load_corpus
        from workbench.runner import probe_key, resolve_config
        from workbench.zoo import LMRecipe, checkpoints, load_lm

        p = exp_bigram.PRESETS.get("quick" if quick else preset)
        if p:
            recipe = LMRecipe(**p["recipe"])
            if recipe.steps in checkpoints(recipe):
                model = load_lm(recipe)
                key = probe_key(spec, model, load_corpus(recipe.corpus), resolve_config(spec, p["probe"]))
                stored = store.get(spec.name, key, spec.result_cls)
                if stored is not None:
                    return stored, {"how": "the bigram-subnetworks experiment's result", "key": key}
    except Exception:  # noqa: BLE001 - fall back to the registry below
        pass
    for run in store.runs(limit=500, probe=spec.name):
        art = run.get("artifact")
        if run["status"] in ("done", "reused") and art and (Path(art) / "result.json").exists():
            res = spec.result_cls.load(Path(art))
            recipe = ((res.meta.get("model") or {}).get("extra", {}).get("meta", {}) or {}).get("recipe", {})
            if not quick and recipe.get("steps", 0) < 100:  # a smoke-test model: not evidence
                continue
            return res, {"how": f"the newest stored bigram-subnetworks result (run #{run['run_id']})", "key": run["key"]}
    return None


def layer_view(res, model, corpus, tokens: int, store) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per layer of the bigram result's model: kept share (selected and optimal subnetworks) and the
    first-position / rest residual-norm ratio after that layer's block (and its growth)."""
    from probes.residual_norms import ResidualNormsConfig
    from workbench.runner import run_probe

    blocks = res.block_table()
    shares = {}
    for label, name in ((res.selected, "kept_share_bigram"), (res.optimal_label, "kept_share_optimal")):
        if label:
            shares[name] = blocks[blocks["run"] == label].groupby("layer")["share_of_kept"].sum()
    t = pd.DataFrame(shares)
    t.index.name = "layer"
    seq = min(128, model.cfg.n_ctx)
    rn = run_probe("residual-norms", model, corpus, ResidualNormsConfig(max_tokens=tokens, seq_len=seq, lens_positions=4), store=store).result.table
    ratio = (rn["bos_norm"] / rn["mean_norm"]).to_numpy()  # index 0 = embeddings, l + 1 = after block l
    t["resid_ratio_after"] = [ratio[l + 1] for l in t.index]
    t["resid_ratio_growth"] = [ratio[l + 1] - ratio[l] for l in t.index]
    t = t.reset_index()
    s = {"embed_ratio": float(ratio[0]), "peak_layer": int(np.argmax(ratio[1:])), "peak_ratio": float(ratio[1:].max()),
         "growth_layer": int(t.loc[t["resid_ratio_growth"].idxmax(), "layer"]),
         "bigram_layer": int(t.loc[t["kept_share_bigram"].idxmax(), "layer"]) if "kept_share_bigram" in t else None,
         "rho_share_vs_growth": spearman(t.get("kept_share_bigram", pd.Series(dtype=float)), t["resid_ratio_growth"])}
    return t, s


def smol_peaks(layers: pd.DataFrame) -> dict[str, Any]:
    r = layers.sort_values("layer")["ratio"].to_numpy()
    growth = np.diff(r)
    return {"peak_layer": int(np.argmax(r[1:])), "peak_ratio": float(r[1:].max()), "growth_block": int(np.argmax(growth)),
            "growth": float(growth.max()), "embed_ratio": float(r[0]), "ratios": r}


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


def find_saes(model, p: dict) -> dict[str, Any]:
    """The preset's SAE Lens SAEs, else workbench-trained SAEs of this model on Brown (one per wanted layer)."""
    from workbench.models.info import model_info
    from workbench.paths import cache_dir
    from workbench.saes import hook_layer, is_sae_dir, load_sae, read_recipe

    if p.get("saes"):
        saes = {src: load_sae(src, model=model) for src in p["saes"]}
        return {f"L{hook_layer(s)}": s for s in saes.values()}
    mid = model_info(model).id
    found: dict[int, Path] = {}
    root = cache_dir() / "saes"
    for d in sorted(root.iterdir()) if root.exists() else []:
        r = read_recipe(d) if is_sae_dir(d) else {}
        hook = r.get("spec", {}).get("hook_name", "")
        if r.get("model", {}).get("id") != mid or not str(r.get("corpus", "")).startswith("brown") or not hook.endswith("hook_resid_post"):
            continue
        layer = int(hook.split(".")[1])
        if layer in p["sae_layers"]:
            found.setdefault(layer, d)  # one recipe per layer (sorted: deterministic)
    return {f"L{layer}": load_sae(str(path), model=model) for layer, path in sorted(found.items())}


def promoted_tokens(model, sae, features: np.ndarray, k: int) -> torch.Tensor:
    """Top-k tokens of each feature's decoder direction read through the final norm's gain and W_U."""
    W = sae.W_dec[torch.as_tensor(features, dtype=torch.long)].detach().float().cpu()
    gain = getattr(getattr(model, "ln_final", None), "w", None)
    if gain is not None:
        W = W * gain.detach().float().cpu()
    logits = W @ model.W_U.detach().float().cpu()
    return logits.topk(k, dim=-1).indices


def concentration(labels: torch.Tensor, token_sets: torch.Tensor) -> np.ndarray:
    """Per set: the largest share of its tokens in one key cluster."""
    lab = labels[token_sets]  # [n, k]
    k = lab.shape[1]
    return np.array([torch.bincount(row).max().item() / k for row in lab]) if len(lab) else np.array([])


def cluster_view(model, saes: dict[str, Any], fires: dict, p: dict, is_function: torch.Tensor, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    from probes.key_space import (
        cached_cluster_keys,
        default_n_clusters,
        token_strings,
        unembedding_keys,
    )

    keys = unembedding_keys(model)
    n_clusters = default_n_clusters(keys.shape[0])
    fit = cached_cluster_keys(keys, n_clusters, seed=seed)
    labels = fit.labels
    strings = token_strings(model)
    rng = np.random.default_rng(seed)
    k = p["n_promoted"]
    rand = torch.as_tensor(np.stack([rng.choice(keys.shape[0], k, replace=False) for _ in range(2000)]))
    chance = float(concentration(labels, rand).mean())
    rows, summary = [], {"n_clusters": n_clusters, "chance": chance, "cached_fit": bool(fit.settings.get("cached")), "saes": {}}
    for label, sae in saes.items():
        ff, fc = fires[label]
        total = ff + fc
        ok = total >= p["min_fires"]
        func = np.nonzero(ok & (ff >= p["purity"] * total))[0]
        cont = np.nonzero(ok & (fc >= p["purity"] * total))[0]
        per = {}
        for kind, feats in (("function", func), ("content", cont)):
            if len(feats) == 0:
                per[kind] = {"n": 0}
                continue
            top = promoted_tokens(model, sae, feats, k)
            conc = concentration(labels, top)
            fshare = is_function[top].float().mean(1).numpy()
            for f, c, sh, toks in zip(feats, conc, fshare, top):
                rows.append({"sae": label, "kind": kind, "feature": int(f), "fires": int(total[f]), "concentration": float(c),
                             "promoted_function_share": float(sh), "n_clusters_hit": int(labels[toks].unique().numel()),
                             "top_tokens": " ".join(repr(strings[int(i)]) for i in toks[:5])})
            per[kind] = {"n": int(len(feats)), "mean_concentration": float(conc.mean()), "mean_promoted_function_share": float(fshare.mean())}
        summary["saes"][label] = {"d_sae": int(sae.cfg.d_sae), "alive": int(ok.sum()), **{f"{k_}": v for k_, v in per.items()}}
    return pd.DataFrame(rows), summary


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


def run(out: Path, quick: bool = False, preset: str = "cpu") -> ReportSection:
    from workbench.corpora import load_corpus
    from workbench.models import load_model
    from workbench.store import ResultStore

    name = "quick" if quick else preset
    if name not in PRESETS:
        raise SystemExit(f"unknown preset {name!r} for the cross-analysis; choose from {sorted(PRESETS)}")
    p = PRESETS[name]
    out = Path(out)
    store, figures = ResultStore(), []
    md: list[str] = []
    with Timer() as timer:
        model = load_model(p["model"], numerics="raw")
        corpus = load_corpus("brown")
        with Timer() as t_a:
            sinks, sinks_how = _attention_sinks_result(model, corpus, p, name, store)
            dom = sinks.domains[0]
            is_function, f_ids = function_set(model, corpus)
            try:
                saes = find_saes(model, p)
                sae_note = ""
            except Exception as e:  # noqa: BLE001 - view (c) is optional
                saes, sae_note = {}, f"{type(e).__name__}: {e}"
            split, fires, slice_info = sink_by_query_kind(model, corpus, p, is_function, saes)
        heads, s = head_view(sinks.heads[sinks.heads["domain"] == dom], split)
        out.mkdir(parents=True, exist_ok=True)
        heads.to_csv(out / "heads.csv", index=False)
        for fname, fig in head_figures(heads, p["model"]).items():
            figures += write_figure(fig, out, fname)
        cfgd = sinks.meta["config"]
        top = heads.sort_values("f_minus_c", ascending=False).head(5)
        md += [
            f"Model `{p['model']}` (raw numerics), Brown. {'**Quick smoke settings on a tiny random model: the numbers mean nothing.** ' if quick else ''}"
            f"Function tokens: the {len(f_ids):,} most frequent types covering {MASS:.0%} of Brown under this tokenizer "
            f"(the function-tokens analysis's rule). Machine: {hardware()}.",
            "",
            "**(a) Sink heads against function tokens.** Per head, mean attention on the BOS position from function-token "
            f"queries and from content-token queries ({slice_info['n_function_queries']:,} and {slice_info['n_content_queries']:,} "
            f"query positions, {slice_info.get('n_positions', p['max_tokens']):,} Brown tokens in chunks of {p['seq_len']}), beside "
            f"sink mass and dormancy from {sinks_how} (dormant: sink ≥ {cfgd['dormant_sink']} and |Δloss| ≤ {cfgd['dormant_loss']} nats "
            "under zero-ablation).",
            "",
            "| heads | quantity | value |", "|---|---|---|",
            f"| all {s['n_heads']} | mean (function − content) BOS attention | {_f(s['mean_f_minus_c'])} |",
            f"| all | share of heads with function > content | {s['share_f_gt_c']:.0%} |",
            f"| {s['n_dormant']} dormant | mean (function − content) | {_f(s['dormant_mean_f_minus_c'])} "
            f"({_f(s['dormant_share_f_gt_c'], 2)} of them function > content) |",
            f"| {s['n_heads'] - s['n_dormant']} others | mean (function − content) | {_f(s['other_mean_f_minus_c'])} |",
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

        smol = smol_peaks(sinks.layers[sinks.layers["domain"] == dom])
        found = find_bigram_result(preset, quick)
        t_b, sb, bigram_model = None, None, None
        if found is not None:
            bres, how = found
            path = (bres.meta.get("model") or {}).get("path")
            try:
                bmodel = load_model(path, numerics="raw") if path else None
            except Exception as e:  # noqa: BLE001 - the checkpoint may be gone
                bmodel, how["error"] = None, f"{type(e).__name__}: {e}"
            if bmodel is not None:
                bigram_model = bres.meta["model"]["id"]
                t_b, sb = layer_view(bres, bmodel, corpus, p["resid_tokens"], store)
                t_b.to_csv(out / "bigram_layers.csv", index=False)
        figures += write_figure(layer_figure(t_b, bigram_model, smol, p["model"]), out, "bigram_layers_vs_residual_peak")
        md += ["", "**(b) Bigram-subnetwork layers against the residual peak.** "
               f"On `{p['model']}`, the BOS/rest residual-norm ratio is {smol['embed_ratio']:.2f} at the embeddings and peaks at "
               f"{smol['peak_ratio']:.3g} after block {smol['peak_layer']}; the largest single jump ({smol['growth']:+.3g}) is made by "
               f"block {smol['growth_block']}."]
        if t_b is None:
            md += ["", "No bigram-subnetworks result is in the store for a model that can be loaded, so the layer comparison is "
                   "not made (`python -m experiments.bigram_subnetworks` stores one)."
                   + (f" ({found[1].get('error')})" if found is not None and found[1].get("error") else "")]
        else:
            rec = (bres.meta["model"].get("extra", {}).get("meta", {}) or {}).get("recipe", {})
            md += ["", f"Bigram subnetworks were trained on `{bigram_model}` ({rec.get('n_layers', '?')} layers, d_model "
                   f"{rec.get('d_model', '?')}, {rec.get('steps', '?')} steps; {how['how']}; selected {bres.selected}, optimal "
                   f"{bres.optimal_label}). Residual norms on {p['resid_tokens']:,} Brown tokens of that model:", "",
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
        if saes:
            t_c, sc = cluster_view(model, saes, fires, p, is_function)
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
                   + (f" ({sae_note})" if sae_note else "")]
        md += ["", f"Cost: {timer_str(t_a.seconds)} for the survey and the split; reproduce with "
               f"`python -m experiments.cross_analysis{' --quick' if quick else f' --preset {preset}'}`."]
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset", default="cpu", choices=sorted(k for k in PRESETS if k != "quick"))
    ap.add_argument("--out", default=str(DEFAULT_OUT / "cross_analysis"))
    a = ap.parse_args()
    sec = run(Path(a.out), quick=a.quick, preset=a.preset)
    sec.publish(Path(a.out), "quick" if a.quick else a.preset)
