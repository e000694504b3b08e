"""Everything that can change a result is in its key: change one input, the key changes (and a
stored result is not reused); change nothing, the key stays."""

from __future__ import annotations

import shutil

import torch

from workbench.corpora import Corpus, Document
from workbench.probe_api import get_probe
from workbench.runner import probe_key, run_probe


def corpus() -> Corpus:
    return Corpus("keys", "1", [Document(f"d{i}", "the quick brown fox jumps over the lazy dog " * 30, genre="g") for i in range(4)])


CFG = {"max_tokens": 400, "seq_len": 32, "batch_size": 4}


def key(model, probe="residual-norms", cfg=CFG, c=None):
    return probe_key(get_probe(probe), model, c or corpus(), cfg)


def test_the_key_is_stable_when_nothing_changes(tiny):
    from workbench.models import load_model

    assert key(tiny) == key(tiny) == key(load_model("tiny", device="cpu"))


def test_weights_changed_in_place_change_the_key(tiny):
    before = key(tiny)
    with torch.no_grad():
        tiny.blocks[0].attn.W_Q.mul_(1.01)
    assert key(tiny) != before


def test_a_temporary_weight_swap_changes_the_key_only_while_it_lasts(tiny):
    before = key(tiny)
    p = tiny.blocks[0].mlp.W_in
    original = p.data
    p.data = original * 0
    during = key(tiny)
    p.data = original
    assert during != before and key(tiny) == before


def test_user_built_models_are_keyed_by_their_weights_not_their_config():
    from transformer_lens import HookedTransformer

    from workbench.models.tiny import tiny_config
    from workbench.tokenizers import byte_tokenizer

    def build(shift=0.0):
        model = HookedTransformer(tiny_config("tiny", d_vocab=259), tokenizer=byte_tokenizer(), default_padding_side="right").eval()
        with torch.no_grad():  # before the workbench first sees the model
            model.embed.W_E.add_(shift)
        return model

    a, b = build(), build(0.25)
    assert a.cfg.to_dict() == b.cfg.to_dict()
    assert key(a) != key(b)
    assert key(a) == key(build())


def test_dtype_and_device_type_are_in_the_key(tiny):
    from workbench.models import model_key

    assert model_key(tiny).endswith("|float32|fast|cpu") and model_key(tiny, device=False).endswith("|float32|fast")
    before = key(tiny)
    tiny.to(torch.float64)
    assert key(tiny) != before and "|float64|" in model_key(tiny)


def test_the_forward_path_is_in_the_key(tiny):
    from workbench.models.fast_path import explicit_path

    before = key(tiny)
    with explicit_path(tiny):
        assert key(tiny) != before
    assert key(tiny) == before


def test_hf_local_weights_are_keyed_by_content(tmp_path):
    from standins import tiny_gpt2_dir

    from workbench.models import load_model

    d = tiny_gpt2_dir(tmp_path / "m", seed=0)
    k0 = key(load_model(str(d), device="cpu"))
    other = tiny_gpt2_dir(tmp_path / "other", seed=1)
    shutil.copy(other / "model.safetensors", d / "model.safetensors")  # same size, other numbers
    assert key(load_model(str(d), device="cpu")) != k0


def test_checkpoint_weights_are_keyed_by_content(tiny, tmp_path):
    from workbench.models import load_model, save_checkpoint

    save_checkpoint(tiny, tmp_path / "ck")
    k0 = key(load_model(str(tmp_path / "ck"), device="cpu"))
    with torch.no_grad():
        tiny.unembed.W_U.add_(0.5)
    save_checkpoint(tiny, tmp_path / "ck")
    assert key(load_model(str(tmp_path / "ck"), device="cpu")) != k0


def test_the_embedded_models_identity_is_its_ggufs_bytes(tmp_path, monkeypatch):
    import workbench.models.embedded as embedded

    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF" + bytes(range(200)))
    monkeypatch.setattr(embedded, "gguf_path", lambda: f)
    first = embedded.embedded_weights()
    assert first.startswith("gguf-sha256:")
    f.write_bytes(b"GGUF" + bytes(reversed(range(200))))  # same size
    assert embedded.embedded_weights() != first


def test_hub_models_are_keyed_by_their_cached_revision(tmp_path, monkeypatch):
    from workbench.identity import hub_revision

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_revision("org/model") is None
    refs = tmp_path / "hub" / "models--org--model" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    assert hub_revision("org/model") == "a" * 40
    (refs / "main").write_text("b" * 40)
    assert hub_revision("org/model") == "b" * 40


def test_library_versions_are_in_the_key(tiny, monkeypatch):
    import workbench.runner as runner

    before = key(tiny)
    real = runner.runtime_versions()
    for lib in ("torch", "transformer-lens", "sae-lens"):
        monkeypatch.setattr(runner, "runtime_versions", lambda lib=lib: {**real, lib: "99.0"})
        assert key(tiny) != before, lib


def test_extra_corpora_named_in_a_config_are_keyed_by_version(tiny, tmp_path):
    d = tmp_path / "code"
    d.mkdir()
    (d / "a.txt").write_text("def f(x):\n    return x + 1\n" * 20)
    cfg = {"max_tokens": 256, "seq_len": 32, "batch_size": 4, "domains": [str(d)], "ablation_tokens": 0}
    k0 = key(tiny, "attention-sinks", cfg)
    (d / "a.txt").write_text("def g(y):\n    return y - 1\n" * 20)
    assert key(tiny, "attention-sinks", cfg) != k0


def test_sae_weights_named_in_a_config_are_in_the_key(tiny, tmp_path):
    from sae_standins import saved_sae

    sae = saved_sae(tmp_path / "sae", hook="blocks.1.hook_resid_post", seed=0)
    cfg = {"sae": str(sae)}
    k0 = key(tiny, "function-token-steering", cfg)
    other = saved_sae(tmp_path / "other", hook="blocks.1.hook_resid_post", seed=1)
    shutil.copy(other / "sae_weights.safetensors", sae / "sae_weights.safetensors")
    assert key(tiny, "function-token-steering", cfg) != k0


def test_sae_release_identity_includes_the_hub_revision(tmp_path, monkeypatch):
    from workbench.resources import release_repo, sae_identity

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = release_repo("gpt2-small-res-jb")
    assert repo
    a = sae_identity("gpt2-small-res-jb:blocks.8.hook_resid_pre", None)
    refs = tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("c" * 40)
    b = sae_identity("gpt2-small-res-jb:blocks.8.hook_resid_pre", None)
    assert a != b and b.endswith("@" + "c" * 40)


def test_a_changed_input_is_recomputed_not_reused(tiny, store):
    first = run_probe("residual-norms", tiny, corpus(), CFG, store=store)
    assert run_probe("residual-norms", tiny, corpus(), CFG, store=store).reused
    with torch.no_grad():
        tiny.blocks[1].mlp.W_out.mul_(0.5)
    changed = run_probe("residual-norms", tiny, corpus(), CFG, store=store)
    assert not changed.reused and changed.key != first.key
    assert not changed.result.table["mean_norm"].equals(first.result.table["mean_norm"])


def test_the_stored_meta_names_every_part_of_the_key(tiny, store):
    from workbench.identity import runtime_versions
    from workbench.models import model_key

    out = run_probe("residual-norms", tiny, corpus(), CFG, store=store)
    meta = out.result.meta
    assert meta["model_key"] == model_key(tiny) and meta["runtime"] == runtime_versions()
    assert meta["key"] == out.key == key(tiny)


def test_sae_features_is_recomputed_when_the_sae_weights_change(tiny, store, tmp_path):
    """The SAE a feature-page run names is part of its key: overwriting the SAE's weights gives a new
    key and a recomputed result, never the old SAE's statistics."""
    from sae_standins import saved_sae

    sae = saved_sae(tmp_path / "sae", hook="blocks.1.hook_resid_post", d_sae=48, k=4, seed=0)
    cfg = {"sae": str(sae), "max_tokens": 600, "seq_len": 32, "batch_size": 4, "top_contexts": 2}
    first = run_probe("sae-features", tiny, corpus(), cfg, store=store)
    assert run_probe("sae-features", tiny, corpus(), cfg, store=store).reused
    other = saved_sae(tmp_path / "other", hook="blocks.1.hook_resid_post", d_sae=48, k=4, seed=5)
    shutil.copy(other / "sae_weights.safetensors", sae / "sae_weights.safetensors")
    again = run_probe("sae-features", tiny, corpus(), cfg, store=store)
    assert not again.reused and again.key != first.key
    assert not torch.equal(again.result.tensors["act_sum"], first.result.tensors["act_sum"])
