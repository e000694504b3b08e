"""Bigram statistics: sparse counts against brute force, back-off, pruning, dense target rows,
counting over model chunks, and persistence."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from probes.bigram_subnetworks.bigrams import BigramModel, count_pairs
from workbench.corpora import ChunkSpec, Corpus, Document, TokenBatches, tokenize_corpus
from workbench.errors import ConfigError

V = 12
SEQS = [np.array([1, 2, 3, 2, 3, 4]), np.array([2, 3, 5]), np.array([7]), np.array([1, 2, 2, 2, 9])]


def brute_counts(seqs, vocab=V) -> np.ndarray:
    c = Counter()
    for s in seqs:
        for a, b in zip(s[:-1], s[1:]):
            c[(int(a), int(b))] += 1
    out = np.zeros((vocab, vocab), dtype=np.int64)
    for (a, b), n in c.items():
        out[a, b] = n
    return out


def test_counts_equal_brute_force_and_never_cross_sequences():
    m = count_pairs(SEQS, V)
    assert sp.issparse(m) and m.format == "csr"
    np.testing.assert_array_equal(m.toarray(), brute_counts(SEQS))
    assert m.toarray()[4, 2] == 0  # 4 ends a sequence, 2 starts the next: no pair across


def test_probabilities_backoff_and_surprisal():
    bg = BigramModel.from_sequences(SEQS, V)
    dense = brute_counts(SEQS).astype(float)
    # seen context: row-normalised counts, unsmoothed
    for ctx in (1, 2, 3):
        want = dense[ctx] / dense[ctx].sum()
        got = bg.prob(np.full(V, ctx), np.arange(V))
        np.testing.assert_allclose(got, want)
    # unseen context (5 is only ever a last token, 0 never occurs): unigram of next tokens
    unigram = dense.sum(0) / dense.sum()
    for ctx in (0, 5, 7):
        np.testing.assert_allclose(bg.prob(np.full(V, ctx), np.arange(V)), unigram)
    assert bg.unseen_context_rate(np.array([1, 5, 0, 2])) == 0.5
    s = bg.surprisal(np.array([1, 2]), np.array([2, 7]))
    assert s[0] == pytest.approx(0.0) and np.isinf(s[1])  # P(2|1) = 1; (2, 7) never seen after a seen context


def test_uniform_when_there_are_no_counts():
    bg = BigramModel.from_sequences([np.array([3])], V)
    np.testing.assert_allclose(bg.prob(np.array([3, 4]), np.array([0, 11])), [1 / V, 1 / V])
    rows = bg.target_rows(torch.tensor([[3, 4]]))
    torch.testing.assert_close(rows, torch.full((1, 2, V), 1 / V))


def test_min_count_prunes_rare_bigrams_and_empty_contexts_back_off():
    bg = BigramModel.from_sequences(SEQS, V, min_count=2)
    dense = brute_counts(SEQS)
    pruned = np.where(dense >= 2, dense, 0)
    np.testing.assert_array_equal(bg.counts.toarray(), pruned)
    seen = pruned.sum(1) > 0
    assert list(np.flatnonzero(seen)) == [1, 2]  # every bigram after 3 occurs once
    uni = dense.sum(0)
    uni = np.where(uni >= 2, uni, 0)
    np.testing.assert_allclose(bg.prob(np.full(V, 9), np.arange(V)), uni / uni.sum())
    with pytest.raises(ConfigError):
        BigramModel.from_sequences(SEQS, V, min_count=0)


def test_target_rows_match_dense_brute_force_and_pad_the_vocabulary():
    bg = BigramModel.from_sequences(SEQS, V)
    dense = brute_counts(SEQS).astype(np.float64)
    unigram = dense.sum(0) / dense.sum()
    ctx = torch.tensor([[1, 2, 0], [3, 5, 2]])
    rows = bg.target_rows(ctx, vocab_size=V + 4)
    assert rows.shape == (2, 3, V + 4) and rows.dtype == torch.float32
    for i in range(2):
        for j in range(3):
            c = int(ctx[i, j])
            want = dense[c] / dense[c].sum() if dense[c].sum() else unigram
            np.testing.assert_allclose(rows[i, j, :V].numpy(), want, rtol=1e-6)
            assert float(rows[i, j, V:].abs().sum()) == 0.0
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 3))
    with pytest.raises(ConfigError):
        bg.target_rows(ctx, vocab_size=V - 1)


def test_from_batches_counts_bos_contexts_inside_chunks_only():
    docs = [Document("d0", "abcabd"), Document("d1", "xyz")]
    corpus = Corpus("toy", "1", docs)

    class Tok:  # a character tokenizer with offsets, enough for tokenize_corpus
        name_or_path = "chars"

        def get_vocab(self):
            return {chr(97 + i): i for i in range(26)}

        def __call__(self, texts, add_special_tokens=False, return_offsets_mapping=True):
            return {"input_ids": [[ord(c) - 97 for c in t] for t in texts],
                    "offset_mapping": [[(i, i + 1) for i in range(len(t))] for t in texts]}

    tc = tokenize_corpus(corpus, Tok(), separator_id=26)
    batches = TokenBatches(tc, ChunkSpec(seq_len=4, batch_size=2, prepend_bos=True), bos_id=27, pad_id=0)
    bg = BigramModel.from_batches(batches, vocab_size=28)
    chunks = []
    for b in batches:
        for r in range(b.tokens.shape[0]):
            chunks.append(b.tokens[r][b.valid[r]].numpy())
    np.testing.assert_array_equal(bg.counts.toarray(), brute_counts(chunks, 28))
    assert bg.counts[27].sum() == len(chunks)  # every chunk's BOS -> first token pair
    assert bg.description["source"] == "batches"


def test_save_load_roundtrip(tmp_path):
    bg = BigramModel.from_sequences(SEQS, V, min_count=1)
    bg.save(tmp_path / "bg")
    assert BigramModel.exists(tmp_path / "bg")
    back = BigramModel.load(tmp_path / "bg")
    np.testing.assert_array_equal(back.counts.toarray(), bg.counts.toarray())
    np.testing.assert_array_equal(back.unigram_counts, bg.unigram_counts)
    ctx = torch.tensor([0, 1, 2, 3, 4])
    torch.testing.assert_close(back.target_rows(ctx), bg.target_rows(ctx))


def test_bad_token_ids_are_refused():
    with pytest.raises(ConfigError):
        count_pairs([np.array([1, V])], V)
