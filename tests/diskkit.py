"""Real disk faults for store tests: a small tmpfs that fills up, or a file system mounted read-only.

The parent test runs `python tests/diskkit.py <scenario> <store>` under `unshare --user
--map-root-user --mount`, so the child may mount a tmpfs over its own view of `<store>`'s parent
without privileges, and whatever it does there is gone when it exits. The child prints one JSON
line of observations; the test asserts on them. `available()` says whether this machine allows it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def available() -> str | None:
    """None when a private tmpfs can be mounted here; else why not (the tests that need it skip)."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*UNSHARE, "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
                           capture_output=True, text=True, timeout=30)
    return None if probe.returncode == 0 else f"this kernel refuses a private tmpfs mount ({probe.stderr.strip()[:120]})"


def run(scenario: str, workdir: Path, timeout: float = 240) -> dict:
    """Run `scenario` in a child with its own mounts; its JSON observations."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([*UNSHARE, sys.executable, __file__, scenario, str(workdir)], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=str(ROOT))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        raise AssertionError(f"diskkit {scenario} failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- in the child


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _fill(path: Path) -> Path:
    """Write zeros into `path/filler` until the file system refuses with ENOSPC."""
    filler = path / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
    with open(path / "filler2", "wb", buffering=0) as f:  # the last partial block
        try:
            while True:
                f.write(b"\0")
        except OSError:
            pass
    return filler


def _corpus():
    from faultkit import corpus

    return corpus()


CONFIG = {"max_tokens": 600, "seq_len": 32, "batch_size": 4}


def _tiny_run(store):
    from workbench.models import load_model
    from workbench.runner import run_probe

    return run_probe("residual-norms", load_model("tiny", device="cpu"), _corpus(), CONFIG, store=store)


def _attempt(fn) -> str:
    """"ok", or the one-line error's class and first line."""
    try:
        fn()
        return "ok"
    except Exception as e:  # noqa: BLE001 - reported to the parent
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def full_disk_at_open(work: Path) -> dict:
    """A store with a finished run on a tmpfs that is then filled: open it, list, start a run."""
    from workbench.store import ResultStore

    mnt = work / "mnt"
    _mount_tmpfs(mnt, "8m")
    root = mnt / "store"
    first = _tiny_run(ResultStore(root))
    _fill(mnt)
    obs: dict = {"key": first.key}
    store = None

    def open_store():
        nonlocal store
        store = ResultStore(root)

    obs["open"] = _attempt(open_store)
    obs["runs"] = [(r["run_id"], r["status"]) for r in store.runs()] if store is not None else None
    obs["start_run"] = _attempt(lambda: (store or ResultStore(root)).start_run("k", "p", "m", "raw", None, {}, "v"))
    obs["quarantine_after_full"] = sorted(p.name for p in (root / "quarantine").glob("*")) if (root / "quarantine").exists() else []
    for f in ("filler", "filler2"):
        (mnt / f).unlink()
    freed = ResultStore(root)
    obs["runs_after_freeing"] = [(r["run_id"], r["status"], r["key"]) for r in freed.runs()]
    obs["reused_after_freeing"] = _tiny_run(freed).reused
    return obs


def full_disk_at_finish(work: Path) -> dict:
    """The disk fills between saving a result and recording it (in a process of its own, which then
    exits): the run still returns its result, and once space is freed the next opening of the
    store records the row as done."""
    from workbench.store import ResultStore

    mnt = work / "mnt"
    _mount_tmpfs(mnt, "8m")
    root = mnt / "store"
    ResultStore(root)
    child = subprocess.run([sys.executable, __file__, "finish-run-then-fill", str(mnt)], capture_output=True, text=True,
                           timeout=180, cwd=str(ROOT))
    lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
    obs = json.loads(lines[-1]) if lines else {"child_failed": child.stderr[-2000:]}
    for f in ("filler", "filler2"):
        (mnt / f).unlink(missing_ok=True)
    store = ResultStore(root)
    obs["row_after_freeing"] = {k: store.get_run(obs["run_id"])[k] for k in ("status", "artifact", "key")} if "run_id" in obs else None
    obs["reused_later"] = _tiny_run(store).reused
    return obs


def finish_run_then_fill(mnt: Path) -> dict:
    """(In its own process.) Run a probe whose save is followed by the disk filling up."""
    from workbench.results import Result
    from workbench.store import ResultStore

    store = ResultStore(mnt / "store")
    save = Result.save

    def save_then_fill(self, path):
        out = save(self, path)
        _fill(mnt)
        return out

    Result.save = save_then_fill
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = _tiny_run(store)
    return {"returned": outcome.result is not None and not outcome.reused,
            "warned": [str(w.message) for w in caught if "registry could not record" in str(w.message)],
            "read_while_full": _attempt(lambda: store.get_run(outcome.run_id)), "key": outcome.key,
            "run_id": outcome.run_id, "result_dir": sorted(p.name for p in outcome.path.iterdir())}


def read_only(work: Path) -> dict:
    """A store with a finished run, its file system remounted read-only: it can be read, not written."""
    from workbench.store import ResultStore

    mnt = work / "mnt"
    _mount_tmpfs(mnt, "16m")
    root = mnt / "store"
    first = _tiny_run(ResultStore(root))
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    obs: dict = {"key": first.key}
    store = None

    def open_store():
        nonlocal store
        store = ResultStore(root)

    obs["open"] = _attempt(open_store)
    if store is not None:
        obs["read_only"] = store.read_only
        obs["runs"] = [(r["run_id"], r["status"], r["key"]) for r in store.runs()]
        obs["result_loads"] = _attempt(lambda: store.load("residual-norms", first.key, type(first.result)))
        obs["start_run"] = _attempt(lambda: store.start_run("k", "p", "m", "raw", None, {}, "v"))
        obs["run_probe"] = _attempt(lambda: _tiny_run(store))
    return obs


SCENARIOS = {"full-disk-at-open": full_disk_at_open, "full-disk-at-finish": full_disk_at_finish, "read-only": read_only,
             "finish-run-then-fill": finish_run_then_fill}

if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    name, workdir = sys.argv[1], Path(sys.argv[2])
    print(json.dumps(SCENARIOS[name](workdir), default=str))
