"""Attention on the first position from function-token and from content-token queries, per head
(the probe behind the cross-analysis's view (a)), and, with SAEs, how often each feature fires on
each kind of token (behind view (c)).

Function tokens are the most frequent types covering `mass` of the corpus under the model's own
tokenizer: the function-tokens probe's rule (`probes.function_tokens.function_token_ids`). Query
positions are valid, non-BOS positions q >= 1; the attention weight on position 0 is read from
every layer's `hook_pattern` as the batch streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from probes.function_tokens import function_token_ids, token_stats
from workbench import hooks
from workbench.config import StreamConfig, setting
from workbench.corpora.base import Corpus
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.saes import encode, hook_layer, hook_name, load_sae, special_token_ids
from workbench.slices import stream_corpus


@dataclass
class SinksByTokenKindConfig(StreamConfig):
    max_tokens: int | None = 2048
    mass: float = setting(0.4, min=0.0, max=1.0, why="a share of token occurrences")  # the function-token set's share
    saes: list[str] = setting(default_factory=list, names="sae", max_items=8, why="every SAE encodes every batch")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.mass <= 1:
            raise ConfigError(f"mass must be in (0, 1], got {self.mass}")


@dataclass
class SinksByTokenKindResult(Result):
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)  # layer, head, sink_function, sink_content
    fires: dict[str, torch.Tensor] = field(default_factory=dict)  # "<sae label>|function", "<sae label>|content": [d_sae]
    function_ids: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def fire_counts(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        return self.fires[f"{label}|function"].numpy(), self.fires[f"{label}|content"].numpy()

    @property
    def sae_labels(self) -> list[str]:
        return sorted({k.split("|")[0] for k in self.fires})

    def summary(self) -> dict:
        if self.heads.empty:
            return {}
        d = self.heads["sink_function"] - self.heads["sink_content"]
        return {"mean_function_minus_content": round(float(d.mean()), 4), "share_function_gt_content": round(float((d > 0).mean()), 3),
                **self.counts}


def function_set(model: HookedTransformer, corpus: Corpus, mass: float) -> tuple[torch.Tensor, np.ndarray]:
    """Boolean [d_vocab] mask of function tokens and their ids, by the function-tokens probe's rule."""
    stats = token_stats(model.tokenizer, corpus, "all", special_token_ids(model))
    ids = function_token_ids(stats.counts, mass)
    mask = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    mask[torch.as_tensor(ids[ids < model.cfg.d_vocab])] = True
    return mask, ids


class FunctionSinkAccumulator:
    """Per head: attention on position 0 summed separately over function-token and content-token
    queries (valid, q >= 1, not BOS). With SAEs, per feature: how often it fires on each kind."""

    needs_logits = False

    def __init__(self, model: HookedTransformer, is_function: torch.Tensor, saes: dict[str, Any] | None = None):
        self.L, self.H = model.cfg.n_layers, model.cfg.n_heads
        self.is_function = is_function
        self.saes = saes or {}
        self.sae_hooks = {label: hook_name(sae) for label, sae in self.saes.items()}
        self.hook_names = sorted(set(self.sae_hooks.values()) | {hooks.resid_post(self.L - 1)})
        self.pending: dict[int, torch.Tensor] = {}
        dev = next(model.parameters()).device
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=dev)  # noqa: E731
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
        self.state["sink_f"] += torch.einsum("lbht,bt->lh", sink, mf)
        self.state["sink_c"] += torch.einsum("lbht,bt->lh", sink, mc)
        self.state["n_f"] += mf.sum()
        self.state["n_c"] += mc.sum()
        for label, sae in self.saes.items():
            x = acts[self.sae_hooks[label]]
            feats = encode(sae, x[query]) > 0  # [n, d_sae]
            is_f = fn[query]
            self.state[f"{label}/fires_f"] += feats[is_f].sum(0).double()
            self.state[f"{label}/fires_c"] += feats[~is_f].sum(0).double()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dev = self.state["sink_f"].device
        self.state = {k: v.clone().to(dev) for k, v in state.items()}

    def head_table(self) -> pd.DataFrame:
        s = self.state
        f = (s["sink_f"] / s["n_f"].clamp(min=1)).cpu().numpy()
        c = (s["sink_c"] / s["n_c"].clamp(min=1)).cpu().numpy()
        layer, head = np.meshgrid(np.arange(self.L), np.arange(self.H), indexing="ij")
        return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "sink_function": f.ravel(), "sink_content": c.ravel()})


def run(model: HookedTransformer, corpus: Corpus, config: SinksByTokenKindConfig) -> SinksByTokenKindResult:
    if model.tokenizer is None:
        raise ConfigError("the function/content split needs a model with a tokenizer")
    is_function, ids = function_set(model, corpus, config.mass)
    saes = {}
    for src in config.saes:
        sae = load_sae(src, model=model, corpus_name=corpus.name)  # on the model's device
        saes[f"L{hook_layer(sae)}"] = sae
    acc = FunctionSinkAccumulator(model, is_function, saes)
    with model.hooks(fwd_hooks=acc.hooks()):
        _, info = stream_corpus(model, corpus, config, acc, desc="sinks-by-token-kind")
    fires = {}
    for label in saes:
        fires[f"{label}|function"] = acc.state[f"{label}/fires_f"].cpu()
        fires[f"{label}|content"] = acc.state[f"{label}/fires_c"].cpu()
    res = SinksByTokenKindResult(heads=acc.head_table(), fires=fires, function_ids=[int(i) for i in ids],
                                 counts={"n_function_queries": int(acc.state["n_f"]), "n_content_queries": int(acc.state["n_c"]),
                                         "n_function_tokens": int(len(ids))})
    res.meta["slice"] = info
    return res


SPEC = register(ProbeSpec(
    name="sinks-by-token-kind",
    description="Per head: attention on the first position from function-token and from content-token queries; "
                "with SAEs, each feature's firing counts on either kind.",
    config_cls=SinksByTokenKindConfig,
    result_cls=SinksByTokenKindResult,
    run=run,
))
