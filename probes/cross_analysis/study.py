"""The cross-analysis study: measurements that connect two analyses on the same model, composed
from stored probe runs.

(a) Sink heads against function tokens: the attention-sinks survey's sink mass and zero-ablation
    dormancy per head, beside the attention on BOS from function-token and from content-token
    queries (`sinks-by-token-kind`). Do dormant heads park on BOS more for function tokens?
(b) Bigram-subnetwork layers against where the first position's residual peak forms: on the model
    a stored bigram-subnetworks result was trained on, the share of the kept weights per block,
    beside the BOS / rest residual-norm ratio after each block (`residual-norms`). Made only when
    the store holds such a result for a model that can be loaded.
(c) Key-space clusters of the tokens that function-token SAE features promote: features that fire
    (almost) only on function tokens, the top tokens of their decoder direction through the final
    norm gain and W_U, and the largest share of those tokens in one k-means cluster of the
    unembedding keys (`probes.key_space`), against content-token features and random token sets.
    Needs SAEs (the config's, else the workbench-trained SAEs of the model at `sae_layers`).

Every expensive part is a probe run through the store; the study's own result is keyed by its
config and the keys of every part it used, so it is reused exactly when all of them are.
Deviations: a few thousand Brown tokens on CPU; zero-ablation on a few hundred tokens (dormancy
is noisy at that size); function/content split by corpus frequency only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.attention_sinks import AttentionSinksConfig
from probes.bigram_subnetworks import BigramSubnetworksResult
from probes.cross_analysis.token_kind import (
    SinksByTokenKindConfig,
    SinksByTokenKindResult,
)
from probes.key_space import (
    cached_cluster_keys,
    default_n_clusters,
    token_strings,
    unembedding_keys,
)
from probes.residual_norms import ResidualNormsConfig
from workbench.config import ConfigBase, setting
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.probe_api import StudySpec, register
from workbench.results import Result
from workbench.runner import StudyParts, result_of_run
from workbench.saes import load_sae, trained_saes
from workbench.zoo import LMRecipe, checkpoints, load_lm

NAME = "cross-analysis"


@dataclass
class CrossAnalysisConfig(ConfigBase):
    model: str = setting("smollm2-135m", names="model")
    corpus: str = setting("brown", names="corpus")
    max_tokens: int = 2048  # the function/content split's slice, and the fallback survey's
    seq_len: int = 128
    batch_size: int = 8
    ablation_tokens: int = 128  # the fallback survey's zero-ablation slice
    survey: dict | None = None  # the attention-sinks experiment's survey config: used when stored
    mass: float = 0.4  # function-token set (the function-tokens probe's default)
    saes: list[str] = setting(default_factory=list, names="sae")  # explicit SAE sources; [] = trained ones at sae_layers
    sae_layers: list[int] = field(default_factory=lambda: [5, 15, 25])
    min_fires: int = 20
    purity: float = 0.9
    n_promoted: int = 10
    resid_tokens: int = 8192
    bigram: dict | None = None  # {"recipe": LMRecipe fields, "probe": config} of the bigram experiment
    min_bigram_steps: int = 100  # a stored bigram result on a model trained fewer steps is a smoke test, not evidence


@dataclass
class CrossAnalysisResult(Result):
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)  # (a) per head
    head_summary: dict[str, Any] = field(default_factory=dict)
    peaks: dict[str, Any] = field(default_factory=dict)  # the model's BOS / rest residual ratio per layer
    bigram_layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # (b) per block, empty when not made
    layer_summary: dict[str, Any] = field(default_factory=dict)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)  # (c) per feature, empty when not made
    cluster_summary: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)  # where each part came from (run ids, keys, notes)

    def summary(self) -> dict:
        s = self.head_summary
        return {"heads": s.get("n_heads"), "dormant": s.get("n_dormant"),
                "mean_f_minus_c": None if s.get("mean_f_minus_c") is None else round(float(s["mean_f_minus_c"]), 4),
                "bigram_view": not self.bigram_layers.empty, "cluster_view": not self.clusters.empty}


# ----------------------------------------------------------------------------- (a)


def spearman(x, y) -> float:
    x, y = pd.Series(np.asarray(x, float)), pd.Series(np.asarray(y, float))
    ok = x.notna() & y.notna()
    if ok.sum() < 3 or x[ok].nunique() < 2 or y[ok].nunique() < 2:
        return float("nan")
    return float(x[ok].rank().corr(y[ok].rank()))


def head_view(heads: pd.DataFrame, split: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Join the survey's heads (one domain) with the function/content split; summary numbers."""
    cols = ["layer", "head", "sink_mass", "delta_loss", "dormant"] + (["verdict"] if "verdict" in heads else [])
    t = heads[cols].merge(split, on=["layer", "head"])
    t["f_minus_c"] = t["sink_function"] - t["sink_content"]
    dorm = t[t["dormant"].astype(bool)]
    # "the rest" is the heads surely not dormant: undecided ones are counted neither way
    rest = t[t["verdict"] == "active"] if "verdict" in t else t[~t["dormant"].astype(bool)]
    sinky = t[t["sink_mass"] >= 0.5]
    nan = float("nan")
    s = {
        "n_heads": len(t), "n_dormant": len(dorm), "n_sink_heads": len(sinky),
        "n_undecided": int((t["verdict"] == "undecided").sum()) if "verdict" in t else 0,
        "mean_f_minus_c": float(t["f_minus_c"].mean()),
        "share_f_gt_c": float((t["f_minus_c"] > 0).mean()),
        "dormant_mean_f_minus_c": float(dorm["f_minus_c"].mean()) if len(dorm) else nan,
        "dormant_share_f_gt_c": float((dorm["f_minus_c"] > 0).mean()) if len(dorm) else nan,
        "other_mean_f_minus_c": float(rest["f_minus_c"].mean()) if len(rest) else nan,
        "sink_heads_mean_f_minus_c": float(sinky["f_minus_c"].mean()) if len(sinky) else nan,
        "rho_sink_vs_f_minus_c": spearman(t["sink_mass"], t["f_minus_c"]),
        "rho_absdl_vs_f_minus_c": spearman(t["delta_loss"].abs(), t["f_minus_c"]),
    }
    return t, s


def residual_peaks(layers: pd.DataFrame) -> dict[str, Any]:
    """Where the BOS / rest residual-norm ratio peaks and grows most (layer 0 = embeddings)."""
    r = layers.sort_values("layer")["ratio"].to_numpy()
    growth = np.diff(r)
    return {"peak_layer": int(np.argmax(r[1:])), "peak_ratio": float(r[1:].max()), "growth_block": int(np.argmax(growth)),
            "growth": float(growth.max()), "embed_ratio": float(r[0]), "ratios": [float(x) for x in r]}


def _survey(cfg: CrossAnalysisConfig, ctx: StudyParts, model, corpus) -> tuple[Any, str]:
    """The attention-sinks experiment's survey (its settings, so every head has one dormancy
    verdict across the report: reused from the store, or computed now), else a smaller Brown-only one."""
    if cfg.survey:
        out = ctx.run_probe("attention-sinks", model, corpus, AttentionSinksConfig.from_dict(cfg.survey))
        how = "reused from the store" if out.reused else "computed now"
        return out.result, f"the attention-sinks experiment's survey, with its settings ({how}, run #{out.run_id}, key {out.key})"
    small = AttentionSinksConfig(max_tokens=cfg.max_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size,
                                 ablation_tokens=cfg.ablation_tokens, domains=[])
    out = ctx.run_probe("attention-sinks", model, corpus, small)
    return out.result, (f"an attention-sinks survey on {cfg.max_tokens:,} Brown tokens with zero-ablation on "
                        f"{cfg.ablation_tokens} ({'reused from the store' if out.reused else 'computed now'}, run #{out.run_id})")


# ----------------------------------------------------------------------------- (b)


def find_bigram_result(cfg: CrossAnalysisConfig, ctx: StudyParts) -> tuple[BigramSubnetworksResult, dict] | None:
    """The bigram experiment's own result (exact key) when its model is cached, else the newest
    finished bigram-subnetworks run in the registry on a model trained at least `min_bigram_steps`."""
    if cfg.bigram:
        recipe = LMRecipe(**cfg.bigram["recipe"])
        if recipe.steps in checkpoints(recipe):
            found = ctx.stored("bigram-subnetworks", load_lm(recipe, device=ctx.device), load_corpus(recipe.corpus), cfg.bigram["probe"])
            if found is not None:
                return found.result, {"how": "the bigram-subnetworks experiment's result", "key": found.key}
    for run in ctx.store.runs(limit=500, probe="bigram-subnetworks"):
        if run["status"] not in ("done", "reused"):
            continue
        try:
            res = result_of_run(run["run_id"], ctx.store)
        except Exception:  # noqa: BLE001 - a corrupt or vanished result is skipped
            continue
        recipe = ((res.meta.get("model") or {}).get("extra", {}).get("meta", {}) or {}).get("recipe", {})
        if recipe.get("steps", 0) < cfg.min_bigram_steps:
            continue
        ctx.used(run["run_id"], run["key"])
        return res, {"how": f"the newest stored bigram-subnetworks result (run #{run['run_id']})", "key": run["key"]}
    return None


def layer_view(res: BigramSubnetworksResult, model: HookedTransformer, corpus, tokens: int, ctx: StudyParts) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per block of the bigram result's model: kept share (selected and optimal subnetworks) and the
    first-position / rest residual-norm ratio after that block (and its growth)."""
    blocks = res.block_table()
    shares = {}
    for label, name in ((res.selected, "kept_share_bigram"), (res.optimal_label, "kept_share_optimal")):
        if label:
            shares[name] = blocks[blocks["run"] == label].groupby("layer")["share_of_kept"].sum()
    t = pd.DataFrame(shares)
    t.index.name = "layer"
    seq = min(128, model.cfg.n_ctx)
    rn = ctx.run_probe("residual-norms", model, corpus, ResidualNormsConfig(max_tokens=tokens, seq_len=seq, lens_positions=4)).result.table
    ratio = (rn["bos_norm"] / rn["mean_norm"]).to_numpy()  # index 0 = embeddings, l + 1 = after block l
    t["resid_ratio_after"] = [ratio[l + 1] for l in t.index]
    t["resid_ratio_growth"] = [ratio[l + 1] - ratio[l] for l in t.index]
    t = t.reset_index()
    s = {"embed_ratio": float(ratio[0]), "peak_layer": int(np.argmax(ratio[1:])), "peak_ratio": float(ratio[1:].max()),
         "growth_layer": int(t.loc[t["resid_ratio_growth"].idxmax(), "layer"]),
         "bigram_layer": int(t.loc[t["kept_share_bigram"].idxmax(), "layer"]) if "kept_share_bigram" in t else None,
         "rho_share_vs_growth": spearman(t.get("kept_share_bigram", pd.Series(dtype=float)), t["resid_ratio_growth"])}
    return t, s


# ----------------------------------------------------------------------------- (c)


def promoted_tokens(model: HookedTransformer, sae, features: np.ndarray, k: int) -> torch.Tensor:
    """Top-k tokens of each feature's decoder direction read through the final norm's gain and W_U."""
    W = sae.W_dec[torch.as_tensor(features, dtype=torch.long, device=sae.W_dec.device)].detach().float()
    gain = getattr(getattr(model, "ln_final", None), "w", None)
    if gain is not None:
        W = W * gain.detach().float().to(W.device)
    logits = W @ model.W_U.detach().float().to(W.device)
    return logits.topk(k, dim=-1).indices.cpu()


def concentration(labels: torch.Tensor, token_sets: torch.Tensor) -> np.ndarray:
    """Per set: the largest share of its tokens in one key cluster."""
    lab = labels[token_sets]  # [n, k]
    k = lab.shape[1]
    return np.array([torch.bincount(row).max().item() / k for row in lab]) if len(lab) else np.array([])


def cluster_view(model: HookedTransformer, saes: dict[str, Any], split: SinksByTokenKindResult, cfg: CrossAnalysisConfig,
                 seed: int = 0) -> tuple[pd.DataFrame, dict]:
    keys = unembedding_keys(model)
    n_clusters = default_n_clusters(keys.shape[0])
    fit = cached_cluster_keys(keys, n_clusters, seed=seed)
    labels = fit.labels
    strings = token_strings(model)
    is_function = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    ids = torch.as_tensor(split.function_ids, dtype=torch.long)
    is_function[ids[ids < model.cfg.d_vocab]] = True
    rng = np.random.default_rng(seed)
    k = cfg.n_promoted
    rand = torch.as_tensor(np.stack([rng.choice(keys.shape[0], k, replace=False) for _ in range(2000)]))
    chance = float(concentration(labels, rand).mean())
    rows, summary = [], {"n_clusters": n_clusters, "chance": chance, "cached_fit": bool(fit.settings.get("cached")), "saes": {}}
    for label, sae in saes.items():
        ff, fc = split.fire_counts(label)
        total = ff + fc
        ok = total >= cfg.min_fires
        func = np.nonzero(ok & (ff >= cfg.purity * total))[0]
        cont = np.nonzero(ok & (fc >= cfg.purity * total))[0]
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
        summary["saes"][label] = {"d_sae": int(sae.cfg.d_sae), "alive": int(ok.sum()), **per}
    return pd.DataFrame(rows), summary


def sae_sources(cfg: CrossAnalysisConfig, model: HookedTransformer) -> list[str]:
    """The config's SAE sources, else the workbench-trained SAEs of the model (resid_post at `sae_layers`)."""
    if cfg.saes:
        return list(cfg.saes)
    return [str(p) for _, p in sorted(trained_saes(model, cfg.corpus, cfg.sae_layers).items())]


# ----------------------------------------------------------------------------- the study


def cross_analysis(cfg: CrossAnalysisConfig, ctx: StudyParts) -> CrossAnalysisResult:
    device = ctx.device
    model = load_model(cfg.model, numerics="raw", device=device)
    corpus = load_corpus(cfg.corpus)
    sources: dict[str, Any] = {}
    sinks, sources["survey"] = _survey(cfg, ctx, model, corpus)
    sources["dormant"] = {k: sinks.meta["config"][k] for k in ("dormant_sink", "dormant_loss")}
    dom = sinks.domains[0]
    try:
        sae_list = sae_sources(cfg, model)
        sources["saes"] = sae_list
    except Exception as e:  # noqa: BLE001 - view (c) is optional
        sae_list, sources["sae_error"] = [], f"{type(e).__name__}: {e}"
    split_out = ctx.run_probe("sinks-by-token-kind", model, corpus, SinksByTokenKindConfig(
        max_tokens=cfg.max_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, mass=cfg.mass, saes=sae_list))
    split = split_out.result
    sources["split"] = {"run": split_out.run_id, **split.counts, "n_positions": split.meta.get("slice", {}).get("n_positions")}
    heads, head_summary = head_view(sinks.heads[sinks.heads["domain"] == dom], split.heads)
    peaks = residual_peaks(sinks.layers[sinks.layers["domain"] == dom])

    bigram_layers, layer_summary = pd.DataFrame(), {}
    found = find_bigram_result(cfg, ctx)
    if found is not None:
        bres, how = found
        path = (bres.meta.get("model") or {}).get("path")
        try:
            bmodel = load_model(path, numerics="raw", device=device) if path else None
        except Exception as e:  # noqa: BLE001 - the checkpoint may be gone
            bmodel, how["error"] = None, f"{type(e).__name__}: {e}"
        if bmodel is not None:
            bigram_layers, layer_summary = layer_view(bres, bmodel, corpus, cfg.resid_tokens, ctx)
            rec = (bres.meta["model"].get("extra", {}).get("meta", {}) or {}).get("recipe", {})
            how.update(model=bres.meta["model"]["id"], recipe=rec, selected=bres.selected, optimal=bres.optimal_label)
        sources["bigram"] = how

    clusters, cluster_summary = pd.DataFrame(), {}
    if sae_list:
        saes = {}
        for src in sae_list:
            sae = load_sae(src, model=model, corpus_name=corpus.name)  # on the model's device
            saes[f"L{sae.cfg.metadata.hook_name.split('.')[1]}"] = sae
        clusters, cluster_summary = cluster_view(model, saes, split, cfg)
    return CrossAnalysisResult(heads=heads, head_summary=head_summary, peaks=peaks, bigram_layers=bigram_layers,
                               layer_summary=layer_summary, clusters=clusters, cluster_summary=cluster_summary, sources=sources)


STUDY = register(StudySpec(
    name=NAME,
    description="Sink heads against function tokens, bigram-subnetwork layers against the residual peak, and key-space "
                "clusters of the tokens function-token SAE features promote.",
    config_cls=CrossAnalysisConfig,
    result_cls=CrossAnalysisResult,
    run=cross_analysis,
))
