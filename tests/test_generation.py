"""Batched greedy decoding (`workbench.generation`) against an independent one-token-at-a-time
reference that re-runs the whole sequence every step and checks stops by decoding each token."""

from __future__ import annotations

import pytest
import torch

from workbench.errors import ConfigError, PromptTooLongError
from workbench.generation import greedy_continue, greedy_generate, stop_token_mask


@torch.inference_mode()
def reference_greedy(model, tokens, max_new, stops=(), forced=None):
    """Plain loop: full forward each step, argmax, stop when the new token's text holds a stop string."""
    seq = list(tokens)
    out = []
    for step in range(max_new):
        if step == 0 and forced is not None:
            t = forced
        else:
            t = int(model(torch.tensor([seq]))[0, -1].argmax())
        out.append(t)
        seq.append(t)
        if any(s in model.tokenizer.decode([t]) for s in stops):
            break
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread (and do not fight other jobs for cores)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PROMPTS = ["The cat sat", "Hello", "A longer prompt, with commas", "Hello", "xyz 123", "The dog ran"]


def _ids(model, texts):
    return [model.tokenizer.encode(t, add_special_tokens=False) for t in texts]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_batched_equals_one_at_a_time_and_reference(fixture, request):
    model = request.getfixturevalue(fixture)
    prompts = _ids(model, PROMPTS)
    batched = greedy_generate(model, prompts, max_new_tokens=6, batch_size=4, stop_at_eos=False, show_progress=False)
    single = [greedy_generate(model, [p], max_new_tokens=6, batch_size=1, stop_at_eos=False, show_progress=False)[0] for p in prompts]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    assert [c.tokens for c in batched] == [reference_greedy(model, p, 6) for p in prompts]
    assert all(len(c.tokens) == 6 and c.stop == "max-tokens" for c in batched)


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_stop_strings_per_sequence(fixture, request):
    """Stop strings taken from the free-running output, so some rows stop early and others do not."""
    model = request.getfixturevalue(fixture)
    prompts = _ids(model, PROMPTS)
    free = greedy_generate(model, prompts, max_new_tokens=8, stop_at_eos=False, show_progress=False)
    stops = sorted({model.tokenizer.decode([free[0].tokens[2]]), model.tokenizer.decode([free[2].tokens[4]])})
    stops = [s for s in stops if s.strip()] or stops
    got = greedy_generate(model, prompts, max_new_tokens=8, stop_strings=stops, batch_size=3, stop_at_eos=False, show_progress=False)
    ref = [reference_greedy(model, p, 8, stops) for p in prompts]
    assert [c.tokens for c in got] == ref
    assert len(got[0].tokens) <= 3 and got[0].stop == "stop-string"
    for c in got:
        last_has_stop = any(s in model.tokenizer.decode([c.tokens[-1]]) for s in stops)
        assert (c.stop == "stop-string") == last_has_stop
        assert not any(any(s in model.tokenizer.decode([t]) for s in stops) for t in c.tokens[:-1])


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_kv_cache_equals_full_recompute(fixture, request):
    model = request.getfixturevalue(fixture)
    prompts = _ids(model, PROMPTS[:3])
    a = greedy_generate(model, prompts, max_new_tokens=7, use_cache=True, stop_at_eos=False, show_progress=False)
    b = greedy_generate(model, prompts, max_new_tokens=7, use_cache=False, stop_at_eos=False, show_progress=False)
    assert [c.tokens for c in a] == [c.tokens for c in b]


@pytest.mark.parametrize("fixture", ["tiny", "tiny_llama"])
def test_greedy_continue_shared_prefix(fixture, request):
    """Forced first tokens after one shared prefix: batched == one at a time == reference loop."""
    model = request.getfixturevalue(fixture)
    prefix = model.tokenizer.encode('Answer:\n1. "', add_special_tokens=False)
    firsts = [ord(c) for c in "ABCabc0"]  # byte tokenizer: id = byte value
    stops = ['"', "\n"]
    batched = greedy_continue(model, prefix, firsts, max_new_tokens=6, stop_strings=stops, batch_size=3, show_progress=False)
    single = [greedy_continue(model, prefix, [t], max_new_tokens=6, stop_strings=stops, batch_size=1, show_progress=False)[0] for t in firsts]
    nocache = greedy_continue(model, prefix, firsts, max_new_tokens=6, stop_strings=stops, use_cache=False, show_progress=False)
    ref = [reference_greedy(model, prefix, 7, stops, forced=t) for t in firsts]
    assert [c.tokens for c in batched] == [c.tokens for c in single] == [c.tokens for c in nocache] == ref
    assert all(c.tokens[0] == t for c, t in zip(batched, firsts))
    assert [c.text for c in batched] == [model.tokenizer.decode(r) for r in ref]


def test_forced_token_is_stop_checked(tiny):
    prefix = tiny.tokenizer.encode("x", add_special_tokens=False)
    quote = tiny.tokenizer.encode('"', add_special_tokens=False)[0]
    (c,) = greedy_continue(tiny, prefix, [quote], max_new_tokens=5, stop_strings=['"'], show_progress=False)
    assert c.tokens == [quote] and c.stop == "stop-string"


def test_stop_token_mask_matches_decoding(tiny):
    mask = stop_token_mask(tiny.tokenizer, ['"', "\n"], tiny.cfg.d_vocab)
    brute = [('"' in tiny.tokenizer.decode([i]) or "\n" in tiny.tokenizer.decode([i])) for i in range(tiny.cfg.d_vocab)]
    assert mask.tolist() == brute and sum(brute) >= 2


def test_bad_inputs(tiny):
    with pytest.raises(ConfigError):
        greedy_generate(tiny, [[]], show_progress=False)
    with pytest.raises(ConfigError):
        greedy_generate(tiny, [[tiny.cfg.d_vocab]], show_progress=False)
    with pytest.raises(ConfigError):
        greedy_generate(tiny, [[1, 2]], max_new_tokens=0, show_progress=False)
    with pytest.raises(PromptTooLongError):
        greedy_generate(tiny, [[1] * tiny.cfg.n_ctx], max_new_tokens=1, show_progress=False)
    with pytest.raises(ConfigError):
        greedy_continue(tiny, [1, 2], [-1], show_progress=False)


@pytest.mark.slow
def test_smollm2_batched_equals_single(smollm2):
    """On the embedded model: four forced answers, batched against one at a time."""
    tok = smollm2.tokenizer
    prefix = tok('Please show me some US states.\n\nAnswer:\n1. "')["input_ids"]
    firsts = [tok.encode(s, add_special_tokens=False)[0] for s in ("California", "Texas", "New", "A")]
    batched = greedy_continue(smollm2, prefix, firsts, max_new_tokens=8, stop_strings=['"', "\n"], batch_size=4, show_progress=False)
    single = [greedy_continue(smollm2, prefix, [t], max_new_tokens=8, stop_strings=['"', "\n"], batch_size=1, show_progress=False)[0]
              for t in firsts]
    assert [c.tokens for c in batched] == [c.tokens for c in single]
    assert batched[0].text.startswith("California")
