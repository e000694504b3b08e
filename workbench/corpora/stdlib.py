"""Corpus "python-stdlib": the running interpreter's standard-library `.py` files, one document each.

A code domain that is always available offline. Tests, site-packages and very large generated
files are left out so slices stay representative of ordinary library code.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from pathlib import Path

from workbench.corpora.base import Corpus, Document

NAME = "python-stdlib"
GENRE = "python"
MAX_FILE_BYTES = 200_000
# Directory names pruned anywhere below the stdlib root.
EXCLUDED_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib-dynload"}
)


def stdlib_root() -> Path:
    """The standard-library directory of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """Sorted `.py` files under `root` outside the excluded directories, up to MAX_FILE_BYTES."""
    root = root or stdlib_root()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS]
        for name in filenames:
            path = Path(dirpath) / name
            if name.endswith(".py") and path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def load_stdlib(root: Path | None = None) -> Corpus:
    """One Document per readable UTF-8 stdlib file; doc_id is the path relative to the stdlib root."""
    root = root or stdlib_root()
    docs: list[Document] = []
    for path in stdlib_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(path.relative_to(root).as_posix(), text, GENRE))
    return Corpus(NAME, platform.python_version(), docs, genre_names={GENRE: "Python standard library source"})
