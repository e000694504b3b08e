"""Circuit discovery with discrete SAE codes (O'Neill & Bui, 2024), beside a causal baseline.

1. A task gives 250 positive prompts (the model can predict the answer) and 250 paired negatives
   (it cannot); see `workbench.tasks`.
2. Every head's output z . W_O (processed numerics, no b_O; per query head under grouped-query
   attention) is averaged over all positions of a prompt, BOS included: [examples, heads, d_model].
3. One small SAE (200 features) is trained on 10 randomly drawn examples and every (example, head)
   is discretised to its argmax feature (`probes.sae_circuits.discrete_sae`).
4. Node and edge scores rank heads by codes that occur on positives and never on negatives; the
   ranking is scored by ROC AUC against a ground-truth set, over `n_seeds` trials (mean +- std).

Ground truth: the published circuit when the model has one (GPT-2 small IOI and greater-than,
attn-only-4l docstring), the backcopy head(s) of a Bigram-Backcopy model (heads whose attention
from trigger positions goes mostly to the preceding token), and otherwise the heads
the causal baseline selects (`probes.sae_circuits.baselines`: per-head patching of negative into
positive runs, threshold on the share of the total effect). The baseline's runtime is recorded
beside the SAE method's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import networkx as nx
import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from transformer_lens import HookedTransformer

from probes.attention_sinks import task_of_model
from probes.sae_circuits.baselines import (
    BaselineOutcome,
    answers_of,
    final_resid,
    head_patching,
    known_circuit,
    last_rows,
    metric_from_resid,
)
from probes.sae_circuits.discrete_sae import (
    SAESettings,
    edge_scores,
    node_scores,
    sae_codes,
    train_sae_once,
    unique_cooccurrence,
)
from probes.sae_circuits.evidence import auc_intervals, split_half
from probes.sae_circuits.tasks.backcopy_contrast import (
    backcopy_attention,
    backcopy_prompts,
)
from probes.sae_circuits.tasks.contrast import ContrastPrompts, pad_right
from probes.sae_circuits.tasks.docstring import docstring_prompts
from probes.sae_circuits.tasks.greater_than import greater_than_prompts
from probes.sae_circuits.tasks.ioi import ioi_prompts
from probes.sae_circuits.tasks.planted import TASK as PLANTED_TASK
from probes.sae_circuits.tasks.planted import planted_circuit, recall_prompts
from workbench import hooks
from workbench.config import ConfigBase, setting
from workbench.cost import ablation_passes
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, register
from workbench.progress import progress_bar
from workbench.results import Result

TaskFn = Callable[..., ContrastPrompts]
# task -> (generator(tokenizer, n, seed, prepend_bos), the paper's L1 coefficient). Bigram-Backcopy
# prompts come from the BB task the model was trained on; the paper has no BB setting, so it takes
# the IOI / greater-than coefficient.
TASKS: dict[str, tuple[TaskFn | None, float]] = {
    "ioi": (ioi_prompts, 0.02),
    "greater-than": (greater_than_prompts, 0.02),
    "docstring": (docstring_prompts, 0.05),
    "bigram-backcopy": (None, 0.02),
    PLANTED_TASK: (None, 0.02),
}
BACKCOPY_ATTENTION = 0.5  # a BB head is the backcopy head if trigger positions give > half their attention to the previous token
# The paper's ROC AUCs on GPT-2 small / attn-only-4l (node, edge).
PAPER_AUC = {"ioi": (0.868, 0.840), "greater-than": (0.855, 0.873), "docstring": (0.869, 0.896)}


@dataclass
class SAECircuitsConfig(ConfigBase):
    task: str = setting("ioi", text=True, why="one of the registered tasks")  # ioi | greater-than | docstring | bigram-backcopy (on a BB checkpoint) | planted-recall (on a planted-circuit model)
    n_prompts: int = setting(250, min=2, max=10_000, why="pairs held in memory")  # positive/negative pairs (the paper: 250 + 250)
    task_seed: int = setting(0, min=0, max=2**31 - 1, why="seeds are 31-bit")
    n_features: int = setting(200, min=1, max=100_000, why="SAE width")
    l1: float | None = setting(None, min=0.0, max=100.0, why="a sparsity penalty")  # None: the paper's value for the task (0.02 IOI and greater-than, 0.05 docstring)
    lr: float = setting(1e-3, min=0.0, max=10.0, why="a learning rate")
    epochs: int = setting(500, min=1, max=100_000, why="training epochs")
    n_train: int = setting(10, min=1, max=10_000, why="training examples")  # examples the SAE is trained on
    n_seeds: int = setting(10, min=1, max=1000, why="one SAE per seed and head")  # trials (SAE init and training examples)
    ground_truth: Literal["auto", "known", "baseline"] = "auto"  # auto: published circuit if the model has one
    baseline: Literal["patching", "mean-ablation", "attribution", "none"] = "patching"
    baseline_prompts: int = setting(64, min=1, max=10_000, why="one patched pass per head per pair")  # pairs the baseline patches (the first of the task's pairs)
    threshold: float = setting(0.05, min=0.0, max=1.0, why="a share of the total effect")  # baseline circuit: |share of the total effect| above this
    attribution_too: bool = True  # with patching, also run attribution patching on the same pairs (cheap; compared in stats)
    mean_ablation_too: bool = False  # with patching, also run mean ablation on the same pairs (as costly as patching)
    n_boot: int = setting(1000, min=0, max=100_000, why="bootstrap resamples")  # for the AUC intervals over pairs; 0 = none
    batch_size: int = setting(16, min=1, max=1024, why="larger batches do not fit in memory")
    graph_pairs: int = setting(30, min=1, max=10_000, why="edges a graph view can show")  # head pairs (by mean edge co-occurrence) in the circuit graph

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {sorted(TASKS)}, got {self.task!r}")
        for name in ("n_prompts", "n_features", "epochs", "n_train", "n_seeds", "baseline_prompts", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_train > 2 * self.n_prompts:
            raise ConfigError(f"n_train ({self.n_train}) exceeds the {2 * self.n_prompts} examples")
        if not 0 < self.threshold < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.l1 is not None and self.l1 < 0:
            raise ConfigError(f"l1 must be >= 0, got {self.l1}")
        if self.ground_truth == "baseline" and self.baseline == "none":
            raise ConfigError("ground_truth='baseline' needs a baseline (patching or mean-ablation)")

    def sae_settings(self) -> SAESettings:
        l1 = self.l1 if self.l1 is not None else TASKS[self.task][1]
        return SAESettings(self.n_features, l1, self.lr, self.epochs, self.n_train)


@dataclass
class SAECircuitsResult(Result):
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per head
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per seed
    codes: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # int16 [seeds, examples, heads]
    node_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [seeds, heads]
    edge_scores: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [seeds, heads]
    cooccurrence: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # [heads, heads] mean U
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # task metric per prompt
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)
    stats: dict[str, Any] = field(default_factory=dict)
    pair_effects: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> [pairs, heads] effect of each head on each pair

    @property
    def n_positive(self) -> int:
        return int(self.stats["n_pairs"])

    def summary(self) -> dict:
        s = self.stats
        if not s:
            return {}
        out = {
            "task": s["task"], "ground_truth": s["ground_truth_source"], "circuit_size": s["circuit_size"],
            "node_auc": f"{s['node_auc_mean']:.3f} ± {s['node_auc_std']:.3f}",
            "edge_auc": f"{s['edge_auc_mean']:.3f} ± {s['edge_auc_std']:.3f}",
            "accuracy": round(s["accuracy"], 3),
            "sae_method_s": round(s["sae_method_s"], 1),
        }
        if s.get("baseline_s") is not None:
            out["baseline_s"] = round(s["baseline_s"], 1)
        return out


# ----------------------------------------------------------------------------- activations


def head_labels(model: HookedTransformer) -> list[str]:
    return [f"L{l}H{h}" for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def make_task(model: HookedTransformer, task: str, n: int, seed: int) -> ContrastPrompts:
    if task == "bigram-backcopy":
        return backcopy_prompts(_bb_task(model), n=n, seed=seed)
    if task == PLANTED_TASK:
        return recall_prompts(model, n=n, seed=seed)
    if model.tokenizer is None:
        raise ConfigError("the task generators need the model's tokenizer; this model has none")
    fn = TASKS[task][0]
    assert fn is not None
    return fn(model.tokenizer, n=n, seed=seed, prepend_bos=bool(model.cfg.default_prepend_bos))


def _bb_task(model: HookedTransformer):

    bb = task_of_model(model)
    if bb is None:
        raise ConfigError("task 'bigram-backcopy' needs a model trained on it (a checkpoint from workbench.tasks.train_bb)")
    return bb


@torch.no_grad()
def head_outputs(model: HookedTransformer, prompts: ContrastPrompts, batch_size: int = 16,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[2n, layers*heads, d_model] position-averaged head outputs (positives first) and each side's metric."""
    device = next(model.parameters()).device
    L, H = model.cfg.n_layers, model.cfg.n_heads
    n = len(prompts)
    out = torch.zeros(2 * n, L * H, model.cfg.d_model)
    metric = torch.zeros(2 * n)
    ans = answers_of(prompts, model)
    lengths = prompts.lengths()
    order = torch.argsort(lengths, stable=True)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer is not None and model.tokenizer.pad_token_id is not None else 0
    bar = progress_bar(2 * n, "head outputs", unit="prompt", enabled=progress)
    try:
        for side, seqs in enumerate((prompts.positive, prompts.negative)):
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                tokens = pad_right([seqs[j] for j in idx.tolist()], pad_id).to(device)
                last = (lengths[idx] - 1).to(device)
                valid = (torch.arange(tokens.shape[1], device=device)[None] <= last[:, None]).float()
                valid = valid / valid.sum(1, keepdim=True)
                means: dict[int, torch.Tensor] = {}

                def save_mean(z: torch.Tensor, hook, valid=valid, means=means) -> None:
                    means[hook.layer()] = torch.einsum("bp,bphd->bhd", valid, z)

                resid = final_resid(model, tokens, fwd=[(hooks.attn_z(l), save_mean) for l in range(L)])
                per_layer = [torch.einsum("bhd,hdm->bhm", means[l], model.blocks[l].attn.W_O) for l in range(L)]
                rows = idx + side * n
                out[rows] = torch.cat(per_layer, dim=1).float().cpu()
                metric[rows] = metric_from_resid(model, last_rows(resid, last), ans.select(idx).to(device)).float().cpu()
                bar.update(len(idx))
    finally:
        bar.close()
    return out, metric[:n], metric[n:]


# ----------------------------------------------------------------------------- scoring


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when the ground truth holds only one class."""
    truth = np.asarray(truth).astype(bool)
    if truth.all() or not truth.any():
        return float("nan")
    return float(roc_auc_score(truth, np.asarray(scores, dtype=float)))


def roc_points(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(truth).astype(bool), np.asarray(scores, dtype=float))
    return fpr, tpr


def _mean_std(name: str, values: pd.Series) -> dict[str, float]:
    """Mean and std over trials whose AUC is defined (NaN for both when none is: one-class truth)."""
    v = values.to_numpy(dtype=float)
    v = v[~np.isnan(v)]
    return {f"{name}_mean": float(v.mean()) if len(v) else float("nan"), f"{name}_std": float(v.std()) if len(v) else float("nan")}


def circuit_graph(cooccurrence: torch.Tensor, heads: pd.DataFrame, n_pairs: int) -> nx.DiGraph:
    """The `n_pairs` head pairs with the highest mean U as a graph: heads are nodes (with their
    scores), edges point from the earlier head to the later one and carry U as `weight`."""
    U = cooccurrence.float()
    n = U.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    vals = U[i, j]
    top = torch.argsort(vals, descending=True, stable=True)[:n_pairs]
    g = nx.DiGraph()
    rows = heads.set_index("index")
    for k in top.tolist():
        if vals[k] <= 0:
            break
        a, b = int(i[k]), int(j[k])
        for h in (a, b):
            if h not in g:
                r = rows.loc[h]
                g.add_node(str(r["label"]), index=h, layer=int(r["layer"]), head=int(r["head"]),
                           node_score=float(r["node_score"]), edge_score=float(r["edge_score"]),
                           baseline_share=float(r["baseline_share"]), ground_truth=bool(r["ground_truth"]))
        g.add_edge(str(rows.loc[a, "label"]), str(rows.loc[b, "label"]), weight=float(vals[k]))
    return g


# ----------------------------------------------------------------------------- the probe


def _head_mask(L: int, H: int, heads: list[tuple[int, int]]) -> torch.Tensor:
    """[L * H] bool, True at the given (layer, head) pairs."""
    mask = torch.zeros(L, H, dtype=torch.bool)
    for layer, head in heads:
        mask[layer, head] = True
    return mask.flatten()


def _ground_truth(model: HookedTransformer, config: SAECircuitsConfig, baseline: BaselineOutcome | None,
                  prompts: ContrastPrompts) -> tuple[torch.Tensor, str, torch.Tensor | None]:
    """(truth over heads, where it comes from, the backcopy attention per head for BB models)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    if config.task == "bigram-backcopy" and config.ground_truth in ("auto", "known"):
        att = backcopy_attention(model, _bb_task(model), prompts, config.batch_size)
        return (att > BACKCOPY_ATTENTION).flatten(), f"backcopy-attention>{BACKCOPY_ATTENTION:g}", att.flatten()
    planted = planted_circuit(model) if config.task == PLANTED_TASK else None
    if planted is not None and config.ground_truth in ("auto", "known"):
        return _head_mask(L, H, planted), "planted", None
    known = known_circuit(model, config.task)
    if config.ground_truth == "known" and known is None:
        raise ConfigError(f"no published circuit for task {config.task!r} on this model; use ground_truth='baseline'")
    if known is not None and config.ground_truth in ("auto", "known"):
        return _head_mask(L, H, known), "published", None
    if baseline is None:
        raise ConfigError(f"no ground truth for task {config.task!r} on this model: it has no published circuit, "
                          "so set baseline to 'patching', 'mean-ablation' or 'attribution'")
    return baseline.circuit(config.threshold).flatten(), f"baseline:{baseline.method}>{config.threshold:g}", None


def run(model: HookedTransformer, corpus: Any, config: SAECircuitsConfig) -> SAECircuitsResult:
    L, H = model.cfg.n_layers, model.cfg.n_heads
    prompts = make_task(model, config.task, config.n_prompts, config.task_seed)

    t0 = time.perf_counter()
    acts, pos_metric, neg_metric = head_outputs(model, prompts, config.batch_size)
    activations_s = time.perf_counter() - t0

    baseline = attribution = mean_ablation = None
    sae_at_baseline_pairs = None
    if config.baseline != "none" and not (config.ground_truth == "known"):
        pairs = prompts.subset(config.baseline_prompts)
        baseline = head_patching(model, pairs, config.baseline, config.batch_size)
        if config.baseline == "patching" and config.attribution_too:
            attribution = head_patching(model, pairs, "attribution", config.batch_size)
        if config.baseline == "patching" and config.mean_ablation_too:
            mean_ablation = head_patching(model, pairs, "mean-ablation", config.batch_size)
        if len(pairs) < len(prompts):  # the SAE method timed on the baseline's own pairs too (one trial)
            t1 = time.perf_counter()
            sub_acts = head_outputs(model, pairs, config.batch_size, progress=False)[0]
            sub_sae = train_sae_once(sub_acts, config.sae_settings(), 0)[0]
            node_scores(sae_codes(sub_sae, sub_acts), torch.arange(2 * len(pairs)) < len(pairs), config.n_features)
            sae_at_baseline_pairs = time.perf_counter() - t1
    truth, truth_source, bb_attention = _ground_truth(model, config, baseline, prompts)

    settings = config.sae_settings()
    is_pos = torch.arange(2 * len(prompts)) < len(prompts)
    codes, nodes, edges, Us, trials = [], [], [], [], []
    bar = progress_bar(config.n_seeds, "SAE trials", unit="seed")
    try:
        for seed in range(config.n_seeds):
            t1 = time.perf_counter()
            sae, train_idx, losses = train_sae_once(acts, settings, seed)
            c = sae_codes(sae, acts)
            node = node_scores(c, is_pos, settings.n_features)
            U = unique_cooccurrence(c, is_pos, settings.n_features)
            edge = edge_scores(U, seed)
            sae_s = time.perf_counter() - t1
            codes.append(c.to(torch.int16))
            nodes.append(node.float())
            edges.append(edge.float())
            Us.append(U.float())
            trials.append({
                "seed": seed, "node_auc": roc_auc(truth.numpy(), node.numpy()), "edge_auc": roc_auc(truth.numpy(), edge.numpy()),
                "sae_s": sae_s, "final_loss": losses[-1], "distinct_codes": int(torch.unique(c).numel()),
                "train_positives": int(is_pos[train_idx].sum()),
            })
            bar.update(1)
    finally:
        bar.close()
    trials_df = pd.DataFrame(trials)
    node_t, edge_t = torch.stack(nodes), torch.stack(edges)
    share = baseline.share().flatten() if baseline is not None else torch.full((L * H,), float("nan"))
    heads = pd.DataFrame({
        "index": np.arange(L * H), "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
        "label": head_labels(model), "node_score": node_t.mean(0).numpy(), "node_score_std": node_t.std(0, unbiased=False).numpy(),
        "edge_score": edge_t.mean(0).numpy(), "edge_score_std": edge_t.std(0, unbiased=False).numpy(),
        "baseline_share": share.numpy(), "ground_truth": truth.numpy(),
    })
    if bb_attention is not None:
        heads["backcopy_attention"] = bb_attention.numpy()
    if attribution is not None:
        heads["attribution_share"] = attribution.share().flatten().numpy()
    if mean_ablation is not None:
        heads["mean_ablation_share"] = mean_ablation.share().flatten().numpy()
    pair_effects = {o.method: o.per_pair.flatten(1) for o in (baseline, attribution, mean_ablation) if o is not None}
    evidence = _evidence(config, baseline, pair_effects, truth, truth_source, node_t.mean(0), edge_t.mean(0), head_labels(model))
    U_mean = torch.stack(Us).mean(0)
    metrics = {"positive": pos_metric, "negative": neg_metric}
    if baseline is not None:
        metrics.update(baseline_positive=baseline.positive_metric, baseline_negative=baseline.negative_metric)
    baseline_auc = None
    if baseline is not None and not truth_source.startswith("baseline"):
        baseline_auc = roc_auc(truth.numpy(), baseline.share().flatten().abs().numpy())
    sae_mean = float(trials_df["sae_s"].mean())
    stats = {
        "task": config.task, "n_pairs": len(prompts), "n_heads": L * H, "n_layers": L, "heads_per_layer": H,
        "l1": settings.l1, "ground_truth_source": truth_source, "circuit_size": int(truth.sum()),
        "circuit": [head_labels(model)[i] for i in torch.nonzero(truth).flatten().tolist()],
        "accuracy": float((pos_metric > 0).float().mean()),
        "pair_accuracy": float((pos_metric > neg_metric).float().mean()),
        "positive_metric_mean": float(pos_metric.mean()), "positive_metric_std": float(pos_metric.std()),
        "negative_metric_mean": float(neg_metric.mean()), "negative_metric_std": float(neg_metric.std()),
        **_mean_std("node_auc", trials_df["node_auc"]), **_mean_std("edge_auc", trials_df["edge_auc"]),
        "activations_s": activations_s, "sae_s_per_trial": sae_mean, "sae_method_s": activations_s + sae_mean,
        "baseline_method": baseline.method if baseline is not None else None,
        "baseline_s": baseline.seconds if baseline is not None else None,
        "baseline_pairs": baseline.n_pairs if baseline is not None else 0,
        "baseline_total_effect": baseline.total_effect if baseline is not None else None,
        "baseline_auc_vs_truth": baseline_auc,
        "attribution_s": attribution.seconds if attribution is not None else None,
        "attribution_auc_vs_truth": roc_auc(truth.numpy(), attribution.share().flatten().abs().numpy()) if attribution is not None else None,
        "mean_ablation_s": mean_ablation.seconds if mean_ablation is not None else None,
        "mean_ablation_auc_vs_truth": roc_auc(truth.numpy(), mean_ablation.share().flatten().abs().numpy()) if mean_ablation is not None else None,
        "sae_method_s_at_baseline_pairs": sae_at_baseline_pairs,
        "evidence": evidence,
        "threshold": config.threshold,
        "paper_auc": list(PAPER_AUC[config.task]) if config.task in PAPER_AUC else None,
        "task_meta": {k: v for k, v in prompts.meta.items() if not isinstance(v, list)},
        "examples": {"positive": prompts.positive_text[:3], "negative": prompts.negative_text[:3]},
    }
    return SAECircuitsResult(
        heads=heads, trials=trials_df, codes=torch.stack(codes), node_scores=node_t, edge_scores=edge_t,
        cooccurrence=U_mean, metrics=metrics, graph=circuit_graph(U_mean, heads, config.graph_pairs), stats=stats,
        pair_effects=pair_effects,
    )


def _evidence(config: SAECircuitsConfig, baseline: BaselineOutcome | None, pair_effects: dict[str, torch.Tensor],
              truth: torch.Tensor, truth_source: str, node: torch.Tensor, edge: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """Split-half reliability of a patching ground truth and every method's AUC with a paired
    bootstrap interval over the baseline's pairs (see `probes.sae_circuits.evidence`)."""
    if baseline is None or baseline.n_pairs < 4 or config.n_boot == 0:
        return {}
    pos, neg = baseline.positive_metric.double().numpy(), baseline.negative_metric.double().numpy()
    effects = {k: v.double().numpy() for k, v in pair_effects.items()}
    from_pairs = truth_source.startswith("baseline")
    per_pair = {k: v for k, v in effects.items() if not (from_pairs and k == baseline.method)}
    aucs = auc_intervals(effects[baseline.method] if from_pairs else None, pos, neg, config.threshold, per_pair,
                         {"sae_node": node.double().numpy(), "sae_edge": edge.double().numpy()},
                         exact_truth=None if from_pairs else truth.numpy(), n_boot=config.n_boot)
    out: dict[str, Any] = {"auc": {k: {"value": e.value, "lo": e.lo, "hi": e.hi, "method": e.method} for k, e in aucs.items()}}
    if baseline.method in ("patching", "mean-ablation"):
        out["split_half"] = split_half(effects[baseline.method], pos, neg, config.threshold, labels)
    return out


PROMPT_TOKENS = 20  # a task prompt's length, roughly (IOI, greater-than)


def cost(config: SAECircuitsConfig, model_cfg) -> float | None:
    """Forward token-passes: head outputs of every prompt pair, the per-head patching baseline
    (every head of every layer re-run from its layer), and the SAE training on head outputs
    (small next to a forward pass: a twentieth of one per prompt token and epoch, per seed)."""
    pairs = config.n_prompts * PROMPT_TOKENS * 2
    baseline = config.baseline_prompts * PROMPT_TOKENS * 2 * ablation_passes(model_cfg) * (1 + config.mean_ablation_too) \
        + (config.baseline_prompts * PROMPT_TOKENS * 6 if config.attribution_too else 0)  # attribution: a forward and a backward
    training = config.n_seeds * config.epochs * config.n_prompts * PROMPT_TOKENS * 0.05
    return float(pairs + baseline + training)


SPEC = register(ProbeSpec(
    name="sae-circuits",
    description="Circuit discovery from discrete SAE codes on head outputs (node and edge scores, ROC AUC over seeds) "
                "beside a per-head activation-patching baseline.",
    config_cls=SAECircuitsConfig,
    result_cls=SAECircuitsResult,
    run=run,
    cost=cost,
    numerics="processed",
    needs_corpus=False,
    default_corpus=None,
))
