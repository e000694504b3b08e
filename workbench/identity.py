"""Content identities for result keys: digests of files and tensors, hub revisions, and the
versions of the libraries that compute results.

A stored result may be reused only when everything that could change it matches, so weights are
identified by what they hold, not by their name. Hashing a large file costs about 0.7 s per GB, so
file digests are cached by (absolute path, size, modification time): a file is read once until it
changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from importlib import metadata
from pathlib import Path
from typing import Iterable

import torch

from workbench.paths import cache_dir

DIGEST_CHARS = 16  # 64 bits of SHA-256: collisions are not a practical concern for one store
_CACHE_FILE = "digests.json"
_lock = threading.Lock()
_memo: dict[str, dict] | None = None


def _cache_path() -> Path:
    return cache_dir() / _CACHE_FILE


def _load_cache() -> dict[str, dict]:
    global _memo
    if _memo is None:
        try:
            data = json.loads(_cache_path().read_text())
            _memo = data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _memo = {}
    return _memo


def _save_cache(cache: dict[str, dict]) -> None:
    from workbench.io import write_json

    try:
        write_json(_cache_path(), cache)
    except OSError:  # a read-only cache only costs a re-hash next time
        pass


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (first DIGEST_CHARS hex digits), cached by path, size and mtime."""
    p = Path(path).resolve()
    st = p.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with _lock:
        hit = _load_cache().get(str(p))
        if hit is not None and hit.get("size") == stamp["size"] and hit.get("mtime_ns") == stamp["mtime_ns"]:
            return str(hit["sha256"])
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()[:DIGEST_CHARS]
    with _lock:
        cache = _load_cache()
        cache[str(p)] = {**stamp, "sha256": digest}
        _save_cache(cache)
    return digest


def files_digest(paths: Iterable[str | Path]) -> str:
    """One digest for several files (their names and contents, in sorted order of name)."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(f"{p.name}:{file_digest(p)};".encode())
    return h.hexdigest()[:DIGEST_CHARS]


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes (in the order given)."""
    h = hashlib.sha256()
    for name, t in named:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:DIGEST_CHARS]


def runtime_versions() -> dict[str, str]:
    """major.minor of the libraries whose arithmetic produces results (a new release may change it)."""
    out: dict[str, str] = {}
    for dist in ("torch", "transformer-lens", "sae-lens"):
        try:
            out[dist] = ".".join(metadata.version(dist).split("+")[0].split(".")[:2])
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def hub_cache_root() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached now (False at once under HF_HUB_OFFLINE=1)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    import socket

    try:
        with socket.create_connection(HUB_HOST, timeout=timeout_s):
            return True
    except OSError:
        return False


def hub_revision(repo_id: str, repo_type: str = "model", ref: str = "main") -> str | None:
    """The commit a cached hub repository's `ref` points at (what an offline load reads), or None."""
    folder = hub_cache_root() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "refs" / ref
    try:
        rev = folder.read_text().strip()
    except OSError:
        return None
    return rev or None
