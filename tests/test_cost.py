"""The cost model behind every empty page's estimate: multiply-adds counted from the config agree
with the model's own weight matrices, estimates follow the config, and a probe without a cost
model gives none."""

from __future__ import annotations

import pytest

from workbench.config import config_from_dict
from workbench.cost import (
    ablation_passes,
    estimate_seconds,
    forward_macs,
    tokens_per_second,
)
from workbench.models.tiny import tiny_model
from workbench.probe_api import get_probe


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-attn-only"])
def test_forward_macs_equals_the_models_weight_matrices(preset):
    model = tiny_model(preset)
    names = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_gate", "W_U")
    # each weight entry is one multiply-add per token (grouped K/V stored once per KV head)
    by_hand = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[-1].lstrip("_") in names)
    assert forward_macs(model.cfg) == by_hand


def test_estimates_follow_the_config_and_this_machines_speed():
    model = tiny_model("tiny")
    spec = get_probe("residual-norms")
    small = estimate_seconds(spec, config_from_dict(spec.config_cls, {"max_tokens": 1000}), model)
    big = estimate_seconds(spec, config_from_dict(spec.config_cls, {"max_tokens": 4000}), model)
    assert small > 0 and big == pytest.approx(4 * small)
    assert tokens_per_second(model) > 0
    assert ablation_passes(model.cfg) == model.cfg.n_heads * (model.cfg.n_layers + 1) / 2 + 1
    assert estimate_seconds(spec, config_from_dict(spec.config_cls, {"max_tokens": None}), model) is None  # the whole corpus: unknown here
