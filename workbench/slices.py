"""From (model, corpus, StreamConfig) to token batches and a streamed accumulator: the shared
first half of every corpus-streaming probe."""

from __future__ import annotations

import warnings

import numpy as np
from transformer_lens import HookedTransformer

from workbench.activations import Accumulator, StreamStats, stream
from workbench.active_run import scratch_dir
from workbench.config import StreamConfig
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatches, TokenizedCorpus, tokenize_corpus
from workbench.errors import ConfigError, EmptyCorpusError
from workbench.models.info import model_info

CHARS_PER_TOKEN_GUESS = 3.0


def ordered_documents(corpus: Corpus, cfg: StreamConfig) -> Corpus:
    """The split, in corpus order or in a seeded shuffled order."""
    part = corpus.split(cfg.split)  # type: ignore[arg-type]
    if len(part) == 0:
        raise EmptyCorpusError(f"Corpus {corpus.id!r} has no documents in split {cfg.split!r}")
    if cfg.shuffle_docs:
        order = np.random.default_rng(cfg.seed).permutation(len(part))
        part = Corpus(part.name, part.version, [part.documents[i] for i in order], part.split_name, part.genres, part.genre_names)
    return part


def tokenize_slice(model: HookedTransformer, corpus: Corpus, cfg: StreamConfig) -> TokenizedCorpus:
    """Tokenise only as many documents as the token budget needs (all of them without a budget)."""
    if model.tokenizer is None:
        raise ConfigError("this model has no tokenizer; corpus probes need one")
    docs = ordered_documents(corpus, cfg)
    info = model_info(model)
    sep = info.eos_token_id
    if cfg.max_tokens is None:
        return tokenize_corpus(docs, model.tokenizer, separator_id=sep)
    n_docs, chars = 0, 0
    need_chars = cfg.max_tokens * CHARS_PER_TOKEN_GUESS * 1.5
    while True:
        while n_docs < len(docs) and chars < need_chars:
            chars += len(docs.documents[n_docs].text)
            n_docs += 1
        head = Corpus(docs.name, docs.version, docs.documents[:n_docs], docs.split_name, docs.genres, docs.genre_names)
        tc = tokenize_corpus(head, model.tokenizer, separator_id=sep)
        if len(tc) >= cfg.max_tokens or n_docs == len(docs):
            # keep the full corpus identity: the slice is defined by the config, not by n_docs
            tc.corpus = docs
            return tc
        need_chars *= 2


def corpus_batches(model: HookedTransformer, corpus: Corpus, cfg: StreamConfig) -> TokenBatches:
    tc = tokenize_slice(model, corpus, cfg)
    info = model_info(model)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    batches = TokenBatches(tc, cfg.chunk_spec(), bos_id=info.bos_token_id, pad_id=pad)
    if cfg.max_tokens is not None and batches.n_positions < cfg.max_tokens:
        warnings.warn(BudgetCapped(
            f"max_tokens={cfg.max_tokens:,} is more than {corpus.id!r} (split {cfg.split!r}) holds: streaming all of it, "
            f"{batches.n_positions:,} positions"), stacklevel=2)
    return batches


class BudgetCapped(UserWarning):
    """A token budget larger than the corpus: the run uses the whole corpus, and says so."""


def stream_corpus(
    model: HookedTransformer, corpus: Corpus, cfg: StreamConfig, accumulator: Accumulator, desc: str, progress: bool = True
) -> tuple[StreamStats, dict]:
    """Stream a corpus slice through `accumulator`, resumable when run through the store."""
    batches = corpus_batches(model, corpus, cfg)
    stats = stream(model, batches, accumulator, checkpoint_dir=scratch_dir(f"stream-{desc}"), progress=progress, desc=desc)
    return stats, {**batches.describe(), "tokens_per_s": stats.tokens_per_s, "stream_seconds": stats.seconds}
