"""Attention sinks, value-state drains, residual-state peaks and active/dormant heads
(Guo et al. 2024, "Active-Dormant Attention Heads: Mechanistically Demystifying Extreme-Token
Phenomena in LLMs").

Per head (every layer, every query head), on a streamed corpus slice of each domain:
- sink mass: mean attention weight on position 0 over valid query positions q >= 1;
- Δlogit: score(q, 0) minus the mean score(q, k) over keys k = 1..q-1 (q >= 2), as a mean and as
  10/50/90% quantiles from a per-head histogram (scores are TransformerLens's `hook_attn_scores`,
  already divided by √d_head);
- value norms after W_O: ||v_t W_O^h|| per position t, with query head h reading the value of its
  KV group h // (n_heads / n_kv_heads) (grouped-query attention); b_O is not attributable to a
  position and is left out;
- zero-ablation: the change of next-token loss when the head's output z is zeroed, on a small
  slice of the domain (chunks spread evenly over the survey slice). Each layer is re-run from a
  cached resid_pre with the batch repeated once per head (copy h has head h zeroed), so a layer
  costs one batched forward of the layers above it.
Per layer: the residual norm at position 0 against the mean over the other positions
(layer 0 = embeddings, layer l = output of block l-1).

A head is dormant on a domain when its sink mass is at least `dormant_sink` and zeroing it moves
the loss by at most `dormant_loss` nats (thresholds are parameters; the paper gives none for LMs).

Deviation from the paper: the LM domains are Brown (prose) and the Python standard library (code)
instead of Wikipedia and GitHub, and the slices are small (CPU budget); BOS handling is recorded.

Bigram-Backcopy models are analysed by the `bigram-backcopy` probe (`probes.attention_sinks.dynamics`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from transformer_lens import HookedTransformer

from probes.attention_sinks.bigram_backcopy import task_of_model
from probes.attention_sinks.heads import (
    HeadSurveyAccumulator,
    HeadTables,
    dormancy_verdicts,
    head_ablation,
    spread_chunks,
)
from workbench.config import StreamConfig, setting
from workbench.corpora import known_corpora, load_corpus
from workbench.corpora.base import Corpus
from workbench.cost import ablation_passes
from workbench.errors import ConfigError
from workbench.models.info import model_info
from workbench.probe_api import ProbeSpec, register
from workbench.slices import corpus_batches, stream_corpus


@dataclass
class AttentionSinksConfig(StreamConfig):
    max_tokens: int | None = 8192  # survey positions per domain
    domains: list[str] = setting(default_factory=lambda: ["python-stdlib"], names="corpus", max_items=8, why="each domain is surveyed and ablated")  # besides the given corpus
    ablation_tokens: int = setting(1024, min=0, max=1_000_000, why="one forward pass per head per batch")  # per domain; 0 = no head ablation
    dormant_sink: float = setting(0.7, min=0.0, max=1.0, why="a share of attention")
    dormant_loss: float = setting(0.01, min=0.0, max=100.0, why="a loss change in nats")
    delta_range: float = setting(30.0, min=0.1, max=1000.0, why="the histogram range in logits")  # Δlogit histogram covers [-range, range]; outside values go to the edge bins
    example_len: int = setting(32, min=1, max=8192, why="longer than any supported context")  # positions kept of one example attention pattern per domain

    def validate(self) -> None:
        super().validate()
        if self.ablation_tokens < 0 or self.example_len < 2:
            raise ConfigError("ablation_tokens must be >= 0 and example_len >= 2")
        if not 0.0 <= self.dormant_sink <= 1.0:
            raise ConfigError(f"dormant_sink must lie in [0, 1], got {self.dormant_sink}")
        if self.delta_range <= 0 or self.dormant_loss < 0:
            raise ConfigError("delta_range must be positive and dormant_loss non-negative")


@dataclass
class AttentionSinksResult(HeadTables):
    """The LM survey: per-head and per-layer tables for each domain, profiles and example patterns."""

    def summary(self) -> dict:
        return self.domain_summary()


# ----------------------------------------------------------------------------- domains


def parse_domain(spec: str) -> tuple[str, list[str] | None]:
    """'name' or '<built-in name>:g1,g2' (a genre filter, e.g. 'brown:j')."""
    name, _, genres = spec.partition(":")
    if genres and name in known_corpora():
        return name, [g for g in genres.split(",") if g]
    return spec, None


def domain_label(corpus: Corpus) -> str:
    return corpus.name + (":" + ",".join(corpus.genres) if corpus.genres else "")


def load_domain(spec: str) -> Corpus:
    name, genres = parse_domain(spec)
    corpus = load_corpus(name)
    return corpus.filter_genres(genres) if genres else corpus


def survey_domain(model: HookedTransformer, corpus: Corpus, config: AttentionSinksConfig) -> dict[str, Any]:
    """The streamed per-head survey and the head ablation of one domain."""
    label = domain_label(corpus)
    acc = HeadSurveyAccumulator(model, config.seq_len, config.delta_range, config.example_len)
    with model.hooks(fwd_hooks=acc.sink_hooks.hooks()):
        stats, slice_info = stream_corpus(model, corpus, config, acc, desc=f"sinks-{label}")
    heads, layers = acc.head_table(label), acc.layer_table(label)
    clean = float(acc.state["loss_sum"] / acc.state["loss_count"].clamp(min=1))
    heads["loss_clean_survey"] = clean
    cost: dict[str, float] = {}
    if config.ablation_tokens > 0:
        batches = corpus_batches(model, corpus, config)
        chunks = spread_chunks(batches, max(1, config.ablation_tokens // config.seq_len))
        abl = head_ablation(model, chunks, f"head ablation {label}")
        cost = abl.cost
        heads["loss_clean"] = abl.clean
        heads["loss_ablated"] = abl.ablated.flatten().numpy()
        heads["delta_loss"] = heads["loss_ablated"] - abl.clean
        heads["delta_loss_se"] = abl.delta_se.flatten().numpy()
    else:
        heads["loss_clean"] = heads["loss_ablated"] = heads["delta_loss"] = heads["delta_loss_se"] = float("nan")
    heads["verdict"] = dormancy_verdicts(heads, config.dormant_sink, config.dormant_loss)
    heads["dormant"] = heads["verdict"] == "dormant"  # undecided heads are counted neither way
    sink_prof, val_prof = acc.profiles()
    ex_ids = acc.state["example_tokens"].long().cpu()
    ex_ids = ex_ids[ex_ids >= 0]
    tok = model.tokenizer
    ex_tokens = [tok.decode([int(i)]) for i in ex_ids] if tok is not None else [str(int(i)) for i in ex_ids]
    te = len(ex_tokens)
    return {
        "label": label, "heads": heads, "layers": layers, "sink": sink_prof, "value": val_prof,
        "example": acc.state["example"][:, :, :te, :te].float().cpu(), "example_tokens": ex_tokens,
        "meta": {**slice_info, **cost, "survey_tokens_per_s": stats.tokens_per_s},
    }


def domain_contrast(heads: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per head: sink mass and zero-ablation loss change on domains a and b, and their differences,
    sorted by how much the head's dormancy differs (|Δ sink mass|, then |Δ loss change|)."""
    cols = ["layer", "head", "sink_mass", "delta_loss", "dormant"] + (["delta_loss_se"] if "delta_loss_se" in heads else [])
    ha = heads[heads["domain"] == a][cols].set_index(["layer", "head"]).add_suffix("_a")
    hb = heads[heads["domain"] == b][cols].set_index(["layer", "head"]).add_suffix("_b")
    if ha.empty or hb.empty:
        raise ConfigError(f"domains {a!r} and {b!r} must both be in the result; it has {sorted(heads['domain'].unique())}")
    t = ha.join(hb)
    t["sink_diff"] = t["sink_mass_b"] - t["sink_mass_a"]
    t["delta_loss_diff"] = t["delta_loss_b"] - t["delta_loss_a"]
    t["flips"] = t["dormant_a"] != t["dormant_b"]
    t["score"] = t["sink_diff"].abs() + t["delta_loss_diff"].abs().fillna(0)
    return t.reset_index().sort_values("score", ascending=False, ignore_index=True)


def survey(model: HookedTransformer, corpus: Corpus, config: AttentionSinksConfig) -> AttentionSinksResult:
    if model.tokenizer is None:
        raise ConfigError("the head survey needs a model with a tokenizer")
    domains = {domain_label(corpus): corpus}
    for spec in config.domains:
        c = load_domain(spec)
        domains.setdefault(domain_label(c), c)
    parts = [survey_domain(model, c, config) for c in domains.values()]
    res = AttentionSinksResult(
        heads=pd.concat([p["heads"] for p in parts], ignore_index=True),
        layers=pd.concat([p["layers"] for p in parts], ignore_index=True),
        profiles={**{f"sink|{p['label']}": p["sink"] for p in parts}, **{f"value|{p['label']}": p["value"] for p in parts}},
        examples={p["label"]: p["example"] for p in parts},
        example_tokens={p["label"]: p["example_tokens"] for p in parts},
    )
    info = model_info(model)
    res.meta.update({"domains": {p["label"]: p["meta"] for p in parts}, "prepend_bos": config.prepend_bos,
                     "bos_token_id": info.bos_token_id, "kind": "lm"})
    return res


def run(model: HookedTransformer, corpus: Corpus | None, config: AttentionSinksConfig) -> AttentionSinksResult:
    """The LM survey over `corpus` and `config.domains`."""
    if task_of_model(model) is not None:
        raise ConfigError("this is a Bigram-Backcopy model: analyse it with the 'bigram-backcopy' probe")
    if corpus is None:
        raise ConfigError("the attention-sink survey of a language model needs a corpus (e.g. brown)")
    return survey(model, corpus, config)


def cost(config: AttentionSinksConfig, model_cfg) -> float | None:
    """Forward token-passes over every domain: the survey slice and the per-head ablation."""
    if config.max_tokens is None:
        return None
    return (1 + len(config.domains)) * (config.max_tokens + config.ablation_tokens * ablation_passes(model_cfg))

SPEC = register(ProbeSpec(
    name="attention-sinks",
    description="Attention sinks, value drains and residual peaks per head and layer of a language model; active/dormant "
                "heads per domain (zero-ablation).",
    config_cls=AttentionSinksConfig,
    result_cls=AttentionSinksResult,
    run=run,
    cost=cost,
))
