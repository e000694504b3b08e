"""Corpus data model: documents with text, a domain label, and optional per-word spans and tags."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Split = Literal["all", "train", "validation"]
SPLITS: tuple[str, ...] = ("all", "train", "validation")


@dataclass
class Document:
    """One document.

    `word_spans` ([n_words, 2] character offsets into `text`) and `tags` (one label per word,
    e.g. a Brown POS tag) are optional; when present they let per-word labels be mapped onto tokens.
    """

    doc_id: str
    text: str
    genre: str = ""
    word_spans: np.ndarray | None = None
    tags: list[str] | None = None

    def __post_init__(self) -> None:
        if self.word_spans is not None and self.tags is not None and len(self.word_spans) != len(self.tags):
            raise ValueError(f"{self.doc_id}: {len(self.word_spans)} word spans but {len(self.tags)} tags")


def validation_document(doc_id: str, fraction: float = 0.1) -> bool:
    """Deterministic split by document: a stable hash of the id, independent of order and platform."""
    h = int.from_bytes(hashlib.sha1(doc_id.encode()).digest()[:4], "big")
    return (h % 1000) < int(round(fraction * 1000))


@dataclass
class Corpus:
    """A named list of documents. `name` plus `version` identify it in result keys."""

    name: str
    version: str
    documents: list[Document]
    split_name: Split = "all"
    genres: tuple[str, ...] | None = None
    genre_names: dict[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """Stable identity used in store keys: name, version, split and genre filter."""
        parts = [f"{self.name}@{self.version}", self.split_name]
        if self.genres:
            parts.append("genres=" + ",".join(sorted(self.genres)))
        return ":".join(parts)

    def __len__(self) -> int:
        return len(self.documents)

    def split(self, which: Split, validation_fraction: float = 0.1) -> "Corpus":
        """Train/validation split by document id (deterministic)."""
        if which not in SPLITS:
            raise ValueError(f"Unknown split {which!r}; choose one of {SPLITS}")
        if which == "all":
            docs = list(self.documents)
        else:
            want_val = which == "validation"
            docs = [d for d in self.documents if validation_document(d.doc_id, validation_fraction) == want_val]
        return Corpus(self.name, self.version, docs, which, self.genres, self.genre_names)

    def filter_genres(self, genres: list[str] | tuple[str, ...]) -> "Corpus":
        """Keep the documents whose `genre` is one of `genres` (a domain slice)."""
        known = sorted({d.genre for d in self.documents})
        unknown = [g for g in genres if g not in known]
        if unknown:
            raise ValueError(f"Unknown genre(s) {unknown} in corpus {self.name!r}; known: {known}")
        docs = [d for d in self.documents if d.genre in set(genres)]
        return Corpus(self.name, self.version, docs, self.split_name, tuple(sorted(genres)), self.genre_names)

    def genre_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.documents:
            counts[d.genre] = counts.get(d.genre, 0) + 1
        return counts

    @property
    def has_tags(self) -> bool:
        return bool(self.documents) and all(d.tags is not None for d in self.documents)
