"""Activation patching between a clean and a corrupted prompt (the IOI-style heatmap).

Run the corrupted prompt, replace one activation with its value from the clean run, and see how
much of the clean behaviour comes back, measured by the logit difference between the clean
answer and the corrupted answer at the last position and normalised so that 0 is the corrupted
run and 1 the clean run: (patched - corrupted) / (clean - corrupted).

Three kinds, as in TransformerLens's patching utilities: the residual stream entering each
block at each position (`resid_pre`), each block's attention output at each position
(`attn_out`), and each head's output at every position (`head`, through hook_z). Every patch of
one layer runs as one batch (one copy of the corrupted prompt per position or head) that starts
at that layer from the corrupted run's cached residual stream, so a 30-layer model costs about 15
batched forward passes per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.errors import ConfigError

Kind = Literal["resid_pre", "attn_out", "head"]
KINDS: tuple[Kind, ...] = ("resid_pre", "attn_out", "head")


@dataclass
class PatchingResult:
    kind: Kind
    effect: torch.Tensor  # [n_layers, n_positions] (resid_pre, attn_out) or [n_layers, n_heads] (head), normalised
    clean_diff: float  # logit(answer) - logit(wrong) on the clean prompt
    corrupted_diff: float  # the same on the corrupted prompt
    answer: int
    wrong: int


def _hook_name(kind: Kind, layer: int) -> str:
    return {"resid_pre": hooks.resid_pre, "attn_out": hooks.attn_out, "head": hooks.attn_z}[kind](layer)


def check_pair(clean: torch.Tensor, corrupted: torch.Tensor) -> None:
    """Patching position by position needs prompts of the same length in tokens."""
    if clean.shape != corrupted.shape:
        raise ConfigError(f"the clean and corrupted prompts must have the same number of tokens "
                          f"({clean.shape[-1]} and {corrupted.shape[-1]}); change a name or word, not the length")


@torch.no_grad()
def activation_patching(model: HookedTransformer, clean: torch.Tensor, corrupted: torch.Tensor, answer: int, wrong: int,
                        kind: Kind = "resid_pre") -> PatchingResult:
    """Patch each (layer, position) or (layer, head) of `kind` from the clean run into the
    corrupted one; the effect on logit(answer) - logit(wrong) at the last position, normalised."""
    if kind not in KINDS:
        raise ConfigError(f"unknown patching kind {kind!r}; choose one of {', '.join(KINDS)}")
    clean, corrupted = torch.as_tensor(clean).reshape(-1), torch.as_tensor(corrupted).reshape(-1)
    check_pair(clean, corrupted)
    device, L, T = model.cfg.device, model.cfg.n_layers, clean.shape[0]
    clean, corrupted = clean.to(device), corrupted.to(device)
    names = {_hook_name(kind, l) for l in range(L)}
    clean_logits, cache = model.run_with_cache(clean[None], names_filter=lambda n: n in names)

    def diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer] - logits[:, -1, wrong]

    clean_diff = float(diff(clean_logits))
    starts = {hooks.resid_pre(l) for l in range(L)}
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted[None], names_filter=lambda n: n in starts)
    corrupted_diff = float(diff(corrupted_logits))
    if abs(clean_diff - corrupted_diff) < 1e-6 * max(1.0, abs(clean_diff)):
        raise ConfigError("the clean and corrupted prompts give the same logit difference, so there is nothing to restore; "
                          "choose prompts whose answers differ")
    n = model.cfg.n_heads if kind == "head" else T
    rows = []
    for l in range(L):
        name, source = _hook_name(kind, l), cache[_hook_name(kind, l)][0]
        idx = torch.arange(n, device=device)

        def patch(x: torch.Tensor, hook, source=source, idx=idx) -> torch.Tensor:
            x = x.clone()
            if kind == "head":  # x [n, T, H, d_head]: copy n patches head n at every position
                x[idx, :, idx] = source[:, idx].transpose(0, 1)
            else:  # x [n, T, d]: copy n patches position n
                x[idx, idx] = source[idx]
            return x

        resid = corrupted_cache[hooks.resid_pre(l)].expand(n, T, -1)
        if kind == "resid_pre":  # the patch is the input itself
            logits = model(patch(resid, None), start_at_layer=l)
        else:
            logits = model.run_with_hooks(resid, start_at_layer=l, fwd_hooks=[(name, patch)])
        rows.append(diff(logits))
    effect = (torch.stack(rows) - corrupted_diff) / (clean_diff - corrupted_diff)
    return PatchingResult(kind=kind, effect=effect.float().cpu(), clean_diff=clean_diff, corrupted_diff=corrupted_diff,
                          answer=int(answer), wrong=int(wrong))


def single_token(model: HookedTransformer, text: str) -> int:
    """The id of `text` as one token of the model's vocabulary, else a clear error."""
    if not isinstance(text, str) or not text:
        raise ConfigError("give the answer as a token's text, e.g. ' Mary'")
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if ids.numel() != 1:
        raise ConfigError(f"{text!r} is {ids.numel()} tokens for this model; the metric needs a single token "
                          "(mind the leading space)")
    return int(ids[0])


def patch_prompts(model: HookedTransformer, clean: str, corrupted: str, answer: str, wrong: str, kind: Kind = "resid_pre",
                  max_tokens: int = 64) -> tuple[PatchingResult, list[str]]:
    """`activation_patching` on two prompts and two answers given as text; also the clean prompt's tokens."""
    from workbench.prompt_analysis import check_prompt

    tokens = [model.to_tokens(check_prompt(p), prepend_bos=True)[0] for p in (clean, corrupted)]
    check_pair(tokens[0], tokens[1])
    if tokens[0].shape[0] > max_tokens:
        raise ConfigError(f"the prompts have {tokens[0].shape[0]} tokens; patching here takes at most {max_tokens}")
    result = activation_patching(model, tokens[0], tokens[1], single_token(model, answer), single_token(model, wrong), kind)
    shown = [model.tokenizer.decode([int(t)]) if model.tokenizer is not None else str(int(t)) for t in tokens[0]]
    return result, shown
