"""One forward pass over a prompt, for the model explorer and notebooks: tokens, top-k next tokens
at every position, attention patterns (every layer and head), residual norms per layer, the logit
lens, and the attention-flow graph built from them.

The dashboard keeps analyses in a small cache, so changing the layer, head or position in the
page only redraws; everything computed lives here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import networkx as nx
import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.config import MAX_TEXT_CHARS
from workbench.errors import ConfigError, PromptTooLongError

MAX_PROMPT_CHARS = MAX_TEXT_CHARS  # the longest prompt accepted
MAX_TOKENS = 256  # the explorer analyses at most this many tokens of a prompt
TOPK_KEEP = 50  # top-k kept per position (the page shows up to this many)
LENS_POSITIONS = 64  # the logit lens covers the last this many positions (its cost grows with layers x positions x vocab)


@dataclass
class PromptAnalysis:
    model: str
    prompt: str
    token_ids: list[int]
    tokens: list[str]  # each position's token as text
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
        return [tokenizer.decode([int(i)]) for i in ids]


def check_prompt(prompt: object) -> str:
    """A non-empty prompt of at most MAX_PROMPT_CHARS characters, else a clear error."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("type a prompt first" if prompt is None or isinstance(prompt, str)
                          else f"a prompt is text, not a {type(prompt).__name__}")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptTooLongError(f"the prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate: no tokenizer can read it
        raise ConfigError(f"the prompt holds a character that is not valid text at position {e.start}") from None
    return prompt


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
        return name.endswith((hooks.PATTERN, hooks.RESID_POST)) or name == hooks.resid_pre(0)

    logits, cache = model.run_with_cache(tokens[None], names_filter=keep)
    probs = logits[0].float().softmax(-1)
    k = min(TOPK_KEEP, probs.shape[-1])
    top = probs.topk(k, dim=-1)
    attn = torch.stack([cache[hooks.attn_pattern(l)][0] for l in range(L)]).to(torch.float16).cpu()
    resid = [cache[hooks.resid_pre(0)][0]] + [cache[hooks.resid_post(l)][0] for l in range(L)]
    resid = torch.stack(resid)
    tok = model.tokenizer
    shown = [tok.decode([int(t)]) if tok is not None else str(int(t)) for t in tokens]
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


FLOW_LAYERS = 10  # blocks a flow graph shows by default (the last ones: more are unreadable at 30 layers)


def flow_layer_range(n_layers: int, span: int = FLOW_LAYERS) -> tuple[int, int]:
    """The default blocks (first, last) of a flow graph: all of a small model, the last `span` of a deep one."""
    return (max(0, n_layers - span), n_layers - 1)


def attention_flow_graph(a: PromptAnalysis, tokenizer=None, window: int = 16, per_node: int = 2, threshold: float = 0.01,
                         layers: tuple[int, int] | None = None) -> nx.DiGraph:
    """Attention flow over the last `window` positions: node (layer, position) for the residual
    stream before block `layer` (layer L = the output); an edge from (l, key) to (l+1, query) for
    each of the `per_node` keys that query attends to most (head mean, at least `threshold`).
    `layers` = (first, last) limits the graph to those blocks (default `flow_layer_range`)."""
    T, L = a.n_tokens, a.n_layers
    lo, hi = layers if layers is not None else flow_layer_range(L)
    lo, hi = max(0, min(int(lo), L - 1)), max(0, min(int(hi), L - 1))
    lo, hi = min(lo, hi), max(lo, hi)
    start = max(0, T - min(window, T - a.lens_start))
    G = nx.DiGraph(layers=(lo, hi))
    for l in range(lo, hi + 2):
        norms = a.resid_norms[l, start:]
        nmax = float(norms.max()) or 1.0
        for p in range(start, T):
            j = p - a.lens_start
            lens_tok = a.decode([int(a.lens_top1[l, j])], tokenizer)[0] if tokenizer is not None else str(int(a.lens_top1[l, j]))
            p_next = float(a.lens_next_prob[l, j]) if p < T - 1 else None
            G.add_node(
                f"L{l}P{p}", layer=l, position=p, token=a.tokens[p], resid_norm=round(float(a.resid_norms[l, p]), 3),
                resid_norm_share=round(float(a.resid_norms[l, p]) / nmax, 4), lens_top1=lens_tok,
                lens_top1_prob=round(float(a.lens_top1_prob[l, j]), 4), lens_p_next=None if p_next is None else round(p_next, 4),
            )
    for l in range(lo, hi + 1):
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


