"""One forward pass over a prompt, kept for the model explorer: tokens, top-k next tokens at every
position, attention patterns (every layer and head), residual norms per layer and the logit lens.

The analysis is computed once per (model, prompt) and kept in a small LRU cache, so changing the
layer, head or position in the page only redraws.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from dashboards.base import check_prompt
from workbench import hooks

MAX_TOKENS = 256  # the explorer analyses at most this many tokens of a prompt
TOPK_KEEP = 50  # top-k kept per position (the page shows up to this many)
LENS_POSITIONS = 64  # the logit lens covers the last this many positions (its cost grows with layers x positions x vocab)


@dataclass
class PromptAnalysis:
    model: str
    prompt: str
    token_ids: list[int]
    tokens: list[str]  # display strings, one per position
    truncated: bool
    has_bos: bool
    n_layers: int
    n_heads: int
    topk_ids: torch.Tensor  # [T, K] next-token candidates per position
    topk_probs: torch.Tensor  # [T, K]
    attn: torch.Tensor  # [L, H, T, T] float16, query x key
    resid: torch.Tensor  # [L+1, T, d_model]: embeddings, then each block's output
    resid_norms: torch.Tensor  # [L+1, T]
    # the logit lens over positions lens_start.., filled by `compute_lens` (about L+1 unembeddings per token)
    lens_start: int = 0
    lens_top1: torch.Tensor | None = None  # [L+1, P] token id the logit lens ranks first
    lens_top1_prob: torch.Tensor | None = None  # [L+1, P]
    lens_next_prob: torch.Tensor | None = None  # [L+1, P-1] lens probability of the token that actually follows
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def decode(self, ids: list[int] | torch.Tensor, tokenizer) -> list[str]:
        return [show_token(tokenizer.decode([int(i)])) for i in ids]


def show_token(s: str) -> str:
    """Whitespace made visible: newlines as ↵, tabs as →."""
    return s.replace("\n", "↵").replace("\t", "→")


def chip_text(s: str) -> str:
    """A token as shown on its own: whitespace-only tokens as ␣ (or · when empty)."""
    return s if s.strip() else (s.replace(" ", "\u2423") or "\u00b7")


def _final_norm(model: HookedTransformer):
    return getattr(model, "ln_final", None) or (lambda x: x)


@torch.no_grad()
def analyse_prompt(model: HookedTransformer, prompt: str, model_name: str = "", max_tokens: int = MAX_TOKENS,
                   lens: bool = True) -> PromptAnalysis:
    """Run `model` on `prompt` (with BOS when the model uses one) and collect what the explorer shows
    (the logit lens too unless `lens=False`; `compute_lens` adds it later)."""
    check_prompt(prompt)
    tokens = model.to_tokens(prompt, prepend_bos=True, truncate=False)[0]
    limit = min(max_tokens, model.cfg.n_ctx)
    truncated = tokens.shape[0] > limit
    tokens = tokens[:limit]
    bos = model.tokenizer.bos_token_id if model.tokenizer is not None else None
    has_bos = bos is not None and int(tokens[0]) == bos
    L = model.cfg.n_layers

    def keep(name: str) -> bool:
        return name.endswith("hook_pattern") or name.endswith("hook_resid_post") or name == "blocks.0.hook_resid_pre"

    logits, cache = model.run_with_cache(tokens[None], names_filter=keep)
    probs = logits[0].float().softmax(-1)
    k = min(TOPK_KEEP, probs.shape[-1])
    top = probs.topk(k, dim=-1)
    attn = torch.stack([cache[hooks.attn_pattern(l)][0] for l in range(L)]).to(torch.float16).cpu()
    resid = [cache["blocks.0.hook_resid_pre"][0]] + [cache[hooks.resid_post(l)][0] for l in range(L)]
    resid = torch.stack(resid)
    tok = model.tokenizer
    shown = [show_token(tok.decode([int(t)])) if tok is not None else str(int(t)) for t in tokens]
    a = PromptAnalysis(
        model=model_name, prompt=prompt, token_ids=[int(t) for t in tokens], tokens=shown, truncated=truncated,
        has_bos=has_bos, n_layers=L, n_heads=model.cfg.n_heads, topk_ids=top.indices.cpu(), topk_probs=top.values.cpu(),
        attn=attn, resid=resid, resid_norms=resid.norm(dim=-1).float().cpu(),
    )
    return compute_lens(a, model) if lens else a


@torch.no_grad()
def compute_lens(a: PromptAnalysis, model: HookedTransformer, positions: int = LENS_POSITIONS, rows: int = 512) -> PromptAnalysis:
    """Fill in the logit lens (final norm + unembedding of every layer's residual) for the last
    `positions` positions, once. All layers and positions go through the unembedding as one
    matrix, `rows` rows at a time."""
    with a._lock:
        if a.lens_top1 is not None:
            return a
        start = max(0, a.n_tokens - positions)
        L1, T, d = a.resid[:, start:].shape
        flat = _final_norm(model)(a.resid[:, start:]).reshape(-1, d)
        nxt = torch.tensor(a.token_ids[start + 1:] + [0], device=flat.device).repeat(L1)  # the token after each row's position
        top1, top1p, nextp = [], [], []
        for s in range(0, flat.shape[0], rows):
            logp = (flat[s:s + rows] @ model.W_U + model.b_U).float().log_softmax(-1)
            v, i = logp.max(-1)
            top1.append(i)
            top1p.append(v.exp())
            nextp.append(logp.gather(-1, nxt[s:s + rows, None])[:, 0].exp())
        a.lens_top1 = torch.cat(top1).reshape(L1, T).cpu()
        a.lens_top1_prob = torch.cat(top1p).reshape(L1, T).cpu()
        a.lens_next_prob = torch.cat(nextp).reshape(L1, T)[:, :-1].cpu()
        a.lens_start = start
    return a


def prompt_lens_figure(a: PromptAnalysis, tokenizer):
    """The logit-lens heatmap of an analysis (computed with `compute_lens`)."""
    from dashboards.figures.explorer import logit_lens_figure

    top1 = [a.decode(row, tokenizer) for row in a.lens_top1]
    return logit_lens_figure(a.lens_next_prob.numpy(), top1, a.lens_top1_prob.numpy(), a.tokens, offset=a.lens_start)


def attention_flow_graph(a: PromptAnalysis, tokenizer=None, window: int = 16, per_node: int = 2, threshold: float = 0.01) -> nx.DiGraph:
    """Attention flow over the last `window` positions: node (layer, position) for the residual
    stream before block `layer` (layer L = the output); an edge from (l, key) to (l+1, query) for
    each of the `per_node` keys that query attends to most (head mean, at least `threshold`)."""
    T, L = a.n_tokens, a.n_layers
    start = max(0, T - min(window, T - a.lens_start))
    G = nx.DiGraph()
    for l in range(L + 1):
        norms = a.resid_norms[l, start:]
        nmax = float(norms.max()) or 1.0
        for p in range(start, T):
            j = p - a.lens_start
            lens_tok = a.decode([int(a.lens_top1[l, j])], tokenizer)[0] if tokenizer is not None else str(int(a.lens_top1[l, j]))
            p_next = float(a.lens_next_prob[l, j]) if p < T - 1 else None
            G.add_node(
                f"L{l}P{p}", label=a.tokens[p] if l in (0, L) else "", layer=l, position=p, token=a.tokens[p],
                resid_norm=round(float(a.resid_norms[l, p]), 3), lens_top1=lens_tok, lens_top1_prob=round(float(a.lens_top1_prob[l, j]), 4),
                lens_p_next=None if p_next is None else round(p_next, 4), size=10 + 14 * float(a.resid_norms[l, p]) / nmax,
                color=_prob_color(p_next if p_next is not None else float(a.lens_top1_prob[l, j])),
                title=f"layer {l} · pos {p} {a.tokens[p]!r} · norm {float(a.resid_norms[l, p]):.1f} · lens top-1 {lens_tok!r}",
            )
    for l in range(L):
        mean = a.attn[l].float().mean(0)  # [T, T]
        for q in range(start, T):
            w = mean[q, start:q + 1]
            vals, idx = w.topk(min(per_node, w.numel()))
            for v, i in zip(vals.tolist(), idx.tolist()):
                if v >= threshold:
                    heads = a.attn[l, :, q, start + i].float()
                    G.add_edge(f"L{l}P{start + i}", f"L{l + 1}P{q}", weight=round(v, 4), layer=l,
                               strongest_head=int(heads.argmax()), strongest_head_weight=round(float(heads.max()), 4))
    return G


def flow_positions(G: nx.DiGraph, dx: float = 70, aspect: float = 0.7) -> dict[str, tuple[float, float]]:
    """Preset layout: positions left to right, layers bottom to top, about `aspect` times as tall as wide."""
    n_pos = len({d["position"] for _, d in G.nodes(data=True)}) or 1
    n_layers = len({d["layer"] for _, d in G.nodes(data=True)}) or 1
    dy = min(46.0, max(12.0, dx * n_pos * aspect / n_layers))
    return {n: (d["position"] * dx, -d["layer"] * dy) for n, d in G.nodes(data=True)}


def _prob_color(p: float) -> str:
    """White to blue by probability (the lens's belief in the actual next token)."""
    p = max(0.0, min(1.0, p)) ** 0.5
    r, g, b = (int(255 + (c - 255) * p) for c in (0, 114, 178))
    return f"#{r:02x}{g:02x}{b:02x}"


class AnalysisCache:
    """LRU cache of prompt analyses keyed by (model name, prompt)."""

    def __init__(self, size: int = 6):
        self.size = size
        self._d: OrderedDict[tuple[str, str], PromptAnalysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ctx, model_name: str, prompt: str, lens: bool = False) -> PromptAnalysis:
        """The analysis of `prompt` (forward pass once); with `lens`, the logit lens too."""
        key = (model_name, prompt)
        with self._lock:
            a = self._d.get(key)
            if a is not None:
                self._d.move_to_end(key)
        if a is None:
            check_prompt(prompt)
            a = analyse_prompt(ctx.model(model_name), prompt, model_name, lens=False)
            with self._lock:
                self._d[key] = a
                while len(self._d) > self.size:
                    self._d.popitem(last=False)
        return compute_lens(a, ctx.model(model_name)) if lens else a
