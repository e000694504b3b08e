"""Where the workbench keeps caches and results. Both are overridable by environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Downloads and derived caches (dequantized weights, corpus tarballs, tokenized corpora).

    `WORKBENCH_CACHE` overrides the default `~/.cache/workbench`.
    """
    root = Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def store_dir() -> Path:
    """The result store and run registry. `WORKBENCH_STORE` overrides `<cache>/store`."""
    env = os.environ.get("WORKBENCH_STORE")
    root = Path(env) if env else cache_dir() / "store"
    root.mkdir(parents=True, exist_ok=True)
    return root
