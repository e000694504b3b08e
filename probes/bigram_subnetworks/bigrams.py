"""Bigram statistics of a tokenizer on a corpus: sparse counts, an unsmoothed conditional model
with back-off, and dense target rows built one batch at a time.

Counts are a scipy CSR matrix `counts[context, next]` (a dense vocab x vocab table is 10 GB at a
50k vocabulary). P(next | context) is the row normalised, with no smoothing. A context with no
counts (never seen, or every count pruned by `min_count`) backs off to the unigram distribution
of next tokens; with no counts at all, to uniform. Bigrams whose count is below `min_count` are
dropped, so `min_count=1` keeps everything.

Pairs are counted inside token sequences only. Counting over the chunks a model sees
(`from_batches`) includes the BOS -> first-token pairs, so BOS is an ordinary context.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp
import torch

from workbench.corpora.tokenized import TokenBatches
from workbench.errors import ConfigError, EmptyCorpusError
from workbench.progress import progress_bar
from workbench.statefile import load_state, save_state


def count_pairs(sequences: Iterable[np.ndarray], vocab_size: int) -> sp.csr_matrix:
    """CSR [vocab, vocab] int64 counts of adjacent (t, t+1) pairs inside each sequence."""
    rows, cols = [], []
    for seq in sequences:
        seq = np.asarray(seq, dtype=np.int64)
        if seq.size < 2:
            continue
        rows.append(seq[:-1])
        cols.append(seq[1:])
    if not rows:
        return sp.csr_matrix((vocab_size, vocab_size), dtype=np.int64)
    a, b = np.concatenate(rows), np.concatenate(cols)
    if a.min() < 0 or max(a.max(), b.max()) >= vocab_size:
        raise ConfigError(f"token ids must lie in [0, {vocab_size}); got {min(a.min(), b.min())}..{max(a.max(), b.max())}")
    m = sp.coo_matrix((np.ones(a.size, dtype=np.int64), (a, b)), shape=(vocab_size, vocab_size))
    m = m.tocsr()
    m.sum_duplicates()
    return m


def batch_sequences(batches: TokenBatches, progress: bool = False) -> Iterable[np.ndarray]:
    """Every chunk's valid tokens (BOS included), in batch order."""
    bar = progress_bar(len(batches), "counting bigrams", unit="batch", enabled=progress)
    try:
        for i in range(len(batches)):
            b = batches.batch(i)
            toks, valid = b.tokens.numpy(), b.valid.numpy()
            for r in range(toks.shape[0]):
                yield toks[r][valid[r]]
            bar.update(1)
    finally:
        bar.close()


@dataclass
class BigramModel:
    """Unsmoothed bigram model with back-off to unigram, then uniform."""

    counts: sp.csr_matrix  # int64 [V, V], after min_count pruning
    unigram_counts: np.ndarray  # int64 [V], next-token counts, after min_count pruning
    min_count: int = 1
    description: dict | None = None

    def __post_init__(self) -> None:
        self.counts = sp.csr_matrix(self.counts, dtype=np.int64)
        self.counts.sort_indices()
        totals = np.asarray(self.counts.sum(axis=1)).ravel()
        self.row_totals = totals.astype(np.int64)
        inv = np.zeros_like(totals, dtype=np.float64)
        inv[totals > 0] = 1.0 / totals[totals > 0]
        self.probs = sp.diags(inv) @ self.counts.astype(np.float64)  # row-normalised, CSR
        self.probs = sp.csr_matrix(self.probs)
        self.probs.sort_indices()
        n = self.unigram_counts.sum()
        self.unigram = self.unigram_counts / n if n > 0 else np.full(self.vocab_size, 1.0 / self.vocab_size)

    # ----- construction -----
    @classmethod
    def from_counts(cls, counts: sp.spmatrix, min_count: int = 1, description: dict | None = None) -> "BigramModel":
        """Prune entries below `min_count` and derive the unigram back-off from the raw counts."""
        if min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {min_count}")
        counts = sp.csr_matrix(counts, dtype=np.int64)
        if counts.shape[0] != counts.shape[1]:
            raise ConfigError(f"bigram counts must be square, got {counts.shape}")
        unigram = np.asarray(counts.sum(axis=0)).ravel().astype(np.int64)
        if min_count > 1:
            counts = counts.multiply(counts >= min_count).tocsr()
            counts.eliminate_zeros()
            unigram = np.where(unigram >= min_count, unigram, 0)
        return cls(counts, unigram, min_count, description or {})

    @classmethod
    def from_sequences(cls, sequences: Iterable[np.ndarray], vocab_size: int, min_count: int = 1) -> "BigramModel":
        m = count_pairs(sequences, vocab_size)
        return cls.from_counts(m, min_count, {"source": "sequences", "vocab_size": vocab_size})

    @classmethod
    def from_batches(cls, batches: TokenBatches, vocab_size: int, min_count: int = 1, progress: bool = False) -> "BigramModel":
        """Counts over the chunks a model is trained on (BOS -> first token included)."""
        m = count_pairs(batch_sequences(batches, progress), vocab_size)
        if m.nnz == 0:
            raise EmptyCorpusError("no bigrams: every chunk has fewer than two tokens")
        return cls.from_counts(m, min_count, {"source": "batches", **batches.describe(), "vocab_size": vocab_size})

    @property
    def vocab_size(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_pairs(self) -> int:
        return int(self.row_totals.sum())

    # ----- queries -----
    def seen(self, context: np.ndarray | torch.Tensor) -> np.ndarray:
        """True where the context has bigram counts (no back-off needed)."""
        c = _np(context)
        return self.row_totals[c] > 0

    def unseen_context_rate(self, context: np.ndarray | torch.Tensor) -> float:
        c = _np(context).ravel()
        return float((~self.seen(c)).mean()) if c.size else float("nan")

    def prob(self, context: np.ndarray | torch.Tensor, nxt: np.ndarray | torch.Tensor) -> np.ndarray:
        """P(next | context) with back-off, elementwise (float64, zero for unseen bigrams)."""
        c, n = _np(context).ravel(), _np(nxt).ravel()
        out = np.asarray(self.probs[c, n]).ravel().astype(np.float64)
        back = ~self.seen(c)
        out[back] = self.unigram[n[back]]
        return out.reshape(_np(context).shape)

    def surprisal(self, context: np.ndarray | torch.Tensor, nxt: np.ndarray | torch.Tensor) -> np.ndarray:
        """-log2 P(next | context); +inf where the (unsmoothed) probability is zero."""
        p = self.prob(context, nxt)
        with np.errstate(divide="ignore"):
            return -np.log2(p)

    def target_rows(self, context: torch.Tensor, vocab_size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense next-token distributions for a batch of contexts: [*context.shape, V] on context's device.

        Only the sparse entries travel to the device; the dense rows are filled there.
        `vocab_size` pads the rows (a model's d_vocab may exceed the tokenizer's).
        """
        V = vocab_size or self.vocab_size
        if V < self.vocab_size:
            raise ConfigError(f"vocab_size {V} is smaller than the bigram vocabulary {self.vocab_size}")
        device = context.device
        flat = _np(context).ravel()
        sub = self.probs[flat].tocoo()
        out = torch.zeros(flat.size, V, dtype=dtype, device=device)
        if sub.nnz:
            r = torch.from_numpy(sub.row.astype(np.int64)).to(device)
            k = torch.from_numpy(sub.col.astype(np.int64)).to(device)
            out[r, k] = torch.from_numpy(sub.data).to(device=device, dtype=dtype)
        back = torch.from_numpy(~self.seen(flat)).to(device)
        if bool(back.any()):
            uni = torch.zeros(V, dtype=dtype, device=device)
            uni[: self.vocab_size] = torch.from_numpy(self.unigram).to(device=device, dtype=dtype)
            out[back] = uni
        return out.reshape(*context.shape, V)

    # ----- persistence (one verified file, see workbench.statefile) -----
    FILE = "bigram_counts.safetensors"

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        c = self.counts
        save_state(path / self.FILE, {
            "indptr": torch.from_numpy(c.indptr.astype(np.int64)),
            "indices": torch.from_numpy(c.indices.astype(np.int64)),
            "data": torch.from_numpy(c.data.astype(np.int64)),
            "unigram_counts": torch.from_numpy(self.unigram_counts.astype(np.int64)),
        }, {"vocab_size": self.vocab_size, "min_count": self.min_count, "description": self.description})
        return path

    @classmethod
    def try_load(cls, path: str | Path) -> "BigramModel | None":
        """The saved model, or None when there is none or it does not verify (then it is removed)."""
        saved = load_state(Path(path) / cls.FILE)
        if saved is None:
            return None
        t, meta = saved
        V = int(meta["vocab_size"])
        counts = sp.csr_matrix((t["data"].numpy(), t["indices"].numpy(), t["indptr"].numpy()), shape=(V, V))
        return cls(counts, t["unigram_counts"].numpy(), int(meta["min_count"]), meta.get("description") or {})

    @classmethod
    def load(cls, path: str | Path) -> "BigramModel":
        model = cls.try_load(path)
        if model is None:
            raise FileNotFoundError(f"no readable bigram model in {path}")
        return model

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path) / cls.FILE).exists()


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu").numpy().astype(np.int64, copy=False)
    return np.asarray(x, dtype=np.int64)
