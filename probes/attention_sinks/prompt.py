"""One prompt through one head, for the attention-sinks page: its pattern, per-position sink
weight, Δlogit and value norm, and the residual norms of the first token against the rest."""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens import HookedTransformer

from probes.attention_sinks.bigram_backcopy import task_of_model
from probes.attention_sinks.heads import reduce_inputs, reduce_pattern
from workbench.errors import ConfigError, PromptTooLongError


def prompt_tokens(model: HookedTransformer, prompt: str, max_chars: int = 2000) -> torch.Tensor:
    """A prompt as [1, T] token ids (BOS first where the model's default prepends one)."""

    if not prompt:
        raise ConfigError("the prompt is empty")
    if len(prompt) > max_chars:
        raise PromptTooLongError(f"the prompt has {len(prompt)} characters; the limit is {max_chars}")
    task = task_of_model(model)
    tokens = task.encode(prompt)[None] if task is not None else model.to_tokens(prompt)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise PromptTooLongError(f"the prompt is {tokens.shape[1]} tokens; this model's context is {model.cfg.n_ctx}")
    return tokens


def prompt_head(model: HookedTransformer, prompt: str, layer: int, head: int, max_chars: int = 2000) -> dict[str, Any]:
    """One head on one prompt: its pattern, per-position sink weight, Δlogit and value norm, and
    the per-layer residual norms of the first token against the rest."""
    cfg = model.cfg
    if not (0 <= layer < cfg.n_layers and 0 <= head < cfg.n_heads):
        raise ConfigError(f"layer must be in 0..{cfg.n_layers - 1} and head in 0..{cfg.n_heads - 1}, got L{layer}H{head}")
    tokens = prompt_tokens(model, prompt, max_chars)
    r = reduce_inputs(model, tokens)
    pattern = reduce_pattern(model, tokens)[layer, head]
    tok = model.tokenizer
    labels = [tok.decode([int(i)]) for i in tokens[0]] if tok is not None else [str(int(i)) for i in tokens[0]]
    sink = r["sink"][layer, 0, head]
    return {
        "tokens": labels, "pattern": pattern, "sink": sink, "delta_logit": r["dl"][layer, 0, head],
        "value_norms": r["vn"][layer, 0, head], "resid_norms": r["rn"][:, 0],
        "sink_mass": float(sink[1:].mean()) if sink.numel() > 1 else float("nan"),
        "value_ratio": float(r["vn"][layer, 0, head, 0] / r["vn"][layer, 0, head, 1:].mean()) if sink.numel() > 1 else float("nan"),
    }
