"""Bigram-Backcopy analysis of attention sinks (Guo et al. 2024, "Active-Dormant Attention Heads",
Section 3): on a model trained on the Bigram-Backcopy task (`probes.attention_sinks.bigram_backcopy`),
the per-head quantities of the LM survey on a fixed, seeded batch of BB sequences, with the paper's
split by query type (trigger / non-trigger; its sink mass is over non-trigger queries), the
backcopy and bigram risks with the exact optimum and with the oracle risk (the true transition
matrix's cross-entropy on the same bigram positions, the paired reference: the batch's own oracle
risk varies by several percent around the optimum), the paper's ablations (all attention or all
MLPs removed), the token-level active/dormant test (input [⟨s⟩, all non-triggers, tok]; tok is
active when the last position's attention on ⟨s⟩ is below `dormant_threshold`), and the same
quantities at every saved checkpoint of the training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.attention_sinks.bigram_backcopy import bb_risks, paired_gap, task_of_model
from probes.attention_sinks.heads import (
    HeadTables,
    _quantiles,
    dormancy_verdicts,
    head_ablation,
    reduce_inputs,
    reduce_pattern,
)
from workbench import hooks
from workbench.config import ConfigBase, setting
from workbench.corpora.base import Corpus
from workbench.errors import ConfigError
from workbench.models.checkpoint import load_checkpoint
from workbench.models.info import model_info
from workbench.probe_api import ProbeSpec, register
from workbench.progress import progress_bar


@dataclass
class BigramBackcopyConfig(ConfigBase):
    bb_sequences: int = setting(64, min=1, max=4096, why="one evaluation batch in memory")  # size of the fixed evaluation batch (sequences of 256)
    dynamics_sequences: int = setting(32, min=1, max=4096, why="one evaluation batch in memory")  # the first this many of them, at every checkpoint
    bb_seed: int = setting(2024, min=0, max=2**31 - 1, why="seeds are 31-bit")
    dormant_threshold: float = setting(0.89, min=0.0, max=1.0, why="a share of attention")  # token-level test (paper: 0.89)
    dynamics: bool = True  # measure every saved checkpoint of the run
    dormant_sink: float = setting(0.7, min=0.0, max=1.0, why="a share of attention")
    dormant_loss: float = setting(0.01, min=0.0, max=100.0, why="a loss change in nats")
    example_len: int = setting(32, min=2, max=8192, why="longer than any supported context")  # positions kept of one example pattern

    def validate(self) -> None:
        if self.bb_sequences < 1 or self.dynamics_sequences < 1 or self.example_len < 2:
            raise ConfigError("bb_sequences and dynamics_sequences must be >= 1, example_len >= 2")
        for name in ("dormant_sink", "dormant_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.dormant_loss < 0:
            raise ConfigError("dormant_loss must be non-negative")


# the summary's risk keys (results stored before the paired comparison lack the last two)
BB_SUMMARY_KEYS = ("backcopy_risk", "bigram_risk", "bigram_optimum", "bigram_oracle_risk", "bigram_paired_gap")


@dataclass
class BigramBackcopyResult(HeadTables):
    """The head tables on BB sequences (domain "bb"), plus the token-level test, the training
    dynamics and the risks."""

    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # token-level active/dormant, per layer
    dynamics: pd.DataFrame = field(default_factory=pd.DataFrame)  # per (step, layer, head)
    bb: dict[str, Any] = field(default_factory=dict)  # risks, optimum, oracle risk, paired gap, ablations

    def summary(self) -> dict:
        out = self.domain_summary()
        out.update({k: round(float(v), 5) for k, v in self.bb.items() if k in BB_SUMMARY_KEYS})
        if not self.tokens.empty:
            last = self.tokens[self.tokens["layer"] == self.tokens["layer"].max()]
            out["token_rule_agreement"] = round(float(last["agrees"].mean()), 4)
        return out


def bb_snapshot(model: HookedTransformer, task, data: torch.Tensor,
                same_token: bool = False) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """One row per (layer, head): the paper's four quantities on a fixed batch of BB sequences
    `data` [N, T+1], split by query type (the residual norms are those after the row's block;
    `embed_*` before block 0), the backcopy and bigram risks from the same forward pass, and the
    per-position reductions they come from (with "st", see `reduce_inputs`, if `same_token`)."""
    inputs = data[:, :-1]
    trig, bigram = task.position_masks(inputs)
    r = reduce_inputs(model, inputs, targets=data[:, 1:], key_mask=trig, same_token=same_token)
    risks = {"backcopy_risk": float(r["ce"][trig].double().mean()), "bigram_risk": float(r["ce"][bigram].double().mean()),
             "loss": float(r["ce"].double().mean())}
    T = inputs.shape[1]
    pos = torch.arange(T)
    dl_ok = pos >= 2
    first, rest = pos == 0, pos >= 1
    rows = []
    for l in range(model.cfg.n_layers):
        for h in range(model.cfg.n_heads):
            sink, dl, vn = r["sink"][l, :, h], r["dl"][l, :, h], r["vn"][l, :, h]
            q_nt, q_t = _quantiles(dl[bigram & dl_ok]), _quantiles(dl[trig & dl_ok])
            rows.append({
                "layer": l, "head": h,
                "sink_mass": float(sink[bigram].mean()), "sink_mass_trigger": float(sink[trig].mean()),
                # ⟨s⟩'s weight on itself: 1 under softmax, the raw ReLU(score) under ReLU attention (i = 1)
                "sink_self_weight": float(sink[:, 0].mean()),
                "trigger_key_mass": float(r["km"][l, :, h][bigram].mean()),
                "delta_logit": float(dl[bigram & dl_ok].mean()), "delta_logit_trigger": float(dl[trig & dl_ok].mean()),
                "delta_logit_q10": q_nt[0], "delta_logit_q50": q_nt[1], "delta_logit_q90": q_nt[2],
                "delta_logit_trigger_q10": q_t[0], "delta_logit_trigger_q50": q_t[1], "delta_logit_trigger_q90": q_t[2],
                "value_norm_first": float(vn[:, first].mean()), "value_norm_rest": float(vn[:, rest].mean()),
                "resid_first": float(r["rn"][l + 1][:, 0].mean()), "resid_rest": float(r["rn"][l + 1][:, 1:].mean()),
                "embed_first": float(r["rn"][0][:, 0].mean()), "embed_rest": float(r["rn"][0][:, 1:].mean()),
                **risks,
            })
    return pd.DataFrame(rows), r


def token_dormancy(model: HookedTransformer, task, threshold: float) -> pd.DataFrame:
    """The paper's token-level test on [⟨s⟩, all non-triggers, tok]: attention on ⟨s⟩ at the last
    position, per layer; tok is active below `threshold`. The paper's rule: active iff trigger."""
    inputs = task.dormancy_inputs()
    r = reduce_inputs(model, inputs)
    rows = []
    for l in range(model.cfg.n_layers):
        for tok in range(task.n_chars):
            a = float(r["sink"][l, tok, 0, -1])
            trig = bool(task.is_trigger[tok])
            rows.append({"layer": l, "token_id": tok, "token": task.chars[tok], "is_trigger": trig,
                         "sink_last": a, "active": a < threshold, "paper_active": trig, "agrees": (a < threshold) == trig})
    return pd.DataFrame(rows)


def by_input_token(task, inputs: torch.Tensor, columns: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Per (layer, character): the share of the sampled bigram positions whose input is that
    character ("data_share") and, for each named [L, B, H, T] reduction of `reduce_inputs`, its mean
    over those positions (head 0). With the sink weight this is how the pooled sink mass of the
    data splits over query characters; with "st", how much attention each character puts on
    earlier copies of itself (a dormant mode that competes with ⟨s⟩)."""
    _, bigram = task.position_masks(inputs)
    q = inputs[bigram]
    n = torch.bincount(q, minlength=task.n_chars)[: task.n_chars].double()
    L = next(iter(columns.values())).shape[0]
    rows = []
    for l in range(L):
        means = {}
        for name, x in columns.items():
            tot = torch.bincount(q, weights=x[l, :, 0][bigram].double(), minlength=task.n_chars)[: task.n_chars]
            means[name] = torch.where(n > 0, tot / n.clamp(min=1), torch.full_like(tot, float("nan")))
        rows += [{"layer": l, "token_id": t, "data_share": float(n[t] / n.sum()), **{k: float(v[t]) for k, v in means.items()}}
                 for t in range(task.n_chars)]
    return pd.DataFrame(rows)


def bb_ablations(model: HookedTransformer, task, n_seqs: int, seed: int) -> dict[str, float]:
    """Risks with all attention outputs, or all MLP outputs, zeroed (the paper's ablations)."""

    out: dict[str, float] = {}
    for part, site in (("no_attention", hooks.attn_out), ("no_mlp", hooks.mlp_out)):
        zero = [(site(l), lambda x, hook: torch.zeros_like(x)) for l in range(model.cfg.n_layers)]
        with model.hooks(fwd_hooks=zero):
            rk = bb_risks(model, task, n_seqs=n_seqs, seed=seed)
        out[f"{part}_backcopy_risk"], out[f"{part}_bigram_risk"] = rk["backcopy_risk"], rk["bigram_risk"]
    return out


def sibling_checkpoints(model: HookedTransformer) -> dict[int, Path]:
    """The other saved steps of the training run a checkpoint belongs to (up to its own step)."""
    info = model_info(model)
    if info.source != "checkpoint" or not info.path:
        return {}
    here = Path(info.path)
    step = int(info.extra.get("meta", {}).get("step", 10**12))
    found = {}
    for p in sorted(here.parent.glob("step_*")):
        s = int(p.name.split("_")[1])
        if s <= step and (p / "model.safetensors").exists():
            found[s] = p
    return found


def bb_dynamics(model: HookedTransformer, task, data: torch.Tensor) -> pd.DataFrame:
    """`bb_snapshot` (quantities and risks) at every saved checkpoint of the model's run."""

    ckpts = sibling_checkpoints(model)
    device = str(next(model.parameters()).device)
    frames = []
    bar = progress_bar(len(ckpts), "BB dynamics", unit="ckpt")
    try:
        for step, path in ckpts.items():
            m, _ = load_checkpoint(path, device=device)
            snap, _ = bb_snapshot(m, task, data)
            snap.insert(0, "step", step)
            frames.append(snap)
            bar.update(1)
    finally:
        bar.close()
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def bb_analysis(model: HookedTransformer, task, config: BigramBackcopyConfig) -> BigramBackcopyResult:

    data = task.sample(config.bb_sequences, model.cfg.n_ctx, config.bb_seed)
    inputs = data[:, :-1]
    snap, r = bb_snapshot(model, task, data, same_token=True)
    scored = torch.ones_like(inputs, dtype=torch.bool)
    chunks = [(inputs[i : i + 32], data[i : i + 32, 1:], scored[i : i + 32]) for i in range(0, inputs.shape[0], 32)]
    abl = head_ablation(model, chunks, "BB head ablation", progress=False)
    cost = abl.cost
    heads = snap.assign(domain="bb", kv_group=snap["head"], loss_clean=abl.clean, loss_ablated=abl.ablated.flatten().numpy())
    heads["delta_loss"] = heads["loss_ablated"] - abl.clean
    heads["delta_loss_se"] = abl.delta_se.flatten().numpy()
    heads["verdict"] = dormancy_verdicts(heads, config.dormant_sink, config.dormant_loss)
    heads["dormant"] = heads["verdict"] == "dormant"  # undecided heads are counted neither way
    L = model.cfg.n_layers
    rn = r["rn"]
    layers = pd.DataFrame({
        "domain": "bb", "layer": np.arange(L + 1), "site": ["embed"] + [hooks.resid_post(l) for l in range(L)],
        "resid_first": rn[:, :, 0].mean(1).numpy(), "resid_rest": rn[:, :, 1:].mean((1, 2)).numpy(),
        "resid_rest_std": rn[:, :, 1:].flatten(1).std(1).numpy(),
    })
    layers["ratio"] = layers["resid_first"] / layers["resid_rest"]
    _, bigram = task.position_masks(inputs)
    q = bigram.double()
    sink_prof = (torch.einsum("lbht,bt->lht", r["sink"].double(), q) / q.sum(0).clamp(min=1)).float()
    val_prof = r["vn"].mean(1)
    risks = {k: float(snap[k].iloc[0]) for k in ("backcopy_risk", "bigram_risk", "loss")}
    oracle = task.oracle_bigram_risk(data)  # same sequences, same bigram positions as risks["bigram_risk"]
    bb = {**risks, "bigram_optimum": task.bigram_optimum(inputs.shape[1]), "bigram_oracle_risk": oracle,
          "bigram_paired_gap": paired_gap(risks["bigram_risk"], oracle),
          **bb_ablations(model, task, config.bb_sequences, config.bb_seed),
          "triggers": [task.chars[i] for i in task.triggers], "corpus": task.corpus, "charset": task.charset,
          "n_chars": task.n_chars}
    te = min(config.example_len, inputs.shape[1])
    ex_in = inputs[:1, :te]
    ex = reduce_pattern(model, ex_in)
    res = BigramBackcopyResult(
        heads=heads, layers=layers, profiles={"sink|bb": sink_prof, "value|bb": val_prof},
        examples={"bb": ex}, example_tokens={"bb": [task.token_str(int(i)) for i in ex_in[0]]},
        tokens=token_dormancy(model, task, config.dormant_threshold)
        .merge(by_input_token(task, inputs, {"data_sink": r["sink"], "data_same_token": r["st"]}), on=["layer", "token_id"]),
        dynamics=bb_dynamics(model, task, data[: config.dynamics_sequences]) if config.dynamics else pd.DataFrame(), bb=bb,
    )
    res.meta.update({"kind": "bb", "domains": {"bb": {"sequences": config.bb_sequences, "seed": config.bb_seed, **cost}},
                     "prepend_bos": True, "bos_token_id": task.bos_id})
    return res


def run(model: HookedTransformer, corpus: Corpus | None, config: BigramBackcopyConfig) -> BigramBackcopyResult:
    """The BB analysis of a model trained on the task (its sequences come from the task, not a corpus)."""
    task = task_of_model(model)
    if task is None:
        raise ConfigError("the 'bigram-backcopy' probe needs a model trained on the Bigram-Backcopy task "
                          "(a checkpoint from train_bb); survey a language model with 'attention-sinks'")
    return bb_analysis(model, task, config)


SPEC = register(ProbeSpec(
    name="bigram-backcopy",
    description="Attention sinks on a Bigram-Backcopy toy model: per-head sinks and risks, token-level active/dormant "
                "heads, the paper's ablations, and the training dynamics over the run's checkpoints.",
    config_cls=BigramBackcopyConfig,
    result_cls=BigramBackcopyResult,
    run=run,
    needs_corpus=False,
    default_corpus=None,
    default_model="",  # it runs on a model trained on the task, never on a language model
    model_hint="a Bigram-Backcopy checkpoint directory (experiments/attention_sinks.py trains them under <cache>/bb/)",
))
