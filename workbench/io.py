"""Atomic file writes and safe tensor/table/JSON serialisation (no pickle anywhere)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch loads only where tensors are read or written: registry commands stay fast
    import torch



RESULT_FILE = "result.json"  # a stored result's fields and meta (its tensors and tables sit beside it)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{writer_tag()}-", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def replace_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `path`; if the block succeeds it takes the place
    of `path` (an old directory there is renamed away first, then removed).

    Readers see the old directory, none, or the new one; never a mix. The temporary and old names
    carry the writer's host and pid (`.<name>.tmp-h<host>-<pid>-…`, `.<name>.old-h<host>-<pid>-…`),
    so `remove_stale` can clear what a killed writer on this host left (and leaves another host's
    alone), and a leftover never blocks a later save.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{writer_tag()}-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{writer_tag()}-{uuid.uuid4().hex[:8]}")
            os.rename(path, old)
            _rename_into_place(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            _rename_into_place(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp: Path, path: Path) -> None:
    try:
        os.rename(tmp, path)
    except OSError:
        if not path.exists():
            raise
        # another writer of the same path finished first; both wrote the same thing, keep theirs


_STALE = re.compile(r"^\..+\.(tmp|old)-(?:h([0-9a-f]{8})-)?(\d+)-")
FOREIGN_STALE_S = 7 * 24 * 3600.0  # another host's leftover: its writer's liveness cannot be seen from here


def host_tag() -> str:
    """This machine's short tag in temporary names (a digest of its host name)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def writer_tag() -> str:
    """`h<host>-<pid>`: who writes a temporary file, so that staleness is judged by host and pid."""
    return f"h{host_tag()}-{os.getpid()}"


def remove_stale(root: str | Path, min_age_s: float = 600.0) -> list[Path]:
    """Remove temporary and replaced directories/files (see `replace_dir`, `atomic_path`) under
    `root` older than `min_age_s` whose writer is gone: a process of this host that no longer
    runs (names without a host tag are from this host), or, on a store shared between machines,
    another host's leftover only after FOREIGN_STALE_S (its process cannot be seen from here).
    Returns what was removed."""
    removed: list[Path] = []
    root = Path(root)
    if not root.exists():
        return removed
    now = time.time()
    for p in root.rglob(".*"):
        m = _STALE.match(p.name)
        if m is None:
            continue
        try:
            age = now - p.lstat().st_mtime
        except OSError:
            continue
        here = m.group(2) is None or m.group(2) == host_tag()
        if age < min_age_s or (here and _pid_alive(int(m.group(3)))) or (not here and age < max(min_age_s, FOREIGN_STALE_S)):
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous and moved to CPU."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def read_tensors(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=device)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")
