"""The trainer: learns, checkpoints at chosen steps, resumes exactly, refuses a mismatched resume."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError
from workbench.models import load_model, tiny_model
from workbench.training import TrainConfig, frozen, log_spaced_steps, train


def repeating_batches(vocab: int = 50, batch: int = 8, seq: int = 16):
    """A learnable synthetic task: each sequence counts upward modulo `vocab` from a seeded start."""

    def fn(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(step)
        start = torch.randint(0, vocab, (batch, 1), generator=g)
        return (start + torch.arange(seq)) % vocab

    return fn


def fresh(seed: int = 0):
    return tiny_model("tiny", d_vocab=50, n_ctx=32, seed=seed, n_layers=1, d_model=32, d_head=8, d_mlp=64)


def test_training_lowers_the_loss(tmp_path):
    model = fresh()
    result = train(model, repeating_batches(), TrainConfig(steps=60, lr=3e-3, log_every=5), tmp_path, progress=False)
    first, last = result.log["loss"].iloc[0], result.log["loss"].iloc[-1]
    assert last < 0.5 * first, (first, last)
    assert (tmp_path / "train_log.csv").exists()


def test_checkpoints_at_chosen_steps_load_back(tmp_path):
    model = fresh()
    cfg = TrainConfig(steps=12, lr=1e-3, checkpoint_steps=(0, 5, 12))
    result = train(model, repeating_batches(), cfg, tmp_path, progress=False)
    assert sorted(result.checkpoints) == [0, 5, 12]
    final = load_model(str(result.checkpoints[12]), device="cpu", fast=False)  # the path the trained model ran
    x = repeating_batches()(999)
    with torch.no_grad():
        assert torch.equal(final(x), model(x))
        assert not torch.equal(load_model(str(result.checkpoints[0]), device="cpu", fast=False)(x), model(x))


def test_resume_after_interruption_is_identical(tmp_path):
    cfg = TrainConfig(steps=20, lr=3e-3, resume_every=5, optimizer="adamw")
    whole = fresh()
    train(whole, repeating_batches(), cfg, tmp_path / "whole", progress=False)

    batches = repeating_batches()

    def dies_at_13(step):
        if step == 13:
            raise KeyboardInterrupt("simulated kill")
        return batches(step)

    interrupted = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, dies_at_13, cfg, tmp_path / "resumed", progress=False)
    resumed = fresh()
    result = train(resumed, batches, cfg, tmp_path / "resumed", progress=False)
    assert result.resumed_from == 10
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert list(result.log["step"]) == list(train(fresh(), batches, cfg, tmp_path / "whole", progress=False).log["step"])


def test_sgd_resume_restores_momentum(tmp_path):
    cfg = TrainConfig(steps=10, lr=0.05, optimizer="sgd", resume_every=4)
    whole = fresh()
    train(whole, repeating_batches(), cfg, tmp_path / "a", progress=False)
    part = fresh()
    train(part, repeating_batches(), TrainConfig(steps=4, lr=0.05, optimizer="sgd", resume_every=4), tmp_path / "b", progress=False)
    rest = fresh()
    train(rest, repeating_batches(), cfg, tmp_path / "b", progress=False)
    for (k, a), (_, b) in zip(whole.state_dict().items(), rest.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_with_a_different_config_is_refused(tmp_path):
    train(fresh(), repeating_batches(), TrainConfig(steps=4, lr=1e-3, resume_every=2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(fresh(), repeating_batches(), TrainConfig(steps=4, lr=5e-3, resume_every=2), tmp_path, progress=False)


def test_bad_train_config():
    with pytest.raises(ConfigError):
        TrainConfig(steps=0).validate()
    with pytest.raises(ConfigError):
        TrainConfig(optimizer="lion").validate()  # type: ignore[arg-type]


def test_log_spaced_steps():
    steps = log_spaced_steps(10_000, 9)
    assert steps[0] == 1 and steps[-1] == 10_000
    assert all(b > a for a, b in zip(steps, steps[1:]))


def test_frozen_keeps_gradients_out_of_the_weights_and_restores_their_flags():
    model = fresh()
    model.embed.W_E.requires_grad_(False)  # a weight frozen beforehand stays frozen afterwards
    x = torch.zeros(1, 4, model.cfg.d_model, requires_grad=True)
    with frozen(model):
        model.blocks[0].mlp(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert flags.pop("embed.W_E") is False and all(flags.values())
