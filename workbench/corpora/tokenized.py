"""Tokenised corpora: flat token arrays with word alignment, cut into fixed-length chunks.

A `TokenizedCorpus` concatenates the documents' tokens (optionally separated by a separator
token) and keeps, for every token, the index of its document and of the word it starts in
(-1 for separators, BOS and padding). `TokenBatches` cuts that stream into `[batch, seq_len]`
chunks with explicit BOS handling and a token budget, deterministically, so a run can resume
at any batch index.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from workbench.corpora.base import Corpus
from workbench.errors import ConfigError, EmptyCorpusError


def tokenizer_id(tokenizer) -> str:
    """A short fingerprint of a tokenizer (name + vocabulary), for cache and store keys."""
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    digest = hashlib.sha1(repr(sorted(vocab.items())[:5000]).encode() + str(len(vocab)).encode()).hexdigest()[:10]
    return f"{name.rsplit('/', 1)[-1]}-{len(vocab)}-{digest}"


@dataclass
class TokenizedCorpus:
    """Flat token stream of a corpus with per-token document and word indices."""

    corpus: Corpus
    tokenizer_id: str
    tokens: np.ndarray  # int64 [n]
    doc_index: np.ndarray  # int32 [n]
    word_index: np.ndarray  # int64 [n], global word index, -1 where none
    word_offsets: np.ndarray  # int64 [n_docs + 1]: first global word index of each document
    separator_id: int | None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def word_tags(self) -> list[str]:
        """All word tags, in global word order (empty strings where a document has none)."""
        out: list[str] = []
        for d in self.corpus.documents:
            n = 0 if d.word_spans is None else len(d.word_spans)
            out.extend(d.tags if d.tags is not None else [""] * n)
        return out

    def token_tags(self) -> np.ndarray:
        """Per-token word tag (object array; '' for tokens with no word)."""
        tags = np.array(self.word_tags() + [""], dtype=object)
        return tags[self.word_index]  # index -1 picks the trailing ''


def tokenize_corpus(corpus: Corpus, tokenizer, separator_id: int | None = None) -> TokenizedCorpus:
    """Tokenise every document (no special tokens) and align tokens to words by character offsets.

    A token belongs to the word whose span contains the token's first non-space character.
    `separator_id`, if given, is placed after every document.
    """
    if len(corpus) == 0:
        raise EmptyCorpusError(f"Corpus {corpus.id!r} has no documents.")
    texts = [d.text for d in corpus.documents]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    tok_parts, doc_parts, word_parts = [], [], []
    word_offsets = [0]
    for i, (doc, ids, offs) in enumerate(zip(corpus.documents, enc["input_ids"], enc["offset_mapping"])):
        ids_arr = np.asarray(ids, dtype=np.int64)
        n_words = 0 if doc.word_spans is None else len(doc.word_spans)
        widx = np.full(len(ids_arr), -1, dtype=np.int64)
        if n_words and len(ids_arr):
            starts = np.asarray([_first_visible(doc.text, s, e) for s, e in offs], dtype=np.int64)
            spans = np.asarray(doc.word_spans, dtype=np.int64)
            pos = np.searchsorted(spans[:, 0], starts, side="right") - 1
            ok = (pos >= 0) & (starts < spans[np.clip(pos, 0, None), 1])
            widx[ok] = pos[ok] + word_offsets[-1]
        word_offsets.append(word_offsets[-1] + n_words)
        if separator_id is not None:
            ids_arr = np.append(ids_arr, separator_id)
            widx = np.append(widx, -1)
        tok_parts.append(ids_arr)
        word_parts.append(widx)
        doc_parts.append(np.full(len(ids_arr), i, dtype=np.int32))
    tokens = np.concatenate(tok_parts)
    if tokens.size == 0:
        raise EmptyCorpusError(f"Corpus {corpus.id!r} tokenises to zero tokens.")
    return TokenizedCorpus(
        corpus=corpus,
        tokenizer_id=tokenizer_id(tokenizer),
        tokens=tokens,
        doc_index=np.concatenate(doc_parts),
        word_index=np.concatenate(word_parts),
        word_offsets=np.asarray(word_offsets, dtype=np.int64),
        separator_id=separator_id,
    )


def _first_visible(text: str, start: int, end: int) -> int:
    """Offset of the first non-whitespace character in text[start:end]; -1 if none.

    -1 (not `start`) so that a whitespace-only or zero-width token -- e.g. a lone space token
    whose trimmed offsets are (k, k) at the start of the next word -- belongs to no word.
    """
    for j in range(start, end):
        if not text[j].isspace():
            return j
    return -1


@dataclass
class TokenBatch:
    """One batch of chunks. `valid` is False on padding; `is_bos` marks prepended BOS tokens."""

    index: int
    tokens: torch.Tensor  # long [B, T]
    valid: torch.Tensor  # bool [B, T]
    is_bos: torch.Tensor  # bool [B, T]
    word_index: torch.Tensor  # long [B, T], -1 where none
    doc_index: torch.Tensor  # long [B, T], -1 on BOS/padding

    @property
    def n_tokens(self) -> int:
        return int(self.valid.sum())

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(
            self.index, *(t.to(device) for t in (self.tokens, self.valid, self.is_bos, self.word_index, self.doc_index))
        )


@dataclass(frozen=True)
class ChunkSpec:
    """How a token stream is cut: context length, batch size, BOS, and a token budget."""

    seq_len: int = 128
    batch_size: int = 8
    prepend_bos: bool = True
    max_tokens: int | None = None  # budget of positions (BOS included); None = whole stream

    def validate(self) -> None:
        if self.seq_len < 2:
            raise ConfigError(f"seq_len must be at least 2, got {self.seq_len}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigError(f"max_tokens (the token budget) must be positive, got {self.max_tokens}")


class TokenBatches:
    """Deterministic `[batch, seq_len]` chunks of a `TokenizedCorpus`.

    With `prepend_bos`, every chunk is `[BOS] + (seq_len - 1)` stream tokens. The last chunk is
    padded (`valid` False) rather than dropped. Iteration can start at any batch index.
    """

    def __init__(self, tc: TokenizedCorpus, spec: ChunkSpec, bos_id: int | None = None, pad_id: int = 0):
        spec.validate()
        if spec.prepend_bos and bos_id is None:
            raise ConfigError("prepend_bos=True but the tokenizer has no BOS token; set prepend_bos=False")
        self.tc, self.spec, self.bos_id, self.pad_id = tc, spec, bos_id, pad_id
        self.body = spec.seq_len - (1 if spec.prepend_bos else 0)
        n_chunks = -(-len(tc) // self.body)
        if spec.max_tokens is not None:
            n_chunks = min(n_chunks, -(-spec.max_tokens // spec.seq_len))
        if n_chunks == 0:
            raise EmptyCorpusError(f"Corpus {tc.corpus.id!r} gives no chunks.")
        self.n_chunks = n_chunks

    def __len__(self) -> int:
        return -(-self.n_chunks // self.spec.batch_size)

    @property
    def n_positions(self) -> int:
        """Number of valid positions (BOS included) over all batches."""
        body_tokens = min(len(self.tc), self.n_chunks * self.body)
        return body_tokens + (self.n_chunks if self.spec.prepend_bos else 0)

    def batch(self, index: int) -> TokenBatch:
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range 0..{len(self) - 1}")
        first = index * self.spec.batch_size
        last = min(first + self.spec.batch_size, self.n_chunks)
        B, T, body = last - first, self.spec.seq_len, self.body
        tokens = np.full((B, T), self.pad_id, dtype=np.int64)
        valid = np.zeros((B, T), dtype=bool)
        widx = np.full((B, T), -1, dtype=np.int64)
        didx = np.full((B, T), -1, dtype=np.int64)
        off = 1 if self.spec.prepend_bos else 0
        for r, c in enumerate(range(first, last)):
            s = c * body
            e = min(s + body, len(self.tc))
            n = e - s
            tokens[r, off : off + n] = self.tc.tokens[s:e]
            widx[r, off : off + n] = self.tc.word_index[s:e]
            didx[r, off : off + n] = self.tc.doc_index[s:e]
            valid[r, off : off + n] = True
            if off:
                tokens[r, 0] = self.bos_id
                valid[r, 0] = True
        is_bos = np.zeros((B, T), dtype=bool)
        if off:
            is_bos[:, 0] = True
        t = torch.from_numpy
        return TokenBatch(index, t(tokens), t(valid), t(is_bos), t(widx), t(didx))

    def __iter__(self) -> Iterator[TokenBatch]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[TokenBatch]:
        for i in range(start, len(self)):
            yield self.batch(i)

    def describe(self) -> dict:
        """What slice this is, for result metadata."""
        return {
            "corpus": self.tc.corpus.id,
            "tokenizer": self.tc.tokenizer_id,
            "seq_len": self.spec.seq_len,
            "batch_size": self.spec.batch_size,
            "prepend_bos": self.spec.prepend_bos,
            "bos_id": self.bos_id,
            "separator_id": self.tc.separator_id,
            "max_tokens": self.spec.max_tokens,
            "n_chunks": self.n_chunks,
            "n_positions": self.n_positions,
        }
