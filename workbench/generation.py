"""Batched greedy decoding for hooked models, with TransformerLens's key-value cache.

Why here: several probes decode many short continuations (knowledge probing decodes one answer
per candidate first token). Decoding them one at a time re-runs the prompt for every candidate
and every new token; this module runs the prompt once, keeps keys and values in a
`TransformerLensKeyValueCache`, and feeds one new token per step for a whole batch.

Exactness: prompts are never padded. `greedy_generate` groups prompts of equal length into
batches, and `greedy_continue` shares one prefix (computed once, then broadcast over the batch)
between continuations that differ in a forced first token. Every row therefore sees exactly the
positions and tokens it would see alone; only floating-point summation order differs between
batch sizes. Sequences that have stopped are dropped from the batch (and from the cache), so a
few long answers do not make every row pay for them.

Stopping, per sequence: at the first token whose own decoded text contains one of
`stop_strings` (that token is kept, as in a `"`-terminated answer), at EOS, or after
`max_new_tokens` generated tokens.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from workbench.errors import ConfigError, PromptTooLongError
from workbench.progress import ProgressBar, progress_bar

StopReason = Literal["stop-string", "eos", "max-tokens"]


@dataclass
class Continuation:
    """One decoded continuation: its token ids, their text, and why decoding stopped."""

    tokens: list[int]
    text: str
    stop: StopReason


_STOP_MASKS: "weakref.WeakKeyDictionary[object, dict[tuple[tuple[str, ...], int], torch.Tensor]]" = weakref.WeakKeyDictionary()


def stop_token_mask(tokenizer, stop_strings: Sequence[str], d_vocab: int) -> torch.Tensor:
    """Boolean [d_vocab]: True where the token's own decoded text contains a stop string.

    Each id is decoded alone (as a per-token stop check sees it). Cached per tokenizer.
    """
    key = (tuple(stop_strings), d_vocab)
    try:
        per_tok = _STOP_MASKS.setdefault(tokenizer, {})
    except TypeError:  # tokenizer not weak-referenceable: compute every time
        per_tok = {}
    if key not in per_tok:
        mask = torch.zeros(d_vocab, dtype=torch.bool)
        if stop_strings:
            n = min(d_vocab, len(tokenizer))
            texts = tokenizer.batch_decode([[i] for i in range(n)])
            for i, t in enumerate(texts):
                if any(s in t for s in stop_strings):
                    mask[i] = True
        per_tok[key] = mask
    return per_tok[key]


def _check_tokens(model: HookedTransformer, seqs: Sequence[Sequence[int]], max_new_tokens: int, what: str) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    V = model.cfg.d_vocab
    for s in seqs:
        if len(s) == 0:
            raise ConfigError(f"every {what} needs at least one token")
        if min(s) < 0 or max(s) >= V:
            raise ConfigError(f"{what} holds token ids outside the vocabulary [0, {V})")
        if len(s) + max_new_tokens > model.cfg.n_ctx:
            raise PromptTooLongError(
                f"a {what} of {len(s)} tokens plus {max_new_tokens} new tokens exceeds the model's context of {model.cfg.n_ctx}"
            )


def _select(cache: TransformerLensKeyValueCache, keep: torch.Tensor) -> None:
    """Keep only the batch rows `keep` in every cache entry (in place)."""
    for e in cache.entries:
        e.past_keys = e.past_keys[keep]
        e.past_values = e.past_values[keep]
    cache.previous_attention_mask = cache.previous_attention_mask[keep]


def _expand(cache: TransformerLensKeyValueCache, batch: int) -> TransformerLensKeyValueCache:
    """A batch-`batch` view of a batch-1 cache (the shared prefix is not copied)."""
    entries = [type(e)(past_keys=e.past_keys.expand(batch, -1, -1, -1), past_values=e.past_values.expand(batch, -1, -1, -1))
               for e in cache.entries]
    return TransformerLensKeyValueCache(entries=entries, previous_attention_mask=cache.previous_attention_mask.expand(batch, -1))


def _forward_last(model: HookedTransformer, tokens: torch.Tensor, cache: TransformerLensKeyValueCache | None) -> torch.Tensor:
    """Logits at the last position, [batch, d_vocab]. An explicit all-ones mask: nothing is padding."""
    mask = torch.ones_like(tokens) if cache is not None else None
    return model(tokens, past_kv_cache=cache, attention_mask=mask)[:, -1].float()


def _decode_batch(
    model: HookedTransformer,
    first: torch.Tensor,
    cache: TransformerLensKeyValueCache | None,
    context: torch.Tensor,
    max_new_tokens: int,
    stop_mask: torch.Tensor,
    eos: int | None,
) -> list[tuple[list[int], StopReason]]:
    """Greedy steps from the first new tokens `first` [b].

    With a cache, it already holds the context; without one, `context` [b, L] is re-run every step.
    """
    b = first.shape[0]
    out: list[list[int]] = [[] for _ in range(b)]
    reason: list[StopReason] = ["max-tokens"] * b
    rows = torch.arange(b)  # original row of each active sequence
    nxt = first
    seqs = context
    stop_ids = set(stop_mask.nonzero().flatten().tolist())
    for step in range(max_new_tokens):
        done = torch.zeros(len(rows), dtype=torch.bool)
        for j, (r, t) in enumerate(zip(rows.tolist(), nxt.tolist())):
            out[r].append(t)
            if t in stop_ids:
                reason[r], done[j] = "stop-string", True
            elif eos is not None and t == eos:
                reason[r], done[j] = "eos", True
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = ~done
            keep_dev = keep.to(nxt.device)
            rows, nxt = rows[keep], nxt[keep_dev]
            if cache is not None:
                _select(cache, keep_dev)
            else:
                seqs = seqs[keep_dev]
        if cache is not None:
            logits = _forward_last(model, nxt[:, None], cache)
        else:
            seqs = torch.cat([seqs, nxt[:, None]], dim=1)
            logits = _forward_last(model, seqs, None)
        nxt = logits.argmax(-1)
    return [(o, r) for o, r in zip(out, reason)]


def _to_continuations(model: HookedTransformer, raw: list[tuple[list[int], StopReason]], eos: int | None) -> list[Continuation]:
    tok = model.tokenizer
    conts = []
    for ids, why in raw:
        body = ids[:-1] if why == "eos" else ids
        conts.append(Continuation(ids, tok.decode(body) if tok is not None else "", why))
    return conts


def _setup(model: HookedTransformer, stop_strings: Sequence[str], stop_at_eos: bool) -> tuple[torch.Tensor, int | None]:
    if stop_strings and model.tokenizer is None:
        raise ConfigError("stop strings need a model with a tokenizer")
    mask = stop_token_mask(model.tokenizer, stop_strings, model.cfg.d_vocab) if stop_strings else torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    eos = model.tokenizer.eos_token_id if (stop_at_eos and model.tokenizer is not None) else None
    return mask, eos


def _bar(progress: ProgressBar | None, total: int, desc: str, show: bool):
    """The caller's open bar (left open), or a new one closed on exit."""
    return nullcontext(progress) if progress is not None else progress_bar(total, desc, unit="seq", enabled=show)


@torch.inference_mode()
def greedy_generate(
    model: HookedTransformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 32,
    stop_strings: Sequence[str] = (),
    stop_at_eos: bool = True,
    batch_size: int = 32,
    use_cache: bool = True,
    desc: str = "greedy decoding",
    show_progress: bool = True,
    progress: ProgressBar | None = None,
) -> list[Continuation]:
    """Greedy continuations of token-id prompts, in input order.

    Prompts of equal length are batched together (no padding); `use_cache=False` recomputes the
    whole sequence every step (slow; kept as an independent reference). `progress`: an open bar
    of the caller's to advance (one unit per sequence) instead of a new one.
    """
    prompts = [list(map(int, p)) for p in prompts]
    _check_tokens(model, prompts, max_new_tokens, "prompt")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stop_mask, eos = _setup(model, stop_strings, stop_at_eos)
    device = model.cfg.device
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    results: list[Continuation | None] = [None] * len(prompts)
    with _bar(progress, len(prompts), desc, show_progress) as bar:
        for idx in by_len.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s:s + batch_size]
                toks = torch.tensor([prompts[i] for i in chunk], device=device)
                cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, len(chunk)) if use_cache else None
                first = _forward_last(model, toks, cache).argmax(-1)
                raw = _decode_batch(model, first, cache, toks, max_new_tokens, stop_mask, eos)
                for i, c in zip(chunk, _to_continuations(model, raw, eos)):
                    results[i] = c
                bar.update(len(chunk))
    return results  # type: ignore[return-value]


@torch.inference_mode()
def greedy_continue(
    model: HookedTransformer,
    prefix: Sequence[int],
    first_tokens: Sequence[int],
    max_new_tokens: int = 32,
    stop_strings: Sequence[str] = (),
    stop_at_eos: bool = True,
    batch_size: int = 64,
    use_cache: bool = True,
    desc: str = "greedy continuations",
    show_progress: bool = True,
    progress: ProgressBar | None = None,
) -> list[Continuation]:
    """For each forced first token t: `prefix + [t]` decoded greedily. The prefix runs once.

    Each returned continuation starts with its forced token; the stop conditions apply to it too;
    up to `max_new_tokens` tokens follow it.
    """
    prefix = list(map(int, prefix))
    firsts = [int(t) for t in first_tokens]
    _check_tokens(model, [prefix], max_new_tokens + 1, "prefix")
    if firsts and (min(firsts) < 0 or max(firsts) >= model.cfg.d_vocab):
        raise ConfigError(f"first tokens must lie in [0, {model.cfg.d_vocab})")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stop_mask, eos = _setup(model, stop_strings, stop_at_eos)
    device = model.cfg.device
    pre = torch.tensor([prefix], device=device)
    base = None
    if use_cache and firsts:
        base = TransformerLensKeyValueCache.init_cache(model.cfg, device, 1)
        _forward_last(model, pre, base)
    out: list[Continuation] = []
    with _bar(progress, len(firsts), desc, show_progress) as bar:
        for s in range(0, len(firsts), batch_size):
            chunk = torch.tensor(firsts[s:s + batch_size], device=device)
            b = chunk.shape[0]
            cache = _expand(base, b) if base is not None else None
            context = pre.expand(b, -1)
            # The forced token is "step 0": it is recorded and stop-checked, then fed to the model.
            raw = _decode_batch(model, chunk, cache, context, max_new_tokens + 1, stop_mask, eos)
            out.extend(_to_continuations(model, raw, eos))
            bar.update(b)
    return out
