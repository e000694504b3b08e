"""Task generators: valid single-token answers, aligned pairs, seeded, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from probes.sae_circuits.tasks.contrast import ContrastPrompts, set_logit_diff
from probes.sae_circuits.tasks.docstring import (
    FUNC_NAMES,
    PARAM_NAMES,
    WORDS,
    docstring_prompts,
)
from probes.sae_circuits.tasks.greater_than import (
    NOUNS,
    greater_than_prompts,
    year_mode,
)
from probes.sae_circuits.tasks.ioi import NAMES, OBJECTS, PLACES, TEMPLATES, ioi_prompts
from workbench.errors import ConfigError
from workbench.tokenizers import byte_tokenizer


def word_tokenizer(two_digit_years: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (GPT-2 pre-tokenisation, one token per pre-token) whose vocabulary
    holds every word the generators use; with `two_digit_years`, numbers split into pairs of digits
    (" 1743" -> " 17", "43") as in GPT-2."""
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False)]
    if two_digit_years:
        steps.append(pre_tokenizers.Split(Regex("Ġ?\\d\\d"), behavior="isolated"))
    pre = pre_tokenizers.Sequence(steps)
    words = set()
    filled = [t.format(first="Mary", second="John", place="store", object="ring").replace("[S]", "John") for t in TEMPLATES]
    corpus = filled + [" ".join(NAMES + PLACES + OBJECTS + NOUNS + PARAM_NAMES + WORDS + FUNC_NAMES)]
    corpus += ["The lasted from the year to", " 1743 17 43"]
    corpus += [f'def port(self, load, size):\n    """{w} oil\n\n    :param load: oil\n    :param' for w in WORDS]
    corpus += [" " + w for w in NAMES + PARAM_NAMES + WORDS] + [f" {d}" for d in range(10)] + [f"{d:02d}" for d in range(100)]
    corpus += [f" {c}{y:02d}" for c in range(10, 20) for y in range(100)]
    for text in corpus:
        words.update(p for p, _ in pre.pre_tokenize_str(text))
    words.update(str(d) for d in range(10))
    vocab = {w: i + 3 for i, w in enumerate(sorted(words))}
    vocab.update({"<bos>": 0, "<pad>": 1, "<unk>": 2})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def words():
    return word_tokenizer()


def decode1(tok, i: int) -> str:
    return tok.decode([i])


def check_pairs(c: ContrastPrompts, tok, bos: bool = True) -> None:
    assert len(c.positive) == len(c.negative) == len(c.right) == len(c.wrong)
    unk = getattr(tok, "unk_token_id", None)
    for p, q in zip(c.positive, c.negative):
        assert len(p) == len(q)
        if bos:
            assert p[0] == q[0] == tok.bos_token_id
        if unk is not None:
            assert unk not in p and unk not in q


# ----------------------------------------------------------------------------- IOI


def check_ioi(c: ContrastPrompts, tok) -> None:
    check_pairs(c, tok)
    for p, q, r, w, text in zip(c.positive, c.negative, c.right, c.wrong, c.positive_text):
        assert len(r) == len(w) == 1
        io, s = r[0], w[0]
        assert decode1(tok, io).strip() in NAMES and decode1(tok, s).strip() in NAMES and io != s
        # the positive mentions IO once and S twice (subject repeated); it ends before the final IO
        assert p.count(io) == 1 and p.count(s) == 2
        # the negative differs in exactly one token, the first S, now a third name
        diff = [i for i, (a, b) in enumerate(zip(p, q)) if a != b]
        assert len(diff) == 1 and p[diff[0]] == s
        third = q[diff[0]]
        assert decode1(tok, third).strip() in NAMES and third not in (io, s)
        assert q.count(s) == 1 and q.count(io) == 1 and q.count(third) == 1
        assert text.endswith(" to")


def test_ioi_pairs_word_tokenizer(words):
    c = ioi_prompts(words, n=60, seed=3)
    check_ioi(c, words)
    assert c.meta["order"].count("BABA") == c.meta["order"].count("ABBA") == 30
    # BABA: S comes first in the first clause; ABBA: IO first
    for order, p, r, w in zip(c.meta["order"], c.positive, c.right, c.wrong):
        first_io, first_s = p.index(r[0]), p.index(w[0])
        assert (first_s < first_io) == (order == "BABA")


def test_ioi_seeded(words):
    a, b, c = ioi_prompts(words, n=20, seed=1), ioi_prompts(words, n=20, seed=1), ioi_prompts(words, n=20, seed=2)
    assert a.positive == b.positive and a.negative == b.negative and a.right == b.right
    assert a.positive != c.positive


def test_ioi_drops_multi_token_names():
    # byte-level: every name is several tokens, so IOI cannot be built
    with pytest.raises(ConfigError, match="single tokens"):
        ioi_prompts(byte_tokenizer(), n=4)


# ----------------------------------------------------------------------------- greater-than


def test_greater_than_digit_mode_bytes():
    tok = byte_tokenizer()
    mode, digits = year_mode(tok)
    assert mode == "digit"
    c = greater_than_prompts(tok, n=90, seed=0)
    check_pairs(c, tok)
    assert set(c.meta["yy"]) == set(range(10, 90))
    for p, q, r, w, yy, text in zip(c.positive, c.negative, c.right, c.wrong, c.meta["yy"], c.positive_text):
        t = yy // 10
        assert [decode1(tok, i) for i in r] == [str(d) for d in range(t + 1, 10)]
        assert [decode1(tok, i) for i in w] == [str(d) for d in range(0, t)]
        assert 1 <= t <= 8
        # the pair differs only in the YY digits
        diff = [i for i, (a, b) in enumerate(zip(p, q)) if a != b]
        assert 1 <= len(diff) <= 2
        assert tok.decode(q[1:]).split(" the year ")[1].startswith(text.split(" the year ")[1][:2] + "01")
        # the prompt stops after the century digits of the end year
        assert tok.decode(p[1:]).endswith(" to the year " + text.split(" the year ")[1][:2])


def test_greater_than_two_digit_mode():
    tok = word_tokenizer(two_digit_years=True)
    assert tok.tokenize(" 1743") == ["Ġ17", "43"]
    mode, _ = year_mode(tok)
    assert mode == "two-digit"
    c = greater_than_prompts(tok, n=97, seed=0)
    check_pairs(c, tok)
    assert sorted(c.meta["yy"]) == list(range(2, 99))
    for p, r, w, yy in zip(c.positive, c.right, c.wrong, c.meta["yy"]):
        assert sorted(int(decode1(tok, i)) for i in r) == list(range(yy + 1, 100))
        assert sorted(int(decode1(tok, i)) for i in w) == list(range(0, yy + 1))
        assert decode1(tok, p[-1]).strip().isdigit() and len(decode1(tok, p[-1]).strip()) == 2


def test_greater_than_rejects_whole_number_tokens(words):
    # the plain word tokenizer keeps " 1743" as one token: neither supported layout
    with pytest.raises(ConfigError, match="1743"):
        greater_than_prompts(words, n=4)


# ----------------------------------------------------------------------------- docstring


def check_docstring(c: ContrastPrompts, tok) -> None:
    check_pairs(c, tok)
    for p, q, r, w, ptext, qtext in zip(c.positive, c.negative, c.right, c.wrong, c.positive_text, c.negative_text):
        (ans,) = r
        assert decode1(tok, ans).strip() in PARAM_NAMES
        sig = ptext.split("(self, ")[1].split("):")[0].split(", ")
        doc = [line.split(":param ")[1].split(":")[0] for line in ptext.splitlines() if ":param " in line]
        assert len(sig) == 6 and doc == sig[2:4]
        assert decode1(tok, ans).strip() == sig[4]
        assert sorted(decode1(tok, i).strip() for i in w) == sorted(sig[:4] + sig[5:])
        assert p.count(ans) == 1  # named once, in the signature
        qsig = qtext.split("(self, ")[1].split("):")[0].split(", ")
        qdoc = [line.split(":param ")[1].split(":")[0] for line in qtext.splitlines() if ":param " in line]
        assert ans not in q and not set(qdoc) & set(qsig)
        assert ptext.endswith(":param") and qtext.endswith(":param")


def test_docstring_pairs_word_tokenizer(words):
    c = docstring_prompts(words, n=40, seed=0)
    check_docstring(c, words)
    assert docstring_prompts(words, n=5, seed=0).positive == c.positive[:5]


def test_docstring_needs_single_token_names():
    with pytest.raises(ConfigError, match="single tokens"):
        docstring_prompts(byte_tokenizer(), n=2)


# ----------------------------------------------------------------------------- contrast sets


def test_set_logit_diff_matches_closed_form():
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    c = ContrastPrompts("t", [[1, 2]] * 3, [[1, 3]] * 3, [[4], [5, 6], [1, 2, 3]], [[7], [8], [0, 9]])
    got = set_logit_diff(logits, *c.answer_index(10))
    for i, (r, w) in enumerate(zip(c.right, c.wrong)):
        want = math.log(sum(math.exp(logits[i, j]) for j in r)) - math.log(sum(math.exp(logits[i, j]) for j in w))
        assert got[i].item() == pytest.approx(want, abs=1e-5)


def test_contrast_rejects_misaligned_pairs():
    with pytest.raises(ConfigError, match="align"):
        ContrastPrompts("t", [[1, 2, 3]], [[1, 2]], [[1]], [[2]])
    with pytest.raises(ConfigError, match="empty"):
        ContrastPrompts("t", [[1, 2]], [[1, 3]], [[]], [[2]])
    with pytest.raises(ConfigError, match="outside"):
        ContrastPrompts("t", [[1, 2]], [[1, 3]], [[99]], [[2]]).answer_index(10)


# ----------------------------------------------------------------------------- the embedded model's tokenizer


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from workbench.models.embedded import embedded_dir

    return AutoTokenizer.from_pretrained(str(embedded_dir()))


@pytest.mark.slow
def test_generators_on_smollm2_tokenizer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    check_ioi(ioi_prompts(tok, n=250, seed=0), tok)
    mode, _ = year_mode(tok)
    assert mode == "digit"  # SmolLM2 writes one digit per token
    gt = greater_than_prompts(tok, n=80, seed=0)
    check_pairs(gt, tok)
    for r, w in zip(gt.right, gt.wrong):
        assert all(len(decode1(tok, i)) == 1 and decode1(tok, i).isdigit() for i in r + w)
    check_docstring(docstring_prompts(tok, n=250, seed=0), tok)
