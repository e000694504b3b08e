"""SAE support: loading (local directory, SAE Lens release through an offline HF cache, workbench-trained),
training with SAE Lens's trainer on a tiny model, and the quality record against a brute-force computation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sae_standins import mini_corpus, random_topk_sae, saved_sae
from standins import hub_snapshot_dir

from workbench import hooks
from workbench.config import StreamConfig
from workbench.errors import ConfigError, MissingResourceError
from workbench.saes import (
    evaluate_sae,
    hook_name,
    load_sae,
    preset_spec,
    read_recipe,
    special_token_ids,
    train_sae,
    trained_dir,
)
from workbench.saes.loading import check_fits
from workbench.slices import corpus_batches


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k])


def test_local_directory_round_trip(tmp_path):
    ref = random_topk_sae(seed=3)
    ref.save_model(tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    _same_weights(ref, sae)
    assert hook_name(sae) == "blocks.0.hook_resid_post"
    assert sae.workbench_source.startswith("dir:sae@")
    x = torch.randn(5, 64)
    torch.testing.assert_close(sae.encode(x), ref.encode(x))


def test_release_loads_from_offline_hf_cache(tmp_path, monkeypatch):
    """The real SAE.from_pretrained path: release -> repo and folder from SAE Lens's directory ->
    hf_hub_download, served from a Hugging Face cache with the hub switched off."""
    import huggingface_hub.constants as hc

    snap = hub_snapshot_dir(tmp_path / "hf", "jbloom/GPT2-Small-SAEs-Reformatted")
    ref = random_topk_sae(hook="blocks.0.hook_resid_pre", d_in=32, d_sae=48, k=4, seed=1)
    ref.save_model(snap / "blocks.0.hook_resid_pre")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    sae = load_sae("gpt2-small-res-jb:blocks.0.hook_resid_pre")
    _same_weights(ref, sae)
    assert sae.workbench_source == "release:gpt2-small-res-jb:blocks.0.hook_resid_pre"
    with pytest.raises(ConfigError, match="not found in release"):
        load_sae("gpt2-small-res-jb:blocks.99.hook_resid_pre")
    with pytest.raises(MissingResourceError, match="hub"):  # in the directory, but not in the cache
        load_sae("gpt2-small-res-jb:blocks.1.hook_resid_pre")


def test_bad_sources_and_misfits(tiny, tmp_path):
    with pytest.raises(ConfigError, match="Cannot resolve SAE"):
        load_sae(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="needs the model"):
        load_sae("trained:0")
    check_fits(random_topk_sae(), tiny)
    with pytest.raises(ConfigError, match="does not exist"):
        check_fits(random_topk_sae(hook="blocks.7.hook_resid_post"), tiny)
    with pytest.raises(ConfigError, match="d_model"):
        check_fits(random_topk_sae(d_in=32), tiny)


def test_spec_validation():
    with pytest.raises(ConfigError, match="n_batches_in_buffer"):
        preset_spec("blocks.0.hook_resid_post", n_batches_in_buffer=2, context_size=64, train_batch_tokens=512)
    with pytest.raises(ConfigError, match="architecture"):
        preset_spec("blocks.0.hook_resid_post", architecture="relu")
    with pytest.raises(ConfigError, match="preset"):
        preset_spec("blocks.0.hook_resid_post", preset="tpu")
    assert preset_spec("x", "gpu").training_tokens > preset_spec("x", "cpu").training_tokens


def test_quality_matches_brute_force(tiny, brown):
    """Explained variance (against SAE Lens's own calculator), L0, dead share and the spliced /
    zero-ablated cross-entropy, recomputed batch by batch with plain hooks."""
    from sae_lens.evals import ExplainedVarianceCalculator

    corpus = mini_corpus(brown, 40)
    sae = random_topk_sae()
    cfg = StreamConfig(split="validation", max_tokens=600, seq_len=64, batch_size=4)
    q = evaluate_sae(tiny, sae, corpus, cfg, progress=False)

    special = torch.tensor(special_token_ids(tiny))
    ev, fired, l0, n = ExplainedVarianceCalculator(), torch.zeros(96, dtype=torch.bool), 0.0, 0
    ce, n_pred = [0.0, 0.0, 0.0], 0
    hook = "blocks.0.hook_resid_post"
    with torch.no_grad():
        for b in corpus_batches(tiny, corpus, cfg):
            logits, cache = tiny.run_with_cache(b.tokens, names_filter=[hook])
            for r in range(b.tokens.shape[0]):
                keep = [t for t in range(b.tokens.shape[1])
                        if b.valid[r, t] and not b.is_bos[r, t] and int(b.tokens[r, t]) not in special.tolist()]
                x = cache[hook][r, keep]
                f = sae.encode(x)
                ev.add_batch(sae.decode(f), x)
                fired |= (f > 0).any(0)
                l0 += float((f > 0).sum())
                n += len(keep)

                def replace(fn, r=r, keep=keep):
                    def h(act, hook):
                        act = act.clone()
                        act[:, keep] = fn(act[:, keep])
                        return act
                    return h

                row = b.tokens[r:r + 1]
                spliced = tiny.run_with_hooks(row, fwd_hooks=[(hook, replace(sae))])[0]
                zeroed = tiny.run_with_hooks(row, fwd_hooks=[(hook, replace(torch.zeros_like))])[0]
                for t in keep:
                    if t + 1 < b.tokens.shape[1] and b.valid[r, t + 1]:
                        tgt = b.tokens[r, t + 1]
                        for i, lg in enumerate((logits[r], spliced, zeroed)):
                            ce[i] += float(F.cross_entropy(lg[t][None], tgt[None]))
                        n_pred += 1
    assert q.n_tokens == n and q.n_predictions == n_pred
    assert q.explained_variance == pytest.approx(ev.compute(), abs=1e-4)
    assert q.l0 == pytest.approx(l0 / n) and q.l0 <= 6
    assert q.n_dead == int((~fired).sum()) and q.dead_share == pytest.approx(q.n_dead / 96)
    assert q.ce_clean == pytest.approx(ce[0] / n_pred, rel=1e-4)
    assert q.ce_spliced == pytest.approx(ce[1] / n_pred, rel=1e-4)
    assert q.ce_zero_ablation == pytest.approx(ce[2] / n_pred, rel=1e-4)
    assert q.ce_increase == pytest.approx(q.ce_spliced - q.ce_clean)


def test_train_smoke_with_sae_lens_and_reuse(tiny, brown, tmp_path):
    corpus = mini_corpus(brown, 40)
    spec = preset_spec("blocks.1.hook_resid_post", expansion=2, k=4, training_tokens=1024, train_batch_tokens=128,
                       context_size=32, store_batch_prompts=4, n_batches_in_buffer=8, n_batches_for_norm_estimate=2,
                       eval_tokens=256, dead_feature_window=4, lr_warm_up_steps=2, activation_tokens=None)  # streaming runner
    out = train_sae(tiny, corpus, spec, out_dir=tmp_path / "sae", progress=False)
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "workbench_sae.json"}
    sae = load_sae(out)
    assert hook_name(sae) == "blocks.1.hook_resid_post" and sae.cfg.d_sae == 128 and sae.cfg.k == 4
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "topk"
    recipe = read_recipe(out)
    q = recipe["quality"]
    assert recipe["d_sae"] == 128 and recipe["corpus"] == corpus.id
    assert 0 < q["l0"] <= 4 and 0 <= q["dead_share"] <= 1 and q["n_tokens"] > 0
    assert q["ce_increase"] == pytest.approx(q["ce_spliced"] - q["ce_clean"])
    assert q["explained_variance"] > -1.0  # a few steps of training: far from good, but not garbage
    mtime = (out / "sae_weights.safetensors").stat().st_mtime
    assert train_sae(tiny, corpus, spec, out_dir=out, progress=False) == out  # cached: not retrained
    assert (out / "sae_weights.safetensors").stat().st_mtime == mtime


def test_trained_source_resolves_to_the_recipe_cache(tiny, brown, tmp_path, monkeypatch):
    import workbench.saes.recipes as recipes

    monkeypatch.setattr(recipes, "cache_dir", lambda: tmp_path)
    with pytest.raises(MissingResourceError, match="experiments.train_saes"):
        load_sae("trained:1", model=tiny)
    path = trained_dir(tiny, brown.id, preset_spec("blocks.1.hook_resid_post"))
    saved_sae(path, hook="blocks.1.hook_resid_post")
    (path / "workbench_sae.json").write_text("{}")
    sae = load_sae("trained:L1", model=tiny)
    assert hook_name(sae) == "blocks.1.hook_resid_post"
    with pytest.raises(ConfigError, match="no hook"):
        load_sae("trained:9", model=tiny)


def test_in_memory_training_shares_one_pass(tiny, brown, tmp_path, monkeypatch):
    """The CPU path: activations collected once for two hooks (BOS/EOS/PAD dropped, equal to a plain
    run_with_cache), then SAE Lens's SAETrainer over shuffled passes; SAE Lens's files and the recipe."""
    import workbench.saes.training as training
    from workbench.saes import train_saes

    corpus = mini_corpus(brown, 40)
    common = dict(expansion=2, k=4, activation_tokens=512, training_tokens=1024, train_batch_tokens=128, context_size=32,
                  store_batch_prompts=4, n_batches_for_norm_estimate=2, eval_tokens=128, dead_feature_window=4, lr_warm_up_steps=2)
    specs = [preset_spec(hooks.resid_post(layer), **common) for layer in (0, 1)]
    acts = training.collect_activations(tiny, corpus, [s.hook_name for s in specs], specs[0], progress=False)
    batches = corpus_batches(tiny, corpus, StreamConfig(split="train", max_tokens=512, seq_len=32, batch_size=4, prepend_bos=True,
                                                       shuffle_docs=True, seed=0))
    exclude = torch.tensor(special_token_ids(tiny))
    expect = {h: [] for h in acts}
    for b in batches:
        _, cache = tiny.run_with_cache(b.tokens)
        keep = b.valid & ~b.is_bos & ~torch.isin(b.tokens, exclude)
        for h in expect:
            expect[h].append(cache[h][keep])
    for h in acts:
        torch.testing.assert_close(acts[h], torch.cat(expect[h]), rtol=1e-4, atol=1e-5)

    calls = []
    real = training.collect_activations
    monkeypatch.setattr(training, "collect_activations", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    outs = train_saes(tiny, corpus, specs, [tmp_path / "a", tmp_path / "b"], progress=False)
    assert calls == [["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]]  # one shared pass
    for spec, out in zip(specs, outs):
        assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "runner_cfg.json",
                                                    "workbench_sae.json"}
        sae = load_sae(out)
        assert hook_name(sae) == spec.hook_name and sae.cfg.d_sae == 128
        r = read_recipe(out)
        assert r["distinct_train_tokens"] == acts[spec.hook_name].shape[0]
        assert 0 < r["quality"]["l0"] <= 4
    assert train_saes(tiny, corpus, specs, [tmp_path / "a", tmp_path / "b"], progress=False) == outs
    assert calls == [["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]]  # cached: no second pass
    with pytest.raises(ConfigError, match="activation_tokens"):
        preset_spec("x", activation_tokens=64, train_batch_tokens=128)


# ----- an SAE's declared preprocessing -----


def test_an_sae_trained_on_centred_writing_weights_reads_a_raw_model_correctly(tiny):
    """SAE Lens's gpt2-small-res-jb declares center_writing_weights: its inputs from a raw model must
    be mean-centred. Independent check: the same SAE on the processed model's residual."""
    from workbench.models import load_model
    from workbench.saes import (
        encode,
        expected_processing,
        needs_centering,
        prepare,
        reconstruct,
    )

    sae = random_topk_sae(hook="blocks.1.hook_resid_post", d_in=64)
    sae.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": True}
    assert expected_processing(sae)["center_writing_weights"] is True
    processed = load_model("tiny", numerics="processed", device="cpu")
    assert needs_centering(sae, tiny) and not needs_centering(sae, processed)
    tokens = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_post"
    with torch.inference_mode():
        raw_x = tiny.run_with_cache(tokens, names_filter=hook)[1][hook]
        proc_x = processed.run_with_cache(tokens, names_filter=hook)[1][hook]
    assert not torch.allclose(raw_x, proc_x, atol=1e-3)  # the two models' residuals really differ
    f_raw = encode(prepare(sae, tiny), raw_x)
    f_proc = encode(prepare(sae, processed), proc_x)
    torch.testing.assert_close(f_raw, f_proc, rtol=1e-4, atol=1e-4)
    # the reconstruction goes back to the raw model's space: the processed model's reconstruction plus the removed mean
    rec_proc = reconstruct(prepare(sae, processed), proc_x)
    rec_raw = reconstruct(prepare(sae, tiny), raw_x)
    torch.testing.assert_close(rec_raw - raw_x.mean(-1, keepdim=True), rec_proc, rtol=1e-4, atol=1e-4)


def test_a_preprocessing_that_cannot_be_bridged_is_refused(tiny):
    from workbench.models import load_model
    from workbench.saes import needs_centering

    sae = random_topk_sae(hook="blocks.1.ln2.hook_normalized", d_in=64)  # an LN output: fold_ln changes it
    sae.cfg.metadata.model_from_pretrained_kwargs = {}
    with pytest.raises(ConfigError, match="matching numerics"):
        needs_centering(sae, tiny)
    plain = random_topk_sae(hook="blocks.1.hook_resid_post", d_in=64)
    plain.cfg.metadata.model_from_pretrained_kwargs = {"center_writing_weights": False, "fold_ln": False,
                                                       "center_unembed": False, "fold_value_biases": False}
    assert not needs_centering(plain, tiny)
    with pytest.raises(ConfigError, match="matching numerics"):
        needs_centering(plain, load_model("tiny", numerics="processed", device="cpu"))


def test_the_quality_badge_marks_a_weak_sae_and_says_why():
    from workbench.saes import quality_badge

    first_look = {"explained_variance": 0.815, "dead_share": 1504 / 2304, "ce_increase": 0.87, "l0": 64.0}
    b = quality_badge(first_look)
    assert b["weak"] is True and b["text"] == "explained var. 0.815 · dead 65.3% · CE +0.870 nats · L0 64.0"
    assert len(b["reasons"]) == 3 and "0.815 < 0.9" in b["reasons"][0] and "65% of latents dead" in b["reasons"][1]
    good = quality_badge({"explained_variance": 0.95, "dead_share": 0.004, "ce_increase": 0.12, "l0": 64.0})
    assert good["weak"] is False and good["reasons"] == []
    assert quality_badge({**first_look, "dead_share": 0.0, "ce_increase": 0.1})["reasons"] == ["explained variance 0.815 < 0.9"]
    assert quality_badge(None) == {"text": "quality not measured", "weak": None, "reasons": []}
