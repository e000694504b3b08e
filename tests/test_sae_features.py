"""The SAE feature probe against a per-position brute force on a tiny model and a random TopK SAE:
firing counts, sums, histograms, firing tokens, top contexts, logit effects; stored and reloaded;
a feature on the user's own text; two ranks equal one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.sae_features import SAEFeaturesConfig, feature_activations
from probes.sae_features.probe import HIST_RANGE, run, top_tokens_per_feature
from tests.sae_standins import mini_corpus, saved_sae
from workbench.errors import ConfigError
from workbench.saes import load_sae
from workbench.saes.quality import special_token_ids
from workbench.slices import corpus_batches

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory, brown):
    from workbench.models import load_model

    tiny = load_model("tiny", device="cpu")
    sae_dir = saved_sae(tmp_path_factory.mktemp("sae") / "s", hook=HOOK, d_sae=48, k=4, seed=2)
    corpus = mini_corpus(brown, 8)
    cfg = SAEFeaturesConfig(sae=str(sae_dir), max_tokens=1200, seq_len=64, batch_size=4, top_contexts=3, context_before=3,
                            context_after=1, hist_bins=12, n_logits=4, n_tokens=3)
    return tiny, corpus, cfg, run(tiny, corpus, cfg)


def test_every_statistic_equals_a_brute_force_pass(feature_run):
    tiny, corpus, cfg, res = feature_run
    sae = load_sae(cfg.sae, model=tiny)
    special = set(special_token_ids(tiny))
    d, bins = sae.cfg.d_sae, cfg.hist_bins
    fired, sums, hist = np.zeros(d, int), np.zeros(d), np.zeros((d, bins), int)
    pairs: dict[tuple[int, int], int] = {}
    best: list[list[tuple[float, list[int]]]] = [[] for _ in range(d)]
    scored = 0
    with torch.no_grad():
        for b in corpus_batches(tiny, corpus, cfg):
            _, cache = tiny.run_with_cache(b.tokens, names_filter=[HOOK])
            for r in range(b.tokens.shape[0]):
                for p in range(b.tokens.shape[1]):
                    t = int(b.tokens[r, p])
                    if not b.valid[r, p] or t in special:
                        continue
                    scored += 1
                    a = sae.encode(cache[HOOK][r, p][None])[0]
                    window = [int(b.tokens[r, q]) if 0 <= q < b.tokens.shape[1] and b.valid[r, q] else -1 for q in range(p - 3, p + 2)]
                    for f in (a > 0).nonzero().flatten().tolist():
                        v = float(a[f])
                        fired[f] += 1
                        sums[f] += v
                        lo, hi = HIST_RANGE
                        hist[f, min(bins - 1, max(0, int(np.floor((np.log10(v) - lo) / (hi - lo) * bins))))] += 1
                        pairs[(f, t)] = pairs.get((f, t), 0) + 1
                        best[f].append((v, window))
    t = res.tensors
    assert int(t["scored"]) == scored > 500
    np.testing.assert_array_equal(t["fired"].numpy(), fired)
    np.testing.assert_allclose(t["act_sum"].numpy(), sums, rtol=1e-5, atol=1e-6)
    assert np.abs(t["hist"].numpy() - hist).sum() <= 2  # a value on a bin edge may fall either side in float32
    assert t["hist"].sum() == fired.sum()
    for f in range(d):
        if not fired[f]:
            continue
        want = sorted(((c, tok) for (ff, tok), c in pairs.items() if ff == f), key=lambda x: (-x[0], x[1]))[:3]
        got = [(int(c), int(i)) for i, c in zip(t["top_token_ids"][f], t["top_token_counts"][f]) if i >= 0]
        assert got == want, f
        top = sorted(best[f], key=lambda x: -x[0])[:3]
        np.testing.assert_allclose(t["top_vals"][f][: len(top)].numpy(), [v for v, _ in top], rtol=1e-5)
        assert t["top_ctx"][f][0].tolist() == top[0][1]
    # logit effects: the decoder row through the final norm's weight and W_U, brute force for one feature
    f = int(np.argmax(fired))
    eff = (sae.W_dec[f] * tiny.ln_final.w) @ tiny.W_U
    assert t["logit_top_ids"][f].tolist() == eff.topk(4).indices.tolist()
    assert t["logit_bottom_ids"][f].tolist() == eff.topk(4, largest=False).indices.tolist()
    page = res.feature(f)
    assert page["contexts"][0]["tokens"][page["contexts"][0]["focus"]] == res.token_strings[str(top_tok := t["top_ctx"][f][0][3].item())]
    assert top_tok >= 0 and page["fired"] == fired[f] and len(page["hist_counts"]) == bins


def test_stored_reloaded_and_own_text(feature_run, tmp_path):
    from probes.sae_features import SAEFeaturesResult

    tiny, _, cfg, res = feature_run
    back = SAEFeaturesResult.load(res.save(tmp_path / "r"))
    f = res.live_features()[0]
    assert back.feature(f) == res.feature(f)
    sae = load_sae(cfg.sae, model=tiny)
    toks, acts = feature_activations(tiny, sae, "the cat", f)
    assert len(toks) == len(acts) == 8  # BOS + 7 bytes
    _, cache = tiny.run_with_cache(tiny.to_tokens("the cat"), names_filter=[HOOK])
    np.testing.assert_allclose(acts, sae.encode(cache[HOOK][0])[:, f].tolist(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="out of range"):
        res.feature(10**6)
    with pytest.raises(ConfigError, match="out of range"):
        feature_activations(tiny, sae, "x", -1)


def test_top_tokens_per_feature_orders_by_count_then_id():
    vocab = 10
    keys = np.array([0 * vocab + 3, 0 * vocab + 1, 0 * vocab + 2, 2 * vocab + 5])
    counts = np.array([5, 7, 5, 1])
    ids, cnt = top_tokens_per_feature(keys, counts, vocab, d=3, n=2)
    assert ids.tolist() == [[1, 2], [-1, -1], [5, -1]] and cnt.tolist() == [[7, 5], [0, 0], [1, 0]]


def test_two_ranks_give_the_single_run(feature_run):
    """Each half of the batches streamed alone (as two ranks do), then merged, equals one pass."""
    tiny, corpus, cfg, res = feature_run
    from probes.sae_features.probe import FeatureAccumulator
    sae = load_sae(cfg.sae, model=tiny)
    batches = list(corpus_batches(tiny, corpus, cfg))
    states = []
    for rank in range(2):
        acc = FeatureAccumulator(sae, tiny.cfg.d_vocab, special_token_ids(tiny), 3, 3, 1, 12)
        for b in batches[rank::2]:
            with torch.no_grad():
                _, cache = tiny.run_with_cache(b.tokens, names_filter=[HOOK])
            acc.update(b, {HOOK: cache[HOOK]}, None)
        states.append(acc.state_dict())
    merged = acc.merge_states(states)
    for k in ("scored", "fired", "hist", "top_vals", "top_ctx"):
        assert torch.equal(merged[k], res.tensors[k]) if k != "top_vals" else torch.allclose(merged[k], res.tensors[k]), k


def test_the_feature_browser_offers_live_features_by_density_band_and_points_a_dead_one_to_live_ones():
    """Bands as a feature browser filters them: 1e-3..1e-2 first, then rarer, then denser, >5% last;
    a dead feature is never offered, and a dead one typed in is pointed to its nearest live ones."""
    from probes.sae_features import SAEFeaturesResult

    fired = torch.tensor([0, 50, 500, 3000, 10_000, 5, 300, 0, 0, 0])  # of 100,000 scored tokens
    res = SAEFeaturesResult(sae={"d_sae": 10}, tensors={"fired": fired, "scored": torch.tensor(100_000)})
    banded = res.features_by_band()
    assert [f for f, _ in banded] == [2, 6, 1, 5, 3, 4]
    assert dict(banded)[2] == "1e-3–1e-2" and dict(banded)[4] == "dense >5%" and dict(banded)[5] == "≤1e-4"
    assert {0, 7, 8, 9}.isdisjoint(f for f, _ in banded)
    assert res.nearest_live(8) == [4, 5, 6] and res.nearest_live(0, n=2) == [1, 2]
