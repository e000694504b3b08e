"""How long a run will take here, from the probe's own cost model and this machine's measured speed.

A probe may declare `cost(config, model_cfg) -> float`: the work of a run in forward
token-passes of the model (a training step's forward and backward count 3; an unembedding of one
position counts d_model x d_vocab over the forward's multiply-adds). `estimate_seconds` divides
that by the model's forward throughput, measured once per model and thread count with two timed
passes of 4 x 128 tokens (about a second on SmolLM2 on a CPU), so an estimate follows the machine
and the config instead of being a constant.
"""

from __future__ import annotations

import time
from typing import Any

import torch

_RATE: dict[tuple[str, int, str], float] = {}
CALIBRATION_SHAPE = (4, 128)


def forward_macs(cfg: Any) -> float:
    """Multiply-adds of one token through the model (attention projections, MLP, unembedding)."""
    d, L = cfg.d_model, cfg.n_layers
    heads = cfg.n_heads * cfg.d_head
    kv = (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads) * cfg.d_head
    mlp = 0 if getattr(cfg, "attn_only", False) else (3 if getattr(cfg, "gated_mlp", False) else 2) * d * (cfg.d_mlp or 4 * d)
    return float(L * (2 * d * heads + 2 * d * kv + mlp) + d * cfg.d_vocab)


def unembed_share(cfg: Any) -> float:
    """One position's unembedding, as a share of a token's forward pass."""
    return cfg.d_model * cfg.d_vocab / forward_macs(cfg)


def ablation_passes(cfg: Any) -> float:
    """Forward token-passes per token of a per-head zero-ablation that re-runs layers l.. for each
    head of layer l: n_heads x (n_layers + 1) / 2, plus the clean pass."""
    return cfg.n_heads * (cfg.n_layers + 1) / 2 + 1


def tokens_per_second(model) -> float:
    """Measured forward throughput of `model` here (cached per model, thread count and device)."""
    from workbench.models.info import model_key

    device = next(model.parameters()).device
    key = (model_key(model), torch.get_num_threads(), str(device))
    if key not in _RATE:
        b, t = CALIBRATION_SHAPE
        t = min(t, model.cfg.n_ctx)
        tokens = torch.randint(0, model.cfg.d_vocab, (b, t), device=device)
        with torch.inference_mode():
            model(tokens, return_type="logits")  # warm-up
            t0 = time.perf_counter()
            model(tokens, return_type="logits")
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            _RATE[key] = b * t / max(time.perf_counter() - t0, 1e-6)
    return _RATE[key]


def estimate_seconds(spec: Any, config: Any, model) -> float | None:
    """Seconds a run of `spec` with `config` on `model` should take here; None when the probe
    declares no cost model (or its cost depends on something only the run knows)."""
    cost = getattr(spec, "cost", None)
    if cost is None:
        return None
    passes = cost(config, model.cfg)
    if passes is None:
        return None
    return float(passes) / tokens_per_second(model)
