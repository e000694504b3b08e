"""Function tokens and SAE features: the token-feature bipartite graph of "Memory Retrieval and
Consolidation in LLMs through Function Tokens" (arXiv 2510.08203).

- Function-token set: token types ranked by frequency in a corpus with the model's tokenizer; the
  smallest top set whose counts cover `mass` (default 40%) of all token occurrences. Special
  tokens (BOS/EOS/PAD) are not counted. Beyond the paper: with a POS-tagged corpus (Brown), the
  overlap of that set with closed-class words (tags mapped onto tokens through word spans).
- Bipartite graph over a streamed corpus slice: an edge (token type t, feature f) when f's SAE
  activation is above 0 at some position whose current token is t; BOS, padding and the EOS
  document separator are excluded. Kept as a dense boolean [token types in slice, d_sae] matrix
  (rows only for the types the slice holds), so no [tokens, d_model] tensor is ever held.
- From it: token degrees, feature degrees, degree against frequency rank, and the cumulative
  coverage of the top-k tokens' neighbourhoods, with both denominators (all SAE features; features
  active anywhere in the slice). The paper does not say which denominator it used.
- A networkx graph of the top tokens x their strongest features (edge weight: mean activation per
  occurrence of the token), exportable to GraphML / node-link JSON; and, per feature, its top
  activating contexts in the slice (for the dashboard).

Choices and deviations: frequency ranks come from the counting corpus (default: all of Brown);
coverage ranks the token types present in the slice by that frequency. The paper uses Gemma
Scope SAEs of width 2^20 on Gemma-2-9B over ~5M SlimPajama tokens; the workbench's default uses
its own TopK SAEs (width 4608) on SmolLM2-135M over a Brown slice, so absolute coverage differs.
Several SAEs (layers) are accumulated in one forward pass that stops after the deepest hooked layer.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.activations import stream
from workbench.active_run import scratch_dir
from workbench.config import StreamConfig, setting
from workbench.corpora.base import SPLITS, Corpus
from workbench.corpora.brown import is_closed_class
from workbench.corpora.tokenized import TokenBatch, tokenize_corpus, tokenizer_id
from workbench.distributed import merge_states
from workbench.errors import ConfigError, EmptyCorpusError
from workbench.io import atomic_path
from workbench.paths import cache_dir
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result, graph_to_json
from workbench.saes import (
    check_fits,
    encode,
    hook_layer,
    hook_name,
    load_sae,
    quality_badge,
    recipe_quality,
    source_of,
    special_token_ids,
)
from workbench.saes.quality import scored_mask
from workbench.slices import corpus_batches
from workbench.top_contexts import (
    NO_POSITION,
    POSITIONS_PER_BATCH,
    merge_batch,
    token_windows,
    top_contexts,
)

# --------------------------------------------------------------------------------------------
# Function-token set
# --------------------------------------------------------------------------------------------


def rank_tokens(counts: np.ndarray) -> np.ndarray:
    """Token ids with a nonzero count, most frequent first (ties: smaller id first)."""
    counts = np.asarray(counts)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[counts[order] > 0]


def function_token_ids(counts: np.ndarray, mass: float = 0.4) -> np.ndarray:
    """The smallest most-frequent set whose counts reach `mass` of the total, in rank order."""
    if not 0 < mass <= 1:
        raise ConfigError(f"mass must be in (0, 1], got {mass}")
    order = rank_tokens(counts)
    if order.size == 0:
        raise EmptyCorpusError("no token has a nonzero count")
    cum = np.cumsum(np.asarray(counts)[order], dtype=np.float64)
    n = int(np.searchsorted(cum, mass * cum[-1] * (1 - 1e-12), side="left")) + 1
    return order[: min(n, order.size)]


@dataclass
class TokenStats:
    """Per-type counts of a corpus split under one tokenizer, and POS-tag counts where tagged."""

    counts: np.ndarray  # int64 [vocab]
    closed: np.ndarray  # int64 [vocab]: occurrences inside a closed-class (function-word/punctuation) word
    tagged: np.ndarray  # int64 [vocab]: occurrences inside any tagged word
    tokenizer: str
    corpus: str
    has_tags: bool


def token_stats(tokenizer, corpus: Corpus, split: str = "all", exclude: list[int] | None = None) -> TokenStats:
    """Count token types over a corpus split (cached on disk by tokenizer, corpus and split)."""

    if split not in SPLITS:
        raise ConfigError(f"count_split must be one of {SPLITS}, got {split!r}")
    part = corpus.split(split)  # type: ignore[arg-type]
    tok_id = tokenizer_id(tokenizer)
    excl = sorted(set(exclude or []))
    docs = hashlib.sha1("\n".join(f"{d.doc_id}:{len(d.text)}" for d in part.documents).encode()).hexdigest()[:10]
    key = f"{tok_id}-{part.id}-{docs}-x{'.'.join(map(str, excl))}".replace("/", "_").replace(":", "_")
    path = cache_dir() / "function_tokens" / f"{key}.npz"
    vocab = len(tokenizer)
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return TokenStats(z["counts"], z["closed"], z["tagged"], tok_id, part.id, bool(z["has_tags"]))
    tc = tokenize_corpus(part, tokenizer)
    keep = ~np.isin(tc.tokens, excl)
    toks = tc.tokens[keep]
    counts = np.bincount(toks, minlength=vocab).astype(np.int64)
    closed = np.zeros(vocab, dtype=np.int64)
    tagged = np.zeros(vocab, dtype=np.int64)
    has_tags = part.has_tags
    if has_tags:
        tags = tc.token_tags()[keep]
        uniq, inv = np.unique(tags.astype(str), return_inverse=True)
        is_tagged = (uniq != "")[inv]
        is_closed = np.array([bool(t) and is_closed_class(t) for t in uniq])[inv]
        tagged = np.bincount(toks[is_tagged], minlength=vocab).astype(np.int64)
        closed = np.bincount(toks[is_closed], minlength=vocab).astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, counts=counts, closed=closed, tagged=tagged, has_tags=np.array(has_tags))
    return TokenStats(counts, closed, tagged, tok_id, part.id, has_tags)


def closed_class_overlap(stats: TokenStats, function_ids: np.ndarray, decode) -> dict[str, Any] | None:
    """How the frequency-defined set overlaps closed-class words (a type is closed-class when at
    least half of its tagged occurrences lie in closed-class words)."""
    if not stats.has_tags:
        return None
    share = np.divide(stats.closed, stats.tagged, out=np.zeros(len(stats.counts)), where=stats.tagged > 0)
    closed_type = (share >= 0.5) & (stats.tagged > 0)
    f = np.asarray(function_ids)
    f_closed = closed_type[f]
    f_untagged = stats.tagged[f] == 0  # whitespace and newline tokens belong to no word
    closed_ids = np.nonzero(closed_type)[0]
    closed_mass = stats.counts[closed_ids].sum()
    return {
        "n_function": int(f.size),
        "n_function_closed_class": int(f_closed.sum()),
        "function_closed_class_share": float(f_closed.mean()),
        "function_closed_class_share_of_tagged": float(f_closed[~f_untagged].mean()) if (~f_untagged).any() else float("nan"),
        "function_not_closed_class": [decode(int(i)) for i in f[~f_closed]],
        "function_open_class": [decode(int(i)) for i in f[~f_closed & ~f_untagged]],
        "function_untagged": [decode(int(i)) for i in f[f_untagged]],
        "n_closed_class_types": int(closed_ids.size),
        "closed_class_types_in_function_set": float(f_closed.sum() / max(closed_ids.size, 1)),
        "function_occurrences_in_closed_class_words": float(stats.closed[f].sum() / max(stats.tagged[f].sum(), 1)),
        "closed_class_mass_covered_by_function_set": float(stats.counts[f[f_closed]].sum() / max(closed_mass, 1)),
        "rule": "a token type is closed-class when >= 50% of its tagged occurrences are in closed-class words (workbench.corpora.brown.is_closed_class)",
    }


# --------------------------------------------------------------------------------------------
# Bipartite accumulator
# --------------------------------------------------------------------------------------------


def sae_labels(saes: list) -> list[str]:
    """Short unique labels: "L15" for a resid_post SAE at layer 15, else the hook name."""
    out: list[str] = []
    for sae in saes:
        name, layer = hook_name(sae), hook_layer(sae)
        base = f"L{layer}" if layer is not None and name.endswith(hooks.RESID_POST) else name
        label, i = base, 2
        while label in out:
            label, i = f"{base}#{i}", i + 1
        out.append(label)
    return out


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    """bool [n, d] -> uint8 [n, ceil(d / 8)] (little bit order)."""
    return torch.from_numpy(np.packbits(x.cpu().numpy(), axis=1, bitorder="little"))


def unpack_bits(x: torch.Tensor, d: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(x.cpu().numpy(), axis=1, count=d, bitorder="little").astype(bool))


class BipartiteAccumulator:
    """Streams the token-feature edge set of one or more SAEs.

    Per SAE: `edges` bool [n_rows, d_sae] (row = token type of the slice), `active` int64 [d_sae]
    (positions where the feature fired), activation sums and counts for the `weighted` token rows
    (edge weights for the graph), and the top activating contexts of every feature.
    """

    needs_logits = False

    def __init__(self, saes: dict[str, Any], row_ids: torch.Tensor, vocab: int, weighted_ids: torch.Tensor,
                 exclude: list[int], top_contexts: int = 5, before: int = 10, after: int = 3):
        self.saes = saes
        self.hook_names = sorted({hook_name(s) for s in saes.values()})
        self.row_ids, self.weighted_ids = row_ids, weighted_ids
        self.row_of = torch.full((vocab,), -1, dtype=torch.long)
        self.row_of[row_ids] = torch.arange(len(row_ids))
        self.weighted_of = torch.full((vocab,), -1, dtype=torch.long)
        self.weighted_of[weighted_ids] = torch.arange(len(weighted_ids))
        self.exclude = torch.tensor(sorted(exclude), dtype=torch.long)
        self.m, self.before, self.after = top_contexts, before, after
        n, w, width = len(row_ids), len(weighted_ids), before + 1 + after
        self.state: dict[str, torch.Tensor] = {"token_count": torch.zeros(n, dtype=torch.long)}
        for label, sae in saes.items():
            d = sae.cfg.d_sae
            self.state |= {
                f"{label}/edges": torch.zeros(n, d, dtype=torch.bool),
                f"{label}/active": torch.zeros(d, dtype=torch.long),
                f"{label}/wsum": torch.zeros(w, d, dtype=torch.float64),
                f"{label}/wcount": torch.zeros(w, d, dtype=torch.int64),
                f"{label}/top_vals": torch.full((d, top_contexts), -1.0),
                f"{label}/top_ctx": torch.full((d, top_contexts, width), -1, dtype=torch.int32),
                f"{label}/top_pos": torch.full((d, top_contexts), NO_POSITION, dtype=torch.int64),
            }

    def identity(self) -> str:
        return "|".join(f"{k}={source_of(s)}" for k, s in self.saes.items()) + f"|m{self.m}.{self.before}.{self.after}|by-position"

    def _device(self, acts: dict[str, torch.Tensor]) -> None:
        dev = next(iter(acts.values())).device
        if self.row_of.device != dev:
            for name in ("row_of", "weighted_of", "exclude"):
                setattr(self, name, getattr(self, name).to(dev))
            self.state = {k: v.to(dev) for k, v in self.state.items()}

    @torch.no_grad()
    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        self._device(acts)
        mask = scored_mask(batch, self.exclude)
        flat = mask.reshape(-1).nonzero().squeeze(1)
        if flat.numel() == 0:
            return
        tok = batch.tokens.reshape(-1)[flat]
        rows = self.row_of[tok]
        # checked on the device, without a host synchronisation per batch
        torch._assert_async((rows >= 0).all(), "a token outside the slice's vocabulary reached the accumulator")
        wrows = self.weighted_of[tok]
        s = self.state
        s["token_count"].index_add_(0, rows, torch.ones_like(rows))
        windows = self._windows(batch)[flat] if self.m else None
        positions = batch.index * POSITIONS_PER_BATCH + flat  # where each context sits in the slice (ties go to the earliest)
        for label, sae in self.saes.items():
            x = acts[hook_name(sae)].reshape(-1, sae.cfg.d_in)[flat]
            feats = encode(sae, x)
            d = feats.shape[1]
            pos, feat = (feats > 0).nonzero(as_tuple=True)
            s[f"{label}/edges"].view(-1)[rows[pos] * d + feat] = True
            s[f"{label}/active"] += torch.bincount(feat, minlength=d)
            w = wrows[pos]
            keep = w >= 0
            idx = w[keep] * d + feat[keep]
            s[f"{label}/wsum"].view(-1).index_add_(0, idx, feats[pos[keep], feat[keep]].double())
            s[f"{label}/wcount"].view(-1).index_add_(0, idx, torch.ones_like(idx))
            if windows is not None:
                self._merge_top(label, feats, windows, positions)

    def _windows(self, batch: TokenBatch) -> torch.Tensor:
        return token_windows(batch.tokens, batch.valid, self.before, self.after)

    def _merge_top(self, label: str, feats: torch.Tensor, windows: torch.Tensor, positions: torch.Tensor) -> None:
        s = self.state
        state = (s[f"{label}/top_vals"], s[f"{label}/top_pos"], s[f"{label}/top_ctx"])
        s[f"{label}/top_vals"], s[f"{label}/top_pos"], s[f"{label}/top_ctx"] = merge_batch(state, feats, windows, positions, self.m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: (pack_bits(v) if k.endswith("/edges") else v) for k, v in self.state.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        dev = self.row_of.device
        out = {}
        for k, v in state.items():
            if k.endswith("/edges"):
                v = unpack_bits(v, self.saes[k[: -len("/edges")]].cfg.d_sae)
            out[k] = v.clone().to(dev)
        self.state = out

    def merge_states(self, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Ranks' states merged: counts and sums added, edge bits ORed, and each feature's top
        contexts the top `m` of all ranks' candidates (the top m of a union is the top m of the
        parts' top m; equal values ordered by position, as a single pass orders them)."""
        rules = {"*/edges": lambda vs: functools.reduce(torch.bitwise_or, vs), "*/top_vals": "first", "*/top_ctx": "first",
                 "*/top_pos": "first"}
        out = merge_states(states, rules)
        for label in self.saes:
            cat = [torch.cat([s[f"{label}/{name}"] for s in states], dim=1) for name in ("top_vals", "top_pos", "top_ctx")]
            out[f"{label}/top_vals"], out[f"{label}/top_pos"], out[f"{label}/top_ctx"] = top_contexts(*cat, self.m)
        return out


# --------------------------------------------------------------------------------------------
# Coverage and the networkx graph
# --------------------------------------------------------------------------------------------


def first_cover_index(edges: torch.Tensor) -> torch.Tensor:
    """For each feature, the first row (in the given row order) that reaches it; n_rows if none."""
    reached = edges.any(0)
    first = edges.to(torch.uint8).argmax(0)
    return torch.where(reached, first, torch.full_like(first, edges.shape[0]))


def coverage_curve(edges: torch.Tensor) -> tuple[np.ndarray, int]:
    """Number of features reached by the union of the first k rows, for k = 1..n_rows; and the
    number of features reached by any row (the ever-active features)."""
    n = edges.shape[0]
    first = first_cover_index(edges)
    hist = torch.bincount(first, minlength=n + 1)[:n]
    return hist.cumsum(0).numpy(), int((first < n).sum())


def union_size(edges: torch.Tensor, rows: list[int] | np.ndarray) -> int:
    if len(rows) == 0:
        return 0
    return int(edges[torch.as_tensor(np.asarray(rows), dtype=torch.long)].any(0).sum())


def token_feature_graph(result: "FunctionTokensResult", label: str, n_tokens: int = 20, n_features: int = 8) -> nx.Graph:
    """Top `n_tokens` tokens (by frequency) x each one's `n_features` strongest features.

    Token nodes "t:<id>", feature nodes "<label>:f<index>"; edge weight = mean activation of the
    feature per occurrence of the token, `share` = fraction of the token's occurrences on which it fires.
    """
    t = result.tensors
    weighted = t["weighted_ids"].tolist()
    wsum, wcount = t[f"{label}/wsum"], t[f"{label}/wcount"]
    feats = result.features[result.features["sae"] == label].set_index("feature")
    toks = result.tokens.set_index("token_id")
    g = nx.Graph(name=f"function tokens x SAE features ({label})", layer=label)
    in_weighted = set(weighted)
    ranked = [i for i in result.tokens.sort_values("rank")["token_id"].tolist() if i in in_weighted][:n_tokens]
    for tid in ranked:
        row = weighted.index(tid)
        info = toks.loc[tid]
        occ = max(float(info["slice_count"]), 1.0)
        tnode = f"t:{tid}"
        deg = int(info[f"degree_{label}"])
        g.add_node(tnode, kind="token", label=str(info["token"]), token_id=int(tid), rank=int(info["rank"]),
                   count=int(info["slice_count"]), degree=deg, is_function=bool(info["is_function"]), **{f"degree_{label}": deg})
        strength = wsum[row] / occ
        top = torch.topk(strength, min(n_features, strength.numel()))
        for val, f in zip(top.values.tolist(), top.indices.tolist()):
            if val <= 0:
                continue
            fnode = f"{label}:f{f}"
            if fnode not in g:
                g.add_node(fnode, kind="feature", label=f"{label} f{f}", feature=int(f), layer=label,
                           degree=int(feats.loc[f, "degree"]), active_count=int(feats.loc[f, "active_count"]))
            g.add_edge(tnode, fnode, weight=float(val), share=float(wcount[row, f]) / occ)
    return g


def union_graph(graphs: list[nx.Graph]) -> nx.Graph:
    """Several SAEs' graphs in one: token nodes are shared and keep `degree_<label>` per SAE;
    feature nodes carry their `layer`."""
    g = nx.compose_all(graphs)
    for _, a in g.nodes(data=True):
        if a["kind"] == "token":
            a.pop("degree", None)
    g.graph = {"name": "function tokens x SAE features", "layers": ",".join(str(x.graph.get("layer")) for x in graphs)}
    return g


def export_graph(g: nx.Graph, path: str | Path) -> Path:
    """Write a graph as GraphML (.graphml) or node-link JSON (.json), atomically."""
    import json


    path = Path(path)
    if path.suffix not in (".graphml", ".json"):
        raise ConfigError(f"graph export needs a .graphml or .json path, got {path.name!r}")
    with atomic_path(path) as tmp:
        if path.suffix == ".graphml":
            nx.write_graphml(g, tmp)
        else:
            tmp.write_text(json.dumps(graph_to_json(g)))
    return path


# --------------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------------

DEFAULT_SAES = ["trained:5", "trained:15", "trained:25"]


@dataclass
class FunctionTokensConfig(StreamConfig):
    saes: list[str] = setting(default_factory=lambda: list(DEFAULT_SAES), names="sae", max_items=8, why="every SAE encodes every batch")  # SAE dirs, "release:id" or "trained:<layer>"
    mass: float = setting(0.4, min=0.0, max=1.0, why="a share of token occurrences")  # share of token occurrences the function-token set covers
    count_split: str = setting("all", text=True, why="the corpus split whose frequencies define ranks and the function set")
    max_tokens: int | None = 50_000
    graph_tokens: int = setting(20, min=1, max=1000, why="nodes a graph view can show")  # tokens in the networkx graph
    graph_features: int = setting(8, min=1, max=100, why="edges per node a graph view can show")  # strongest features per token in the graph
    weighted_tokens: int = setting(100, min=0, max=100_000, why="tokens with stored edge weights")  # most frequent tokens whose edge weights are kept (plus the compared content tokens)
    n_compare: int = setting(10, min=1, max=1000, why="tokens compared per side")  # top-n function tokens against top-n content tokens
    top_contexts: int = setting(5, min=0, max=100, why="contexts kept per feature")  # top activating contexts kept per feature (0: none)
    context_before: int = setting(10, min=0, max=256, why="tokens shown per context")
    context_after: int = setting(3, min=0, max=256, why="tokens shown per context")

    def validate(self) -> None:
        super().validate()
        if not self.saes:
            raise ConfigError("saes is empty: give SAE directories, 'release:sae_id' or 'trained:<layer>'")
        if not 0 < self.mass <= 1:
            raise ConfigError(f"mass must be in (0, 1], got {self.mass}")
        if self.count_split not in SPLITS:
            raise ConfigError(f"count_split must be one of {SPLITS}, got {self.count_split!r}")
        for name in ("graph_tokens", "graph_features", "weighted_tokens", "n_compare"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("top_contexts", "context_before", "context_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class FunctionTokensResult(Result):
    tokens: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per token type in the slice
    coverage: pd.DataFrame = field(default_factory=pd.DataFrame)  # per SAE and k: coverage with both denominators
    features: pd.DataFrame = field(default_factory=pd.DataFrame)  # per SAE and feature: degree, active count
    tensors: dict = field(default_factory=dict)  # packed edges, edge weights, top contexts (see BipartiteAccumulator)
    graph: nx.Graph = field(default_factory=nx.Graph)  # union over SAEs of the top-token x strongest-feature graphs
    function_set: dict = field(default_factory=dict)
    saes: dict = field(default_factory=dict)  # label -> source, hook, d_sae, recipe quality
    comparison: dict = field(default_factory=dict)  # label -> top-n function vs top-n content coverage
    token_strings: dict = field(default_factory=dict)  # id (str) -> text, for every id in the stored contexts

    @property
    def labels(self) -> list[str]:
        return list(self.saes)

    def edges(self, label: str) -> torch.Tensor:
        """bool [n_rows, d_sae]; row i is token id `tensors['row_ids'][i]`."""
        return unpack_bits(self.tensors[f"{label}/edges"], int(self.saes[label]["d_sae"]))

    def token_features(self, label: str, token_id: int) -> list[int]:
        """The features a token type activates (its neighbourhood), in index order."""
        rows = self.tensors["row_ids"].tolist()
        if token_id not in rows:
            return []
        r = rows.index(token_id)
        row = unpack_bits(self.tensors[f"{label}/edges"][r : r + 1], int(self.saes[label]["d_sae"]))[0]
        return row.nonzero().squeeze(1).tolist()

    def coverage_table(self, ks: range = range(1, 11)) -> pd.DataFrame:
        """Coverage (%) of the top-k tokens, k in `ks`, one column per SAE and denominator (Table 1)."""
        c = self.coverage[self.coverage["k"].isin(list(ks))]
        out = c.pivot(index=["k"], columns="sae", values=["cov_all", "cov_active"])
        out.columns = [f"{sae} ({'all' if m == 'cov_all' else 'active'})" for m, sae in out.columns]
        tokens = c.drop_duplicates("k").set_index("k")["token"]
        return (100 * out).round(2).assign(token=tokens).reset_index()

    def layer_graph(self, label: str, n_tokens: int | None = None, n_features: int | None = None) -> nx.Graph:
        """One SAE's part of the stored graph, or a new one of another size."""
        if n_tokens is not None or n_features is not None:
            return token_feature_graph(self, label, n_tokens or 20, n_features or 8)
        g = self.graph
        keep = [(u, v) for u, v in g.edges if label in (g.nodes[u].get("layer"), g.nodes[v].get("layer"))]
        sub = nx.Graph(g.edge_subgraph(keep))
        for n, a in sub.nodes(data=True):
            if a["kind"] == "token":
                a["degree"] = a[f"degree_{label}"]
        sub.graph.update(name=f"function tokens x SAE features ({label})", layer=label)
        return sub

    def top_contexts(self, label: str, feature: int) -> list[dict[str, Any]]:
        """The stored top activating contexts of a feature: activation, tokens, index of the active token."""
        vals = self.tensors[f"{label}/top_vals"][feature].tolist()
        ctx = self.tensors[f"{label}/top_ctx"][feature].tolist()
        before = int(self.meta.get("context_before", 10))
        out = []
        for v, window in zip(vals, ctx):
            if v <= 0:
                continue
            toks = [self.token_strings.get(str(t), f"<{t}>") if t >= 0 else None for t in window]
            keep = [i for i, t in enumerate(toks) if t is not None]
            out.append({"activation": v, "tokens": [toks[i] for i in keep], "focus": keep.index(before) if before in keep else None})
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"function_tokens": self.function_set.get("size"), "mass": self.function_set.get("mass")}
        for label in self.labels:
            cmp_ = self.comparison.get(label, {})
            out[label] = {
                "active_features": cmp_.get("n_active"),
                "top1_cov_active": round(cmp_.get("top1_active", float("nan")), 4),
                "top10_function_cov_active": round(cmp_.get("function_active", float("nan")), 4),
                "top10_content_cov_active": round(cmp_.get("content_active", float("nan")), 4),
                "sae_quality": quality_badge(self.saes.get(label, {}).get("quality")),
            }
        return out


def _load_saes(model: HookedTransformer, corpus: Corpus, sources: list[str]) -> dict[str, Any]:
    saes = [load_sae(s, model=model, corpus_name=corpus.name) for s in sources]  # on the model's device
    for sae in saes:
        check_fits(sae, model)
    return dict(zip(sae_labels(saes), saes))


def _decode_all(tokenizer, ids: list[int]) -> dict[int, str]:
    return {i: s for i, s in zip(ids, tokenizer.batch_decode([[i] for i in ids]))}


def run(model: HookedTransformer, corpus: Corpus, config: FunctionTokensConfig) -> FunctionTokensResult:
    if model.tokenizer is None:
        raise ConfigError("function-tokens needs a model with a tokenizer")
    saes = _load_saes(model, corpus, config.saes)
    spec_of = dict(zip(saes, config.saes))
    special = special_token_ids(model)
    stats = token_stats(model.tokenizer, corpus, config.count_split, special)
    f_ids = function_token_ids(stats.counts, config.mass)
    is_function = np.zeros(len(stats.counts), dtype=bool)
    is_function[f_ids] = True
    rank = np.zeros(len(stats.counts), dtype=np.int64)
    order = rank_tokens(stats.counts)
    rank[order] = np.arange(1, order.size + 1)

    batches = corpus_batches(model, corpus, config)
    slice_ids = np.unique(batches.tc.tokens[: batches.n_chunks * batches.body])  # the budget's tokens only
    slice_ids = slice_ids[~np.isin(slice_ids, special)]
    # row order: by corpus frequency rank; types the counting split lacks go last, by id
    key = np.where(rank[slice_ids] > 0, rank[slice_ids], order.size + 1 + slice_ids)
    row_ids = slice_ids[np.argsort(key, kind="stable")]
    content_rows = [int(i) for i in row_ids if not is_function[i]][: config.n_compare]
    weighted = list(dict.fromkeys([int(i) for i in row_ids[: config.weighted_tokens]] + content_rows))
    acc = BipartiteAccumulator(saes, torch.as_tensor(row_ids), len(stats.counts), torch.tensor(weighted), special,
                               config.top_contexts, config.context_before, config.context_after)
    stats_run = stream(model, batches, acc, checkpoint_dir=scratch_dir("stream-function-tokens"), desc="function-tokens")

    state = {k: v.cpu() for k, v in acc.state.items()}
    counts_slice = state["token_count"].numpy()
    present = counts_slice > 0  # a type may sit only in the tokenised tail beyond the budget
    ctx_ids = set(row_ids.tolist())
    for label in saes:
        ctx_ids |= set(int(t) for t in state[f"{label}/top_ctx"].unique().tolist() if t >= 0)
    strings = _decode_all(model.tokenizer, sorted(ctx_ids | set(int(i) for i in f_ids)))

    tokens = pd.DataFrame({
        "token_id": row_ids, "token": [strings[int(i)] for i in row_ids], "rank": rank[row_ids],
        "corpus_count": stats.counts[row_ids], "slice_count": counts_slice, "is_function": is_function[row_ids],
        "closed_class_share": np.divide(stats.closed[row_ids], stats.tagged[row_ids], out=np.full(len(row_ids), np.nan),
                                        where=stats.tagged[row_ids] > 0) if stats.has_tags else np.nan,
    })
    tensors: dict[str, torch.Tensor] = {"row_ids": torch.as_tensor(row_ids), "weighted_ids": torch.tensor(weighted)}
    cov_frames, feat_frames, comparison, sae_info = [], [], {}, {}
    kept_rows = np.nonzero(present)[0]
    for label, sae in saes.items():
        edges = state[f"{label}/edges"]
        d = edges.shape[1]
        degree = edges.sum(1).numpy()
        tokens[f"degree_{label}"] = degree
        curve, n_active = coverage_curve(edges[torch.as_tensor(kept_rows)])
        cov_frames.append(pd.DataFrame({
            "sae": label, "k": np.arange(1, len(kept_rows) + 1), "token_id": row_ids[kept_rows],
            "token": [strings[int(i)] for i in row_ids[kept_rows]], "is_function": is_function[row_ids[kept_rows]],
            "covered": curve, "cov_all": curve / d, "cov_active": curve / max(n_active, 1),
        }))
        feat_frames.append(pd.DataFrame({"sae": label, "feature": np.arange(d), "degree": edges.sum(0).numpy(),
                                         "active_count": state[f"{label}/active"].numpy()}))
        n = config.n_compare
        f_rows = [r for r in kept_rows if is_function[row_ids[r]]][:n]
        c_rows = [r for r in kept_rows if not is_function[row_ids[r]]][:n]
        top_rows = kept_rows[:n]
        comparison[label] = {
            "n": n, "n_active": n_active, "d_sae": d,
            "top1_all": union_size(edges, kept_rows[:1]) / d, "top1_active": union_size(edges, kept_rows[:1]) / max(n_active, 1),
            "topn_tokens": [strings[int(row_ids[r])] for r in top_rows],
            "topn_all": union_size(edges, top_rows) / d, "topn_active": union_size(edges, top_rows) / max(n_active, 1),
            "function_tokens": [strings[int(row_ids[r])] for r in f_rows],
            "function_all": union_size(edges, f_rows) / d, "function_active": union_size(edges, f_rows) / max(n_active, 1),
            "content_tokens": [strings[int(row_ids[r])] for r in c_rows],
            "content_all": union_size(edges, c_rows) / d, "content_active": union_size(edges, c_rows) / max(n_active, 1),
            "content_count_share": float(counts_slice[c_rows].sum() / max(counts_slice.sum(), 1)),
            "function_count_share": float(counts_slice[f_rows].sum() / max(counts_slice.sum(), 1)),
        }
        tensors[f"{label}/edges"] = pack_bits(edges)
        for name in ("wsum", "wcount", "top_vals", "top_ctx"):
            tensors[f"{label}/{name}"] = state[f"{label}/{name}"]
        sae_info[label] = {"source": source_of(sae), "spec": spec_of[label], "hook": hook_name(sae), "d_sae": d,
                           "architecture": sae.cfg.architecture(), "quality": recipe_quality(sae)}

    result = FunctionTokensResult(
        meta={"slice": {**batches.describe(), "tokens_per_s": stats_run.tokens_per_s, "stream_seconds": stats_run.seconds},
              "context_before": config.context_before, "context_after": config.context_after},
        tokens=tokens, coverage=pd.concat(cov_frames, ignore_index=True), features=pd.concat(feat_frames, ignore_index=True),
        tensors=tensors, function_set={
            "size": int(f_ids.size), "mass": config.mass, "ids": [int(i) for i in f_ids], "tokens": [strings[int(i)] for i in f_ids],
            "covered_mass": float(stats.counts[f_ids].sum() / stats.counts.sum()), "tokenizer": stats.tokenizer,
            "corpus": stats.corpus, "closed_class": closed_class_overlap(stats, f_ids, lambda i: strings.get(i, str(i))),
        },
        saes=sae_info, comparison=comparison, token_strings={str(k): v for k, v in strings.items()},
    )
    result.graph = union_graph([token_feature_graph(result, label, config.graph_tokens, config.graph_features) for label in saes])
    return result


def cost(config: FunctionTokensConfig, model_cfg) -> float | None:
    """Forward token-passes: the slice (stopped at the deepest SAE's layer, SAE encodings counted
    as a fifth of a pass each)."""
    if config.max_tokens is None:
        return None
    return config.max_tokens * (1 + 0.2 * len(config.saes))


SPEC = register(ProbeSpec(
    name="function-tokens",
    description="Function-token set (frequency mass), its closed-class overlap, and the token-SAE-feature bipartite graph: "
    "degrees, degree vs rank, top-k coverage (both denominators), top tokens x strongest features, top contexts.",
    config_cls=FunctionTokensConfig,
    result_cls=FunctionTokensResult,
    run=run,
    cost=cost,
))
