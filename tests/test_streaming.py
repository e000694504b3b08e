"""Activation streaming: equals a brute-force cached computation, resumes exactly, backs off on
OOM, refuses runs that will not fit."""

from __future__ import annotations

import pytest
import torch

from probes.residual_norms import ResidualNormsAccumulator
from workbench import hooks
from workbench.activations import StreamStats, stop_layer, stream
from workbench.corpora import ChunkSpec, Corpus, Document, TokenBatches, tokenize_corpus
from workbench.errors import MemoryBudgetError


def batches_for(model, n_docs=5, seq_len=32, batch_size=4, max_tokens=None, repeat=2) -> TokenBatches:
    docs = [Document(f"d{i}", f"Document {i}: the cat sat on the mat, and then it left. " * repeat, genre="x") for i in range(n_docs)]
    tc = tokenize_corpus(Corpus("toy", "1", docs), model.tokenizer, separator_id=model.tokenizer.eos_token_id)
    return TokenBatches(tc, ChunkSpec(seq_len=seq_len, batch_size=batch_size, max_tokens=max_tokens), bos_id=model.tokenizer.bos_token_id)


class MeanResidAccumulator:
    """Sum of resid_post at the last layer over valid positions (simple, exact to check)."""

    needs_logits = False

    def __init__(self, model, fail_at: int | None = None):
        self.hook_names = [hooks.resid_post(model.cfg.n_layers - 1), "blocks.0.hook_resid_post"]
        self.sum = torch.zeros(model.cfg.d_model, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.fail_at, self.seen = fail_at, 0

    def update(self, batch, acts, logits):
        if self.fail_at is not None and batch.index == self.fail_at:
            raise KeyboardInterrupt("simulated kill")
        x = acts[self.hook_names[0]][batch.valid]
        self.sum += x.double().sum(0)
        self.count += x.shape[0]
        self.seen += batch.tokens.shape[0]

    def state_dict(self):
        return {"sum": self.sum, "count": self.count}

    def load_state_dict(self, s):
        self.sum, self.count = s["sum"].clone(), s["count"].clone()


def brute_force_mean(model, batches):
    rows = []
    for b in batches:
        _, cache = model.run_with_cache(b.tokens)
        rows.append(cache[hooks.resid_post(model.cfg.n_layers - 1)][b.valid])
    return torch.cat(rows).double().mean(0)


def test_stream_matches_full_cache(tiny):
    batches = batches_for(tiny)
    acc = MeanResidAccumulator(tiny)
    stats = stream(tiny, batches, acc, progress=False)
    assert isinstance(stats, StreamStats) and stats.tokens == batches.n_positions
    torch.testing.assert_close(acc.sum / acc.count, brute_force_mean(tiny, batches), atol=1e-5, rtol=1e-5)


def test_resume_after_interruption_is_identical(tiny, tmp_path):
    batches = batches_for(tiny, n_docs=8)
    assert len(batches) >= 5
    whole = MeanResidAccumulator(tiny)
    stream(tiny, batches, whole, progress=False)

    killed = MeanResidAccumulator(tiny, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        stream(tiny, batches, killed, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert (tmp_path / "stream_state.safetensors").exists()

    resumed = MeanResidAccumulator(tiny)
    stats = stream(tiny, batches, resumed, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert stats.resumed_from_batch == 4
    assert resumed.seen < whole.seen  # it really skipped the finished batches
    assert torch.equal(resumed.sum, whole.sum) and torch.equal(resumed.count, whole.count)
    assert not (tmp_path / "stream_state.safetensors").exists()  # cleaned up after success


def test_checkpoint_of_other_inputs_is_not_reused(tiny, tmp_path):
    batches = batches_for(tiny, n_docs=8)
    killed = MeanResidAccumulator(tiny, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        stream(tiny, batches, killed, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    other = batches_for(tiny, n_docs=8, seq_len=16)
    fresh = MeanResidAccumulator(tiny)
    stats = stream(tiny, other, fresh, checkpoint_dir=tmp_path, checkpoint_every=2, progress=False)
    assert stats.resumed_from_batch == 0


def test_oom_halves_the_micro_batch_and_keeps_the_result(tiny, monkeypatch):
    import workbench.activations as act

    batches = batches_for(tiny, batch_size=8)
    reference = MeanResidAccumulator(tiny)
    stream(tiny, batches, reference, progress=False)

    real = act.forward_with_hooks

    def flaky(model, tokens, hooks, needs_logits):
        if tokens.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, tokens, hooks, needs_logits)

    monkeypatch.setattr(act, "forward_with_hooks", flaky)
    acc = MeanResidAccumulator(tiny)
    stats = stream(tiny, batches, acc, progress=False)
    assert stats.micro_batch_size == 2
    torch.testing.assert_close(acc.sum, reference.sum, atol=1e-6, rtol=1e-6)


def test_memory_estimate_refuses_what_cannot_fit(tiny, monkeypatch):
    import workbench.activations as act

    monkeypatch.setattr(act, "available_memory_bytes", lambda device: 1024)
    with pytest.raises(MemoryBudgetError, match="batch_size"):
        stream(tiny, batches_for(tiny), MeanResidAccumulator(tiny), progress=False)


def test_stop_layer_skips_unneeded_blocks(tiny):
    assert stop_layer(tiny, ["blocks.0.hook_resid_post"], needs_logits=False) == 1
    assert stop_layer(tiny, ["blocks.1.hook_resid_post"], needs_logits=False) is None
    assert stop_layer(tiny, ["ln_final.hook_normalized"], needs_logits=False) is None
    assert stop_layer(tiny, ["blocks.0.hook_resid_post"], needs_logits=True) is None


def test_residual_norms_accumulator_matches_brute_force(tiny):
    batches = batches_for(tiny, n_docs=2, seq_len=24, batch_size=3, repeat=1)
    acc = ResidualNormsAccumulator(tiny, lens_positions=0)
    stream(tiny, batches, acc, progress=False)
    table = acc.table()
    norms = {l: [] for l in range(tiny.cfg.n_layers + 1)}
    bos = {l: [] for l in range(tiny.cfg.n_layers + 1)}
    correct = {l: [0, 0] for l in range(tiny.cfg.n_layers + 1)}
    for b in batches:
        _, cache = tiny.run_with_cache(b.tokens)
        layers = [cache["hook_embed"] + cache["hook_pos_embed"]] + [cache[hooks.resid_post(l)] for l in range(tiny.cfg.n_layers)]
        for l, x in enumerate(layers):
            for i in range(b.tokens.shape[0]):
                for t in range(b.tokens.shape[1]):
                    if not b.valid[i, t]:
                        continue
                    (bos if b.is_bos[i, t] else norms)[l].append(x[i, t].norm().item())
                    if t + 1 < b.tokens.shape[1] and b.valid[i, t + 1]:
                        pred = tiny.unembed(tiny.ln_final(x[i, t][None, None]))[0, 0].argmax().item()
                        correct[l][0] += int(pred == b.tokens[i, t + 1].item())
                        correct[l][1] += 1
    for l in range(tiny.cfg.n_layers + 1):
        row = table.iloc[l]
        assert row["mean_norm"] == pytest.approx(sum(norms[l]) / len(norms[l]), rel=1e-5)
        assert row["bos_norm"] == pytest.approx(sum(bos[l]) / len(bos[l]), rel=1e-5)
        assert row["lens_top1"] == pytest.approx(correct[l][0] / correct[l][1], abs=1e-9)


def test_the_memory_check_counts_the_gpu_cache_and_not_the_resident_weights(tiny, monkeypatch):
    """The estimate is what a batch adds (resident weights are not counted twice), and on a GPU the
    caching allocator's reserved-but-unused memory counts as available."""
    from workbench.activations import available_memory_bytes, estimate_memory_bytes

    cfg = tiny.cfg
    bt = 4 * 32
    expected = (bt * (4 * cfg.d_model + 3 * cfg.d_mlp) + 4 * cfg.n_heads * 32 * 32 * 2) * 4 * 2 + bt * cfg.d_model * 4
    assert estimate_memory_bytes(tiny, 4, 32, [hooks.resid_post(0)], needs_logits=False) == expected
    import workbench.activations as act

    monkeypatch.setattr(act, "available_memory_bytes", lambda device: int(expected / 0.9) + 1)
    assert act.check_memory(tiny, 4, 32, [hooks.resid_post(0)], False) == expected  # fits without counting the weights again
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 6 * 2**30)
    assert available_memory_bytes(torch.device("cuda")) == 7 * 2**30
