"""Direct logit attribution: how much each attention head, MLP and the embeddings write, directly,
into one next-token logit at one position.

The residual stream at the last layer is a sum of what each component wrote (the embeddings,
each head's z @ W_O, each attention bias b_O, each MLP's output). The final norm is linear once
its scale at that position is fixed (the scale is read from the run, as in TransformerLens's
`apply_ln_to_stack`), so the logit splits exactly into one term per component plus a constant
(the norm's bias and the unembedding's bias). `components().sum() + constant == logit` is the
check the tests make.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformer_lens import HookedTransformer

from workbench import hooks
from workbench.errors import ConfigError


@dataclass
class LogitAttribution:
    """Direct contributions to `logit` (of `token`, minus `against` when given) at `position`."""

    token: int
    against: int | None
    position: int
    heads: torch.Tensor  # [n_layers, n_heads]
    attn_bias: torch.Tensor  # [n_layers]
    mlps: torch.Tensor  # [n_layers] (zeros for attention-only models)
    embed: float  # token (and learned position) embeddings
    constant: float  # final norm's bias and the unembedding's bias
    logit: float  # the model's own logit (or logit difference)

    def total(self) -> float:
        """The sum of every term: equals `logit` up to float round-off."""
        return float(self.heads.sum() + self.attn_bias.sum() + self.mlps.sum()) + self.embed + self.constant


def _direction(model: HookedTransformer, token: int, against: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual direction read by the (difference of) logits after the final norm's scale, and
    the constant the norm's bias and b_U add."""
    W_U, b_U = model.W_U, model.b_U
    d = W_U[:, token] - (W_U[:, against] if against is not None else 0)
    c = b_U[token] - (b_U[against] if against is not None else 0)
    ln = getattr(model, "ln_final", None)
    b = getattr(ln, "b", None)
    if b is not None:
        c = c + b @ d
    w = getattr(ln, "w", None)
    return (d * w if w is not None else d), c


@torch.no_grad()
def direct_logit_attribution(model: HookedTransformer, tokens: torch.Tensor, position: int, token: int,
                             against: int | None = None) -> LogitAttribution:
    """Split the logit of `token` (minus that of `against`) at `position` of `tokens` ([T] ids) into
    each component's direct contribution (one forward pass)."""
    tokens = torch.as_tensor(tokens).reshape(-1)
    T, L, V = tokens.shape[0], model.cfg.n_layers, model.cfg.d_vocab
    if not -T <= position < T:
        raise ConfigError(f"position {position} is outside the prompt ({T} tokens)")
    for t in (token, against):
        if t is not None and not 0 <= int(t) < V:
            raise ConfigError(f"token id {t} is outside the vocabulary (0..{V - 1})")
    position %= T
    attn_only = bool(getattr(model.cfg, "attn_only", False))
    names = {hooks.resid_pre(0), hooks.FINAL_SCALE} | {hooks.attn_z(l) for l in range(L)}
    if not attn_only:
        names |= {hooks.mlp_out(l) for l in range(L)}
    logits, cache = model.run_with_cache(tokens[None].to(model.cfg.device), names_filter=lambda n: n in names)
    direction, constant = _direction(model, int(token), None if against is None else int(against))
    scale = cache[hooks.FINAL_SCALE][0, position]  # [1]
    centre = model.cfg.normalization_type in ("LN", "LNPre")

    def read(v: torch.Tensor) -> torch.Tensor:  # [..., d_model] -> [...]
        v = v.float()
        if centre:
            v = v - v.mean(-1, keepdim=True)
        return (v / scale) @ direction.float()

    heads = torch.stack([read(torch.einsum("hd,hdm->hm", cache[hooks.attn_z(l)][0, position], model.W_O[l])) for l in range(L)])
    bias = torch.stack([read(model.b_O[l]) for l in range(L)])
    mlps = torch.zeros(L) if attn_only else torch.stack([read(cache[hooks.mlp_out(l)][0, position]) for l in range(L)])
    logit = logits[0, position, token] - (logits[0, position, against] if against is not None else 0)
    return LogitAttribution(token=int(token), against=None if against is None else int(against), position=position,
                            heads=heads.cpu(), attn_bias=bias.cpu(), mlps=mlps.cpu(), embed=float(read(cache[hooks.resid_pre(0)][0, position])),
                            constant=float(constant), logit=float(logit))
