"""Resumable state in one self-verifying file.

A checkpoint (a streamed accumulator and the next batch, a trainer's weights, optimiser and step)
is one safetensors file whose header carries the JSON metadata and a SHA-256 over the metadata and
every tensor. It is written to a temporary file, flushed to disk and renamed into place, so a
reader sees the old checkpoint or the new one, never half of each. A file that is torn, garbled or
does not match its digest is discarded with a warning and the run starts that part over: a
checkpoint can cost work, never correctness.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.io import _json_default, atomic_path

META_KEY = "workbench.meta"
DIGEST_KEY = "workbench.sha256"


class StaleStateWarning(UserWarning):
    """A checkpoint was unreadable or did not verify, and was discarded."""


def _digest(meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_state(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write `tensors` and `meta` (JSON-able) to `path` as one verified, atomically replaced file."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta, sort_keys=True, default=_json_default)
    header = {META_KEY: meta_json, DIGEST_KEY: _digest(meta_json, clean)}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=header)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())


def load_state(path: str | Path, device: str = "cpu", expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """(tensors, meta) from a file written by `save_state`, or None when there is none to use.

    None, with a StaleStateWarning and the file removed, when the file is unreadable, fails its
    digest, or when `expect` is given and some of its items differ from the stored metadata
    (a checkpoint of another run). A missing file gives None silently.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta_json = header[META_KEY]
        if _digest(meta_json, tensors) != header[DIGEST_KEY]:
            raise ValueError("its contents do not match its digest")
        meta = json.loads(meta_json)
    except Exception as e:  # torn, truncated, garbled, or not ours: all mean "start over"
        _discard(path, f"{type(e).__name__}: {e}")
        return None
    if expect is not None:
        expected = json.loads(json.dumps(expect, sort_keys=True, default=_json_default))
        differ = sorted(k for k, v in expected.items() if meta.get(k) != v)
        if differ:
            _discard(path, f"it belongs to another run (differs in {', '.join(differ)})")
            return None
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def _discard(path: Path, why: str) -> None:
    warnings.warn(f"discarded checkpoint {path}: {why}; that part of the run starts over", StaleStateWarning, stacklevel=3)
    try:
        path.unlink()
    except OSError:
        pass
