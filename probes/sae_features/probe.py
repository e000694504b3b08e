"""SAE feature pages: for every feature of one SAE, what SAE Lens users know from Neuronpedia and
SAEDashboard, computed in one streamed pass over a corpus slice and stored.

Per feature:
- the top activating contexts (the firing token with `context_before` tokens before it and
  `context_after` after), chosen by value then earliest position (`workbench.top_contexts`);
- the activation histogram (log10 of the positive activations, fixed bins) and the firing
  density (share of scored tokens where it is positive) with its mean activation;
- the tokens that fire it most often (counts of (feature, token) pairs, kept sparse);
- the logit effects: the decoder direction through the final norm's weight and the unembedding
  (W_dec[f] * w_ln) @ W_U, its top and bottom tokens. Like SAEDashboard this ignores the norm's
  per-position scale (a positive factor that does not change the ranking).

The SAE can be trained here ("trained:<layer>"), a local SAE Lens directory, or an SAE Lens
release ("release:sae_id"). Special tokens (BOS and the like) are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformer_lens import HookedTransformer

from workbench.config import StreamConfig, setting
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.distributed import merge_states
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.saes import check_fits, encode, hook_name, load_sae, quality_badge, recipe_quality, source_of
from workbench.saes.quality import scored_mask, special_token_ids
from workbench.slices import stream_corpus
from workbench.top_contexts import (
    POSITIONS_PER_BATCH,
    empty_contexts,
    merge_batch,
    token_windows,
    top_contexts,
)

HIST_RANGE = (-3.0, 3.0)  # log10 activation range of the histogram (values outside land in the end bins)


@dataclass
class SAEFeaturesConfig(StreamConfig):
    sae: str = setting("trained:15", names="sae")  # an SAE directory, "release:sae_id" or "trained:<layer>"
    max_tokens: int | None = 16_384
    top_contexts: int = setting(10, min=1, max=100, why="contexts kept per feature")
    context_before: int = setting(12, min=0, max=128, why="tokens shown per context")
    context_after: int = setting(4, min=0, max=128, why="tokens shown per context")
    hist_bins: int = setting(40, min=4, max=400, why="histogram bins per feature")
    n_logits: int = setting(10, min=1, max=100, why="tokens shown per side")
    n_tokens: int = setting(10, min=1, max=100, why="firing tokens kept per feature")

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.sae, str) or not self.sae.strip():
            raise ConfigError("sae is empty: give an SAE directory, 'release:sae_id' or 'trained:<layer>'")


class FeatureAccumulator:
    """Streams one SAE's per-feature statistics (see the module docstring)."""

    needs_logits = False

    def __init__(self, sae: Any, vocab: int, exclude: list[int], m: int, before: int, after: int, bins: int):
        self.sae, self.vocab, self.m, self.before, self.after, self.bins = sae, vocab, m, before, after, bins
        self.hook_names = [hook_name(sae)]
        self.exclude = torch.tensor(sorted(exclude), dtype=torch.long)
        d = sae.cfg.d_sae
        self.state: dict[str, torch.Tensor] = {
            "scored": torch.zeros((), dtype=torch.int64), "fired": torch.zeros(d, dtype=torch.int64),
            "act_sum": torch.zeros(d, dtype=torch.float64), "hist": torch.zeros(d, bins, dtype=torch.int64),
            "pair_keys": torch.zeros(0, dtype=torch.int64), "pair_counts": torch.zeros(0, dtype=torch.int64),
            **empty_contexts(d, m, before + 1 + after),
        }

    def identity(self) -> str:
        return f"{source_of(self.sae)}|m{self.m}.{self.before}.{self.after}|bins{self.bins}"

    def _to(self, dev: torch.device) -> None:
        if self.exclude.device != dev:
            self.exclude = self.exclude.to(dev)
            self.state = {k: v.to(dev) for k, v in self.state.items()}

    @torch.no_grad()
    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        x = acts[self.hook_names[0]]
        self._to(x.device)
        flat = scored_mask(batch, self.exclude).reshape(-1).nonzero().squeeze(1)
        if flat.numel() == 0:
            return
        s, d = self.state, self.sae.cfg.d_sae
        feats = encode(self.sae, x.reshape(-1, x.shape[-1])[flat]).float()  # [N, d]
        tok = batch.tokens.reshape(-1)[flat]
        pos, feat = (feats > 0).nonzero(as_tuple=True)
        v = feats[pos, feat]
        s["scored"] += flat.numel()
        s["fired"] += torch.bincount(feat, minlength=d)
        s["act_sum"].index_add_(0, feat, v.double())
        lo, hi = HIST_RANGE
        b = ((v.log10() - lo) / (hi - lo) * self.bins).floor().long().clamp(0, self.bins - 1)
        s["hist"].view(-1).index_add_(0, feat * self.bins + b, torch.ones_like(b))
        keys, counts = torch.unique(feat * self.vocab + tok[pos], return_counts=True)
        s["pair_keys"], s["pair_counts"] = _add_pairs(s["pair_keys"], s["pair_counts"], keys, counts)
        windows = token_windows(batch.tokens, batch.valid, self.before, self.after)[flat]
        positions = batch.index * POSITIONS_PER_BATCH + flat
        state = (s["top_vals"], s["top_pos"], s["top_ctx"])
        s["top_vals"], s["top_pos"], s["top_ctx"] = merge_batch(state, feats, windows, positions, self.m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone().to(self.exclude.device) for k, v in state.items()}

    def merge_states(self, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Ranks' states merged: sums added, (feature, token) pairs combined, top contexts the top m
        of every rank's candidates."""
        rules = {"top_vals": "first", "top_pos": "first", "top_ctx": "first", "pair_keys": "first", "pair_counts": "first"}
        out = merge_states(states, rules)
        keys, counts = states[0]["pair_keys"], states[0]["pair_counts"]
        for st in states[1:]:
            keys, counts = _add_pairs(keys, counts, st["pair_keys"], st["pair_counts"])
        out["pair_keys"], out["pair_counts"] = keys, counts
        cat = [torch.cat([st[n] for st in states], dim=1) for n in ("top_vals", "top_pos", "top_ctx")]
        out["top_vals"], out["top_pos"], out["top_ctx"] = top_contexts(*cat, self.m)
        return out


def _add_pairs(keys: torch.Tensor, counts: torch.Tensor, new_keys: torch.Tensor, new_counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse counts: the union of two sorted key sets with their counts added."""
    allk = torch.cat([keys, new_keys])
    uniq, inv = torch.unique(allk, return_inverse=True)
    out = torch.zeros(uniq.numel(), dtype=torch.int64, device=uniq.device)
    out.index_add_(0, inv, torch.cat([counts, new_counts]))
    return uniq, out


def top_tokens_per_feature(keys: np.ndarray, counts: np.ndarray, vocab: int, d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[d, n] token ids (-1 padded) and counts of the tokens that fire each feature most often
    (equal counts by token id)."""
    feat, tok = keys // vocab, keys % vocab
    order = np.lexsort((tok, -counts, feat))
    feat, tok, counts = feat[order], tok[order], counts[order]
    start = np.searchsorted(feat, np.arange(d))
    rank = np.arange(feat.size) - start[feat]
    keep = rank < n
    ids, cnt = np.full((d, n), -1, dtype=np.int64), np.zeros((d, n), dtype=np.int64)
    ids[feat[keep], rank[keep]], cnt[feat[keep], rank[keep]] = tok[keep], counts[keep]
    return ids, cnt


@torch.no_grad()
def logit_effects(model: HookedTransformer, sae: Any, n: int, chunk: int = 256) -> dict[str, torch.Tensor]:
    """Each feature's top and bottom `n` tokens by (W_dec[f] * w_ln) @ W_U."""
    W_U = model.W_U.float()
    w = getattr(getattr(model, "ln_final", None), "w", None)
    tops, top_ids, bots, bot_ids = [], [], [], []
    for s in range(0, sae.cfg.d_sae, chunk):
        dirs = sae.W_dec[s:s + chunk].float().to(W_U.device)
        effect = (dirs * w.float() if w is not None else dirs) @ W_U
        v, i = effect.topk(n, dim=1)
        tops.append(v.cpu()), top_ids.append(i.cpu())
        v, i = effect.topk(n, dim=1, largest=False)
        bots.append(v.cpu()), bot_ids.append(i.cpu())
    return {"logit_top": torch.cat(tops), "logit_top_ids": torch.cat(top_ids),
            "logit_bottom": torch.cat(bots), "logit_bottom_ids": torch.cat(bot_ids)}


# (lower, upper, label): densities in (lower, upper]; the browser's order of bands
DENSITY_BANDS = ((1e-3, 1e-2, "1e-3–1e-2"), (1e-4, 1e-3, "1e-4–1e-3"), (0.0, 1e-4, "≤1e-4"), (1e-2, 5e-2, "1e-2–5e-2"),
                 (5e-2, 1.0, "dense >5%"))


@dataclass
class SAEFeaturesResult(Result):
    sae: dict = field(default_factory=dict)  # source, hook, d_sae
    tensors: dict = field(default_factory=dict)  # per-feature arrays, see `run`
    token_strings: dict = field(default_factory=dict)  # id (str) -> text for every stored id

    @property
    def d_sae(self) -> int:
        return int(self.sae.get("d_sae", 0))

    def _text(self, i: int) -> str:
        return self.token_strings.get(str(int(i)), f"<{int(i)}>")

    def check_feature(self, feature: int) -> int:
        if not isinstance(feature, int) or not 0 <= feature < self.d_sae:
            raise ConfigError(f"feature {feature!r} is out of range 0..{self.d_sae - 1}")
        return feature

    def density(self) -> torch.Tensor:
        """Share of scored tokens where each feature fires."""
        return self.tensors["fired"].double() / max(int(self.tensors["scored"]), 1)

    def feature(self, feature: int) -> dict[str, Any]:
        """Everything the feature page shows of one feature."""
        f, t = self.check_feature(int(feature)), self.tensors
        fired = int(t["fired"][f])
        lo, hi = HIST_RANGE
        bins = t["hist"].shape[1]
        edges = np.linspace(lo, hi, bins + 1)
        contexts = []
        for v, window in zip(t["top_vals"][f].tolist(), t["top_ctx"][f].tolist()):
            if v <= 0:
                continue
            before = int(self.meta.get("context_before", 12))
            keep = [i for i, x in enumerate(window) if x >= 0]
            contexts.append({"activation": v, "tokens": [self._text(window[i]) for i in keep],
                             "focus": keep.index(before) if before in keep else None})
        tokens = [(self._text(i), int(c)) for i, c in zip(t["top_token_ids"][f].tolist(), t["top_token_counts"][f].tolist()) if i >= 0]
        return {
            "feature": f, "fired": fired, "density": fired / max(int(t["scored"]), 1),
            "mean_activation": float(t["act_sum"][f]) / max(fired, 1),
            "hist_counts": t["hist"][f].tolist(), "hist_edges": edges.tolist(), "contexts": contexts,
            "top_tokens": tokens,
            "top_token_ids": [int(i) for i in t["top_token_ids"][f].tolist() if i >= 0],
            "logit_top": [(self._text(i), float(v)) for i, v in zip(t["logit_top_ids"][f].tolist(), t["logit_top"][f].tolist())],
            "logit_bottom": [(self._text(i), float(v)) for i, v in zip(t["logit_bottom_ids"][f].tolist(), t["logit_bottom"][f].tolist())],
        }

    def live_features(self) -> list[int]:
        """Features that fired at least once, most often first."""
        fired = self.tensors["fired"]
        order = torch.argsort(fired, descending=True, stable=True)
        return [int(i) for i in order if fired[i] > 0]

    def features_by_band(self) -> list[tuple[int, str]]:
        """Live features as a feature browser offers them (as Neuronpedia filters by density):
        by density band, the band where interpretable features usually sit first (1e-3 to 1e-2
        of tokens), then the rarer ones, then the denser, and features firing on more than 5% of
        tokens (often position or frequency features) last; most often firing first within a band.
        Dead features are left out. Pairs of (feature, band label)."""
        dens = self.density()
        out = []
        for lo, hi, label in DENSITY_BANDS:
            band = [int(i) for i in torch.nonzero((dens > lo) & (dens <= hi)).flatten()]
            band.sort(key=lambda i: (-float(dens[i]), i))
            out += [(i, label) for i in band]
        return out

    def nearest_live(self, feature: int, n: int = 3) -> list[int]:
        """The `n` live features with the nearest indices to `feature` (for a dead one typed in)."""
        live = torch.nonzero(self.tensors["fired"] > 0).flatten().tolist()
        return sorted(sorted(live, key=lambda i: (abs(i - feature), i))[:n])

    def summary(self) -> dict[str, Any]:
        if not self.tensors:
            return {}
        dens = self.density()
        return {"sae": self.sae.get("source"), "d_sae": self.d_sae, "scored_tokens": int(self.tensors["scored"]),
                "dead_share": round(float((self.tensors["fired"] == 0).double().mean()), 4),
                "median_density_live": round(float(dens[dens > 0].median()), 6) if bool((dens > 0).any()) else 0.0,
                "sae_quality": quality_badge(self.sae.get("quality"))}


def run(model: HookedTransformer, corpus: Corpus, config: SAEFeaturesConfig) -> SAEFeaturesResult:
    if model.tokenizer is None:
        raise ConfigError("sae-features needs a model with a tokenizer")
    sae = load_sae(config.sae, model=model, corpus_name=corpus.name)
    check_fits(sae, model)
    acc = FeatureAccumulator(sae, model.cfg.d_vocab, special_token_ids(model), config.top_contexts, config.context_before,
                             config.context_after, config.hist_bins)
    _, slice_info = stream_corpus(model, corpus, config, acc, desc="sae-features")
    s = {k: v.cpu() for k, v in acc.state.items()}
    d = sae.cfg.d_sae
    ids, cnt = top_tokens_per_feature(s["pair_keys"].numpy(), s["pair_counts"].numpy(), model.cfg.d_vocab, d, config.n_tokens)
    tensors = {k: s[k] for k in ("scored", "fired", "act_sum", "hist", "top_vals", "top_ctx")}
    tensors |= {"top_token_ids": torch.from_numpy(ids), "top_token_counts": torch.from_numpy(cnt)}
    tensors |= logit_effects(model, sae, config.n_logits)
    used = torch.cat([tensors["top_ctx"].flatten().long(), tensors["top_token_ids"].flatten(), tensors["logit_top_ids"].flatten(),
                      tensors["logit_bottom_ids"].flatten()])
    used = sorted(set(used[used >= 0].tolist()))
    strings = dict(zip(map(str, used), model.tokenizer.batch_decode([[i] for i in used])))
    return SAEFeaturesResult(
        meta={"slice": slice_info, "context_before": config.context_before, "context_after": config.context_after},
        sae={"source": source_of(sae), "hook": hook_name(sae), "d_sae": d, "asked": config.sae, "quality": recipe_quality(sae)},
        tensors=tensors, token_strings=strings,
    )


@torch.no_grad()
def feature_activations(model: HookedTransformer, sae: Any, text: str, feature: int) -> tuple[list[str], list[float]]:
    """A feature's activation at each token of `text` (with BOS, as the corpus was read)."""
    from workbench.prompt_analysis import MAX_TOKENS, check_prompt

    check_prompt(text)
    if not 0 <= feature < sae.cfg.d_sae:
        raise ConfigError(f"feature {feature} is out of range 0..{sae.cfg.d_sae - 1}")
    tokens = model.to_tokens(text, prepend_bos=True)[0][:MAX_TOKENS]
    name = hook_name(sae)
    _, cache = model.run_with_cache(tokens[None], names_filter=lambda n: n == name)
    acts = encode(sae, cache[name][0])[:, feature].float().cpu().tolist()
    return model.tokenizer.batch_decode([[int(t)] for t in tokens]), acts


def cost(config: SAEFeaturesConfig, model_cfg) -> float | None:
    """Forward token-passes: the slice (the SAE's encoder is small beside the model)."""
    return None if config.max_tokens is None else float(config.max_tokens)


SPEC = register(ProbeSpec(
    name="sae-features",
    description="Per-feature dashboards of one SAE: top contexts, activation histogram and density, firing tokens, logit effects.",
    config_cls=SAEFeaturesConfig,
    result_cls=SAEFeaturesResult,
    run=run,
    cost=cost,
))
