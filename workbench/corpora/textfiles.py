"""Local text corpora: one text file, or every `*.txt` / `*.md` file below a directory.

The version is a content hash, so editing the files changes the corpus id and invalidates
stored results. In a directory, a file's genre is the name of its parent folder (files at the
top level get "text"), so sub-folders act as domains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from workbench.corpora.base import Corpus, Document
from workbench.errors import ConfigError

DEFAULT_GENRE = "text"
TEXT_SUFFIXES = (".txt", ".md")


def text_files(root: Path) -> list[Path]:
    """Sorted `*.txt`/`*.md` files below `root` (hidden files and folders skipped)."""
    found = [
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _genre(root: Path, path: Path) -> str:
    parent = path.parent.relative_to(root)
    return parent.name if parent.parts else DEFAULT_GENRE


def load_text_path(path: str | Path) -> Corpus:
    """A corpus from a text file (one document) or a directory (one document per text file).

    Undecodable files in a directory are skipped; an undecodable single file is a ConfigError.
    Empty files are skipped (the caller turns an empty corpus into EmptyCorpusError).
    """
    path = Path(path).expanduser().resolve()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 text ({exc})") from exc
        docs = [Document(path.name, text, DEFAULT_GENRE)] if text.strip() else []
    elif path.is_dir():
        docs = []
        for file in text_files(path):
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            if text.strip():
                docs.append(Document(file.relative_to(path).as_posix(), text, _genre(path, file)))
    else:
        raise ConfigError(f"{path} is neither a file nor a directory")
    return Corpus(f"text:{path.name}", content_version(docs), docs)


def content_version(docs: list[Document]) -> str:
    """First 12 hex digits of a SHA-1 over every document's id and text."""
    h = hashlib.sha1()
    for d in docs:
        for part in (d.doc_id, d.text):
            data = part.encode("utf-8")
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
    return h.hexdigest()[:12]
