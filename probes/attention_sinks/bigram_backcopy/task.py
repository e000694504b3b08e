"""The Bigram-Backcopy task: its character vocabulary, triggers, transition matrix and sampler, the
exact Bayes risks, and the cached task of a corpus (see the package docstring)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Callable

import numpy as np
import torch

from workbench.corpora import load_corpus
from workbench.errors import ConfigError
from workbench.io import read_json, write_json
from workbench.paths import cache_dir
from workbench.tokenizers import save_and_reload

BOS_TOKEN, DELIM_TOKEN = "<s>", "<d>"
SEQ_LEN = 256
TASK_FORMAT = 1

@dataclasses.dataclass(eq=False)
class BBTask:
    """Character statistics of a corpus plus the trigger count: everything that defines BB data."""

    corpus: str  # id of the corpus the statistics come from
    chars: tuple[str, ...]  # token id -> character
    unigram_counts: np.ndarray  # int64 [V]
    bigram_counts: np.ndarray  # int64 [V, V], within-document character pairs
    n_triggers: int = 3
    charset: str = "all"  # a key of CHARSETS: which characters of the corpus were kept

    def __post_init__(self) -> None:
        check_charset(self.charset)
        V = len(self.chars)
        if not 1 <= self.n_triggers < V - 1:
            raise ConfigError(f"n_triggers must be between 1 and {V - 2} for {V} characters, got {self.n_triggers}")
        if self.unigram_counts.shape != (V,) or self.bigram_counts.shape != (V, V):
            raise ConfigError("unigram/bigram counts do not match the character list")

    # ----- vocabulary
    @property
    def n_chars(self) -> int:
        return len(self.chars)

    @property
    def bos_id(self) -> int:
        return self.n_chars

    @property
    def delim_id(self) -> int:
        return self.n_chars + 1

    @property
    def d_vocab(self) -> int:
        return self.n_chars + 2

    @property
    def fingerprint(self) -> str:
        ident = [self.chars, self.n_triggers] + ([self.charset] if self.charset != "all" else [])
        h = hashlib.sha1(json.dumps(ident).encode())
        h.update(self.unigram_counts.tobytes())
        h.update(self.bigram_counts.tobytes())
        return h.hexdigest()[:12]

    # ----- distributions
    @property
    def unigram(self) -> np.ndarray:
        return self.unigram_counts / self.unigram_counts.sum()

    @property
    def transition(self) -> np.ndarray:
        """Row-stochastic [V, V] bigram matrix; a character never followed by another (it only ends
        documents) gets the unigram marginal as its row."""
        counts = self.bigram_counts.astype(np.float64)
        rows = counts.sum(1, keepdims=True)
        return np.where(rows > 0, counts / np.maximum(rows, 1), self.unigram[None, :])

    @property
    def triggers(self) -> tuple[int, ...]:
        order = np.argsort(-self.unigram_counts, kind="stable")
        return tuple(int(i) for i in order[: self.n_triggers])

    @property
    def is_trigger(self) -> np.ndarray:
        m = np.zeros(self.d_vocab, dtype=bool)
        m[list(self.triggers)] = True
        return m

    @property
    def first_token_dist(self) -> np.ndarray:
        p = self.unigram.copy()
        p[list(self.triggers)] = 0.0
        return p / p.sum()

    def row_entropies(self) -> np.ndarray:
        P = self.transition
        with np.errstate(divide="ignore", invalid="ignore"):
            return -np.where(P > 0, P * np.log(P), 0.0).sum(1)

    # ----- data
    def sample(self, n: int, seq_len: int = SEQ_LEN, seed: int | np.random.Generator = 0) -> torch.Tensor:
        """`n` BB sequences of `seq_len + 1` tokens (⟨s⟩ first), vectorised over the batch."""
        if n < 1 or seq_len < 2:
            raise ConfigError(f"need n >= 1 and seq_len >= 2, got n={n}, seq_len={seq_len}")
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        cdf = _safe_cdf(self.transition)
        cdf_first = _safe_cdf(self.first_token_dist[None, :])[0]
        trig = self.is_trigger
        u = rng.random((n, seq_len))
        x = np.empty((n, seq_len + 1), dtype=np.int64)
        x[:, 0] = self.bos_id
        x[:, 1] = (cdf_first[None, :] <= u[:, :1]).sum(1)
        for t in range(2, seq_len + 1):
            prev = x[:, t - 1]
            drawn = (cdf[prev] <= u[:, t - 1 : t]).sum(1)
            x[:, t] = np.where(trig[prev], x[:, t - 2], drawn)
        return torch.from_numpy(x)

    def batch_fn(self, batch_size: int, seq_len: int = SEQ_LEN, seed: int = 0) -> Callable[[int], torch.Tensor]:
        """Training batches, each fixed by (seed, step) so a resumed run sees the same data."""

        def fn(step: int) -> torch.Tensor:
            return self.sample(batch_size, seq_len, np.random.default_rng([seed, step]))

        return fn

    def position_masks(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backcopy, bigram) masks over input positions: trigger inputs, and non-trigger characters."""
        trig = torch.from_numpy(self.is_trigger).to(inputs.device)[inputs]
        is_char = inputs < self.n_chars
        return trig, is_char & ~trig

    def bigram_optimum(self, seq_len: int = SEQ_LEN) -> float:
        """Exact Bayes risk on bigram positions of length-`seq_len` inputs (pooled over positions).

        At a bigram position the next token is drawn from the transition row of the current one,
        so the optimum is E[H(P[x_t])]; the expectation uses the exact marginal of x_t, obtained by
        propagating Q_t[a, b] = P(x_{t-1} = a, x_t = b) (a = V stands for ⟨s⟩)."""
        V = self.n_chars
        P, H = self.transition, self.row_entropies()
        trig = self.is_trigger[:V]
        Q = np.zeros((V + 1, V))
        Q[V] = self.first_token_dist
        num = den = 0.0
        for _ in range(1, seq_len):  # input positions 1..seq_len-1
            m = Q.sum(0)
            num += float((m * H)[~trig].sum())
            den += float(m[~trig].sum())
            nxt = np.zeros_like(Q)
            nxt[:V] = (m * ~trig)[:, None] * P  # bigram step from a non-trigger
            nxt[:V] += (Q[:V] * trig[None, :]).T  # backcopy: (a, trigger b) -> (b, a)
            Q = nxt
        return num / den

    def oracle_bigram_ce(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position cross-entropy of the true rule's next-token distribution on BB sequences
        `tokens` [N, T+1]: -log P[x_t, x_{t+1}] at input positions t = 0..T-1 (float64, [N, T]).
        Only bigram positions (`position_masks(inputs)[1]`) are meaningful; the others are NaN."""
        inputs, targets = tokens[:, :-1].cpu(), tokens[:, 1:].cpu()
        _, bigram = self.position_masks(inputs)
        with np.errstate(divide="ignore"):
            logP = torch.from_numpy(np.log(self.transition))  # -inf where a transition never occurs
        out = torch.full(inputs.shape, float("nan"), dtype=torch.float64)
        out[bigram] = -logP[inputs[bigram], targets[bigram]]
        return out

    def oracle_bigram_risk(self, tokens: torch.Tensor) -> float:
        """The true transition matrix's mean cross-entropy on exactly the bigram positions of
        `tokens` [N, T+1]: the paired reference for a model's bigram risk on the same sequences.

        BB sequences fall into long loops, so on a batch of a few dozen sequences this empirical
        risk of the Bayes predictor moves by several percent around `bigram_optimum` (its
        expectation); comparing a model's batch risk with it, rather than with the optimum,
        removes that sampling noise."""
        _, bigram = self.position_masks(tokens[:, :-1].cpu())
        if not bool(bigram.any()):
            raise ConfigError("these sequences have no bigram position")
        return float(self.oracle_bigram_ce(tokens)[bigram].mean())

    def dormancy_inputs(self) -> torch.Tensor:
        """The paper's active/dormant probe: one row per character tok, [⟨s⟩, all non-triggers, tok]."""
        non_trig = [i for i in range(self.n_chars) if not self.is_trigger[i]]
        rows = [[self.bos_id, *non_trig, tok] for tok in range(self.n_chars)]
        return torch.tensor(rows, dtype=torch.long)

    # ----- text
    def encode(self, text: str, prepend_bos: bool = True) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted({c for c in text if c not in index})
        if unknown:
            raise ConfigError(f"characters {unknown!r} are not in this BB vocabulary ({self.corpus})")
        ids = ([self.bos_id] if prepend_bos else []) + [index[c] for c in text]
        return torch.tensor(ids, dtype=torch.long)

    def token_str(self, i: int) -> str:
        if i == self.bos_id:
            return BOS_TOKEN
        if i == self.delim_id:
            return DELIM_TOKEN
        return self.chars[i]

    def tokenizer(self):
        """A Hugging Face fast tokenizer: one token per character, ⟨s⟩ as BOS, the delimiter as
        EOS/pad/unknown. Cached on disk (TransformerLens reloads tokenizers from their path)."""
        from tokenizers import Tokenizer, decoders, models


        vocab = {c: i for i, c in enumerate(self.chars)}
        vocab[BOS_TOKEN], vocab[DELIM_TOKEN] = self.bos_id, self.delim_id
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=DELIM_TOKEN))
        tok.add_special_tokens([BOS_TOKEN, DELIM_TOKEN])
        tok.decoder = decoders.Fuse()
        path = cache_dir() / "tokenizers" / f"bb-chars-{self.fingerprint}"
        return save_and_reload(tok, path, bos_token=BOS_TOKEN, eos_token=DELIM_TOKEN, pad_token=DELIM_TOKEN,
                               unk_token=DELIM_TOKEN)

    # ----- persistence
    def to_json(self) -> dict[str, Any]:
        return {"format": TASK_FORMAT, "corpus": self.corpus, "chars": list(self.chars), "n_triggers": self.n_triggers,
                "charset": self.charset, "unigram_counts": self.unigram_counts.tolist(), "bigram_counts": self.bigram_counts.tolist()}

    @classmethod
    def from_json(cls, d: dict[str, Any], n_triggers: int | None = None) -> "BBTask":
        return cls(d["corpus"], tuple(d["chars"]), np.asarray(d["unigram_counts"], dtype=np.int64),
                   np.asarray(d["bigram_counts"], dtype=np.int64), n_triggers if n_triggers is not None else d["n_triggers"],
                   d.get("charset", "all"))

    @classmethod
    def from_texts(cls, texts: list[str], corpus: str, n_triggers: int = 3, charset: str = "all") -> "BBTask":
        """Count characters and within-text character pairs (after `charset`'s normalisation)."""
        check_charset(charset)
        texts = [CHARSETS[charset](t) for t in texts]
        codes = [np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32) for t in texts if t]
        if not codes:
            raise ConfigError(f"corpus {corpus!r} has no text to take character statistics from")
        flat = np.concatenate(codes)
        alphabet, ids = np.unique(flat, return_inverse=True)
        V = len(alphabet)
        ends = np.cumsum([len(c) for c in codes])
        pair_ok = np.ones(len(flat) - 1, dtype=bool)
        pair_ok[ends[:-1] - 1] = False  # no pair across a document boundary
        pairs = ids[:-1][pair_ok] * V + ids[1:][pair_ok]
        bigram = np.bincount(pairs, minlength=V * V).reshape(V, V).astype(np.int64)
        unigram = np.bincount(ids, minlength=V).astype(np.int64)
        return cls(corpus, tuple(chr(int(c)) for c in alphabet), unigram, bigram, n_triggers, charset)


def _letters(text: str) -> str:
    """Lowercase a-z words separated by single spaces: every other character acts as a word break."""
    return " ".join(re.sub(r"[^a-z]+", " ", text.lower()).split())


# How a corpus's text is reduced before its characters are counted. "all" keeps every character
# (on Brown: V = 85). "letters" keeps lowercase a-z and space (V = 27): on Brown's full character
# set the pair ", " forms an almost absorbing BB loop (P(' ' | ',') = 0.987 and ' ' is a trigger,
# so ',' is copied back after every space) that fills about half of all non-trigger positions,
# and capitals, digits and symbols are too rare to be learnt within a CPU training budget.
CHARSETS: dict[str, Callable[[str], str]] = {"all": lambda text: text, "letters": _letters}


def check_charset(charset: str) -> None:
    if charset not in CHARSETS:
        raise ConfigError(f"unknown BB charset {charset!r}; choose one of {sorted(CHARSETS)}")


def _safe_cdf(P: np.ndarray) -> np.ndarray:
    """Row CDFs where every entry from a row's last non-zero probability on is exactly 1, so that
    `(cdf <= u).sum()` with u in [0, 1) never picks a zero-probability token."""
    cdf = np.cumsum(P, axis=1)
    V = P.shape[1]
    last = V - 1 - np.argmax((P > 0)[:, ::-1], axis=1)
    cdf[np.arange(V)[None, :] >= last[:, None]] = 1.0
    return cdf


def load_bb_task(corpus: str = "brown", n_triggers: int = 3, charset: str = "all") -> BBTask:
    """The BB task of a corpus (a built-in name or a path) reduced to `charset` (a key of
    CHARSETS), with its character counts cached."""

    check_charset(charset)
    key = hashlib.sha1((corpus if charset == "all" else f"{corpus}|{charset}").encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in corpus)[-40:]
    path = cache_dir() / "bb" / f"task-{safe}{'' if charset == 'all' else '-' + charset}-{key}.json"
    if path.exists():
        blob = read_json(path)
        if blob.get("format") == TASK_FORMAT:
            return BBTask.from_json(blob, n_triggers)
    c = load_corpus(corpus)
    task = BBTask.from_texts([d.text for d in c.documents], c.id, n_triggers, charset)
    write_json(path, task.to_json())
    return task
