"""One forward pass over a prompt, kept for the model explorer: tokens, top-k next tokens at every
position, attention patterns (every layer and head), residual norms per layer and the logit lens.

The analysis is computed once per (model, prompt) and kept in a small LRU cache, so changing the
layer, head or position in the page only redraws.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from dashboards.base import check_prompt

MAX_TOKENS = 256  # the explorer analyses at most this many tokens of a prompt
TOPK_KEEP = 50  # top-k kept per position (the page shows up to this many)


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
    resid_norms: torch.Tensor  # [L+1, T]: embeddings, then each block's output
    lens_top1: torch.Tensor  # [L+1, T] token id the logit lens ranks first
    lens_top1_prob: torch.Tensor  # [L+1, T]
    lens_next_prob: torch.Tensor  # [L+1, T-1] lens probability of the token that actually follows

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
def analyse_prompt(model: HookedTransformer, prompt: str, model_name: str = "", max_tokens: int = MAX_TOKENS) -> PromptAnalysis:
    """Run `model` on `prompt` (with BOS when the model uses one) and collect what the explorer shows."""
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
    attn = torch.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(L)]).to(torch.float16).cpu()
    resid = [cache["blocks.0.hook_resid_pre"][0]] + [cache[f"blocks.{l}.hook_resid_post"][0] for l in range(L)]
    norms = torch.stack([r.norm(dim=-1) for r in resid]).float().cpu()
    ln, targets = _final_norm(model), tokens[1:]
    top1, top1p, nextp = [], [], []
    for r in resid:  # one layer at a time: [T, d_vocab] stays small
        p = model.unembed(ln(r[None]))[0].float().softmax(-1)
        v, i = p.max(-1)
        top1.append(i.cpu())
        top1p.append(v.cpu())
        nextp.append(p[:-1].gather(-1, targets[:, None])[:, 0].cpu())
    tok = model.tokenizer
    shown = [show_token(tok.decode([int(t)])) if tok is not None else str(int(t)) for t in tokens]
    return PromptAnalysis(
        model=model_name, prompt=prompt, token_ids=[int(t) for t in tokens], tokens=shown, truncated=truncated,
        has_bos=has_bos, n_layers=L, n_heads=model.cfg.n_heads, topk_ids=top.indices.cpu(), topk_probs=top.values.cpu(),
        attn=attn, resid_norms=norms, lens_top1=torch.stack(top1), lens_top1_prob=torch.stack(top1p), lens_next_prob=torch.stack(nextp),
    )


def attention_flow_graph(a: PromptAnalysis, tokenizer=None, window: int = 16, per_node: int = 2, threshold: float = 0.01) -> nx.DiGraph:
    """Attention flow over the last `window` positions: node (layer, position) for the residual
    stream before block `layer` (layer L = the output); an edge from (l, key) to (l+1, query) for
    each of the `per_node` keys that query attends to most (head mean, at least `threshold`)."""
    T, L = a.n_tokens, a.n_layers
    start = max(0, T - window)
    G = nx.DiGraph()
    for l in range(L + 1):
        norms = a.resid_norms[l, start:]
        nmax = float(norms.max()) or 1.0
        for p in range(start, T):
            lens_tok = a.decode([int(a.lens_top1[l, p])], tokenizer)[0] if tokenizer is not None else str(int(a.lens_top1[l, p]))
            p_next = float(a.lens_next_prob[l, p]) if p < T - 1 else None
            G.add_node(
                f"L{l}P{p}", label=a.tokens[p] if l in (0, L) else "", layer=l, position=p, token=a.tokens[p],
                resid_norm=round(float(a.resid_norms[l, p]), 3), lens_top1=lens_tok, lens_top1_prob=round(float(a.lens_top1_prob[l, p]), 4),
                lens_p_next=None if p_next is None else round(p_next, 4), size=10 + 14 * float(a.resid_norms[l, p]) / nmax,
                color=_prob_color(p_next if p_next is not None else float(a.lens_top1_prob[l, p])),
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


def flow_positions(G: nx.DiGraph, dx: float = 70, dy: float = 46) -> dict[str, tuple[float, float]]:
    """Preset layout: positions left to right, layers bottom to top."""
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

    def get(self, ctx, model_name: str, prompt: str) -> PromptAnalysis:
        key = (model_name, prompt)
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        check_prompt(prompt)
        model = ctx.model(model_name)
        a = analyse_prompt(model, prompt, model_name)
        with self._lock:
            self._d[key] = a
            while len(self._d) > self.size:
                self._d.popitem(last=False)
        return a
