"""A planted-circuit model: an attention-only transformer whose circuit for its task is known
exactly, so that every circuit-discovery method can be scored against a truth that is not itself
an estimate.

The task is first-token recall: a prompt is `n_ctx` random tokens and the answer is the first one.
Positive: [a, x1, ..., x7]; negative: [blank, x1, ..., x7], where the blank token (id 0) has no
token identity, so the information that determines the answer is removed, as a contrast set needs;
right answer a, wrong answers every other non-blank token; the metric is the log-odds of a at the
last position.

The residual stream (no normalisation, so it is exactly linear in each head's output) has three
orthogonal parts: A_tok (token identity), A_pos (a one-hot of the position) and B (noise).
- A planted head attends to position 0 (its query is a bias, its key reads the position-0 flag of
  A_pos), reads A_tok as its value and writes a scaled copy into A_tok. Planted heads in later
  layers read what earlier ones wrote at position 0, so the circuit composes over layers.
- Every other head has random query, key and value maps over the whole stream (so its output
  changes between a positive and its negative: it sees the first token too), but its output
  matrix writes into B only.
- The unembedding reads A_tok only, and nothing a planted head reads comes from B.
So a non-planted head's output reaches the metric by no path at all: patching or ablating it
changes the metric by exactly zero, and the circuit is exactly the planted heads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from probes.sae_circuits.tasks.contrast import ContrastPrompts
from workbench.errors import ConfigError
from workbench.models.checkpoint import is_checkpoint, save_checkpoint
from workbench.paths import cache_dir

TASK = "planted-recall"
BLANK = 0  # the token with no identity: a negative's first token


@dataclass(frozen=True)
class PlantedSpec:
    """The planted model's shape: `n_circuit` planted heads among n_layers x n_heads."""

    n_layers: int = 4
    n_heads: int = 12
    n_circuit: int = 8
    vocab: int = 24
    n_ctx: int = 8
    d_tok: int = 16  # A_tok
    d_noise: int = 40  # B
    d_head: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_circuit < self.n_layers * self.n_heads:
            raise ConfigError(f"n_circuit must be in 1..{self.n_layers * self.n_heads - 1}, got {self.n_circuit}")
        if self.d_head < self.d_tok:
            raise ConfigError(f"d_head ({self.d_head}) must hold the token part d_tok ({self.d_tok})")

    @property
    def name(self) -> str:
        return (f"planted-L{self.n_layers}H{self.n_heads}-c{self.n_circuit}-v{self.vocab}-t{self.d_tok}-b{self.d_noise}"
                f"-seed{self.seed}")


def build_planted(spec: PlantedSpec) -> tuple[HookedTransformer, list[tuple[int, int]]]:
    """The model and its circuit ((layer, head) pairs), from the spec's seed."""
    g = torch.Generator().manual_seed(spec.seed)
    d_tok, d_pos, d_b = spec.d_tok, spec.n_ctx, spec.d_noise
    d_model = d_tok + d_pos + d_b
    tok, pos, noise = slice(0, d_tok), slice(d_tok, d_tok + d_pos), slice(d_tok + d_pos, d_model)
    cfg = HookedTransformerConfig(n_layers=spec.n_layers, d_model=d_model, n_ctx=spec.n_ctx, d_head=spec.d_head,
                                  n_heads=spec.n_heads, d_vocab=spec.vocab, attn_only=True, normalization_type=None,
                                  positional_embedding_type="standard", act_fn="relu", default_prepend_bos=False,
                                  model_name=spec.name, seed=spec.seed)
    model = HookedTransformer(cfg, move_to_device=False)
    heads = torch.randperm(spec.n_layers * spec.n_heads, generator=g)[: spec.n_circuit].sort().values
    circuit = [(int(i) // spec.n_heads, int(i) % spec.n_heads) for i in heads]
    gains = 0.5 + torch.rand(spec.n_circuit, generator=g)  # each planted head's copy gain, 0.5 .. 1.5
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        emb = torch.randn(spec.vocab, d_tok, generator=g)
        model.embed.W_E[:, tok] = emb / emb.norm(dim=1, keepdim=True)
        model.embed.W_E[BLANK, tok] = 0.0
        model.embed.W_E[:, noise] = torch.randn(spec.vocab, d_b, generator=g) / d_b**0.5
        model.pos_embed.W_pos[:, pos] = torch.eye(spec.n_ctx)
        model.pos_embed.W_pos[:, noise] = torch.randn(spec.n_ctx, d_b, generator=g) / d_b**0.5
        model.unembed.W_U[tok] = model.embed.W_E[:, tok].T
        scale = d_model**-0.5
        for layer, block in enumerate(model.blocks):
            attn = block.attn
            for h in range(spec.n_heads):
                attn.W_Q[h] = torch.randn(d_model, spec.d_head, generator=g) * scale
                attn.W_K[h] = torch.randn(d_model, spec.d_head, generator=g) * scale
                attn.W_V[h] = torch.randn(d_model, spec.d_head, generator=g) * scale
                attn.W_O[h, :, noise] = torch.randn(spec.d_head, d_b, generator=g) * spec.d_head**-0.5
        for (layer, h), gain in zip(circuit, gains):
            attn = model.blocks[layer].attn
            attn.W_Q[h].zero_()
            attn.b_Q[h].zero_()
            attn.b_Q[h, 0] = 10.0 * spec.d_head**0.5  # with the key below: score 10 on position 0, 0 elsewhere
            attn.W_K[h].zero_()
            attn.W_K[h, d_tok, 0] = 1.0  # the position-0 flag of A_pos
            attn.W_V[h].zero_()
            attn.W_V[h, tok, : d_tok] = torch.eye(d_tok)
            attn.W_O[h].zero_()
            attn.W_O[h, : d_tok, tok] = gain * torch.eye(d_tok)
    model.eval()
    return model, circuit


def planted_checkpoint(spec: PlantedSpec | None = None) -> Path:
    """The planted model saved as a workbench checkpoint under the cache (built once per spec), so
    it loads, and is stored and reused, like any other model: `load_model(str(path))`."""
    spec = spec or PlantedSpec()
    path = cache_dir() / "planted" / spec.name
    if not is_checkpoint(path):
        model, circuit = build_planted(spec)
        save_checkpoint(model, path, meta={"planted": {"task": TASK, "circuit": [list(c) for c in circuit], "spec": asdict(spec)}})
    return path


def planted_meta(model: HookedTransformer) -> dict | None:
    """The planted circuit and spec of a loaded planted checkpoint (None for other models)."""
    info = getattr(model, "workbench_info", None)
    meta = (info.extra or {}).get("meta", {}) if info is not None else {}
    return meta.get("planted") or None


def planted_circuit(model: HookedTransformer) -> list[tuple[int, int]] | None:
    meta = planted_meta(model)
    return [tuple(c) for c in meta["circuit"]] if meta else None


def recall_prompts(model: HookedTransformer, n: int, seed: int = 0) -> ContrastPrompts:
    """`n` first-token-recall pairs for a planted model: the same tail after the answer token
    (positive) or the blank token (negative)."""
    meta = planted_meta(model)
    if meta is None:
        raise ConfigError(f"task {TASK!r} needs a planted-circuit model (probes.sae_circuits.tasks.planted.planted_checkpoint)")
    vocab, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    rng = np.random.default_rng(seed)
    pos, neg, right, wrong = [], [], [], []
    for _ in range(n):
        a = int(rng.integers(1, vocab))
        tail = rng.integers(1, vocab, n_ctx - 1).tolist()
        pos.append([a, *tail])
        neg.append([BLANK, *tail])
        right.append([a])
        wrong.append([t for t in range(1, vocab) if t != a])
    text = lambda ids: " ".join(f"t{i}" if i != BLANK else "_" for i in ids)  # noqa: E731
    return ContrastPrompts(TASK, pos, neg, right, wrong, [text(p) for p in pos], [text(q) for q in neg],
                           meta={"seed": seed, "metric": "log-odds of the first token (logsumexp over the other non-blank tokens)",
                                 "circuit": json.dumps(meta["circuit"])})
