"""The store under faults that are not corruption: a full disk, a read-only file system, I/O errors,
a result copied or linked under another key, many processes opening one fresh store, and two runs
of one key started together. Nothing may be quarantined that is not damaged, nothing reused that
was computed for other inputs, and nothing computed twice that one process can compute once."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import diskkit
import pytest

from workbench.errors import CorruptResultError, StoreUnavailableError
from workbench.store import ResultStore

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NO_TMPFS = diskkit.available()
needs_tmpfs = pytest.mark.skipif(NO_TMPFS is not None, reason=f"a real full or read-only disk needs a private tmpfs: {NO_TMPFS}")


def _run(tiny, store, max_tokens: int):
    from faultkit import corpus

    from workbench.runner import run_probe

    return run_probe("residual-norms", tiny, corpus(), {"max_tokens": max_tokens, "seq_len": 32, "batch_size": 4}, store=store)


# ----------------------------------------------------------------------------- full disk, read-only, I/O errors


@needs_tmpfs
@pytest.mark.timeout(300)
def test_a_full_disk_gives_one_line_and_moves_nothing(tmp_path):
    obs = diskkit.run("full-disk-at-open", tmp_path)
    for what in ("open", "start_run"):  # either it opens (reads need no space) or it says so in one line
        assert obs[what] == "ok" or (obs[what].startswith("StoreUnavailableError") and "disk is full" in obs[what]), obs
    assert obs["start_run"] != "ok", obs  # nothing can be recorded on a full disk
    assert obs["quarantine_after_full"] == [], "a healthy registry was moved to quarantine"
    assert obs["runs_after_freeing"] == [[1, "done", obs["key"]]]
    assert obs["reused_after_freeing"] is True


@needs_tmpfs
@pytest.mark.timeout(300)
def test_a_disk_that_fills_after_the_save_keeps_the_result_and_the_row_is_done_later(tmp_path):
    obs = diskkit.run("full-disk-at-finish", tmp_path)
    assert obs["returned"] is True, obs
    assert len(obs["warned"]) == 1 and "disk is full" in obs["warned"][0]
    assert obs["result_dir"] == ["files.json", "result.json", "table.parquet"]
    assert obs["row_after_freeing"]["status"] == "done" and obs["row_after_freeing"]["key"] == obs["key"]
    assert obs["row_after_freeing"]["artifact"].endswith(obs["key"])
    assert obs["reused_later"] is True


@needs_tmpfs
@pytest.mark.timeout(300)
def test_a_read_only_store_can_be_read_and_refuses_writes_in_one_line(tmp_path):
    obs = diskkit.run("read-only", tmp_path)
    assert obs["open"] == "ok" and obs["read_only"] is True
    assert obs["runs"] == [[1, "done", obs["key"]]]
    assert obs["result_loads"] == "ok"
    assert obs["run_probe"] == "ok"  # the stored result answers without a registry row
    assert obs["start_run"].startswith("StoreUnavailableError") and "read-only" in obs["start_run"]


@pytest.mark.parametrize("name,message", [("SQLITE_IOERR", "disk I/O error"), ("SQLITE_FULL", "database or disk is full"),
                                          ("SQLITE_READONLY", "attempt to write a readonly database"),
                                          ("SQLITE_CANTOPEN", "unable to open database file")])
def test_registry_errors_that_are_not_corruption_never_quarantine(tmp_path, monkeypatch, name, message):
    root = tmp_path / "s"
    ResultStore(root).start_run("k", "p", "m", "raw", None, {}, "v")
    before = (root / "registry.sqlite").read_bytes()

    def failing(self):
        e = sqlite3.OperationalError(message)
        e.sqlite_errorname = name
        raise e

    monkeypatch.setattr(ResultStore, "_init_schema", failing)
    with pytest.raises(StoreUnavailableError) as info:
        ResultStore(root)
    assert "\n" not in str(info.value) and str(root) in str(info.value)
    assert not (root / "quarantine").exists()
    assert (root / "registry.sqlite").read_bytes() == before


def test_a_store_without_a_registry_on_a_read_only_path_lists_nothing(tmp_path, monkeypatch):
    root = tmp_path / "empty"
    root.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode, **k: mode != os.W_OK)  # as a read-only mount answers
    store = ResultStore(root)
    assert store.read_only and store.runs() == [] and store.get_run(1) is None
    assert not (root / "registry.sqlite").exists()


# ----------------------------------------------------------------------------- a result under another key


def test_a_result_copied_under_another_key_is_not_reused(tiny, store):
    small = _run(tiny, store, 1000)
    from faultkit import corpus

    import probes.residual_norms.probe as rn
    from workbench.corpora.base import Corpus  # noqa: F401
    from workbench.runner import probe_key

    big_key = probe_key(rn.SPEC, tiny, corpus(), {"max_tokens": 3000, "seq_len": 32, "batch_size": 4})
    assert big_key != small.key
    shutil.copytree(small.path, store.path("residual-norms", big_key))
    with pytest.warns(UserWarning, match="copied or linked from another key"):
        big = _run(tiny, store, 3000)
    assert not big.reused and big.key == big_key
    assert big.result.summary() != small.result.summary()
    assert big.result.meta["key"] == big_key
    assert _run(tiny, store, 3000).reused  # the recomputed one is its own key's and is reused


def test_a_result_linked_from_outside_the_store_is_refused_and_nothing_is_written_there(tiny, store, tmp_path):
    from faultkit import corpus

    import probes.residual_norms.probe as rn
    from workbench.runner import probe_key

    small = _run(tiny, store, 1000)
    outside = tmp_path / "elsewhere"
    shutil.copytree(small.path, outside)
    listing = sorted(p.name for p in outside.iterdir())
    key = probe_key(rn.SPEC, tiny, corpus(), {"max_tokens": 3000, "seq_len": 32, "batch_size": 4})
    os.symlink(outside, store.path("residual-norms", key))
    with pytest.raises(CorruptResultError, match="link"):
        store.load("residual-norms", key, type(small.result))
    assert sorted(p.name for p in outside.iterdir()) == listing  # no QUARANTINED.txt written through the link
    moved = list((store.root / "quarantine" / "residual-norms").glob(f"{key}-*"))
    assert len(moved) == 1 and (moved[0] / "link").is_symlink() and (moved[0] / "QUARANTINED.txt").is_file()
    assert not os.path.lexists(store.path("residual-norms", key))


def test_a_link_inside_a_result_directory_fails_verification(tiny, store, tmp_path):
    small = _run(tiny, store, 1000)
    target = tmp_path / "table.parquet"
    shutil.copy(small.path / "table.parquet", target)
    (small.path / "table.parquet").unlink()
    os.symlink(target, small.path / "table.parquet")  # same bytes, so only the link itself is wrong
    with pytest.raises(CorruptResultError, match="symbolic links"):
        store.load("residual-norms", small.key, type(small.result))


# ----------------------------------------------------------------------------- many processes at once


def _open_at_barrier(root_base: str, rounds: int, barrier, errors) -> None:
    for i in range(rounds):
        barrier.wait()
        try:
            ResultStore(Path(root_base) / f"round{i}")
        except Exception as e:  # noqa: BLE001 - counted by the parent
            errors.put(f"{type(e).__name__}: {e}")


@pytest.mark.timeout(240)
def test_processes_opening_one_fresh_store_at_once_never_fail(tmp_path):
    n, rounds = 4, 40
    ctx = mp.get_context("spawn")
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_open_at_barrier, args=(str(tmp_path), rounds, barrier, errors)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(200)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert all(p.exitcode == 0 for p in procs)
    assert failures == [], f"{len(failures)} of {n * rounds} opens failed: {failures[:3]}"
    for i in range(rounds):  # every round's registry is WAL and has the whole schema
        with sqlite3.connect(tmp_path / f"round{i}" / "registry.sqlite") as con:
            assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert "label" in {r[1] for r in con.execute("PRAGMA table_info(runs)")}


@pytest.mark.timeout(240)
def test_two_runs_of_one_key_started_together_compute_it_once(tmp_path):
    """Two processes run the same probe on the same inputs at once: one computes, the other waits for
    it and reuses its result (the slowed forward pass makes the overlap certain)."""
    store = tmp_path / "store"
    ResultStore(store)
    env = {**os.environ, "FAULTKIT_FORWARD_SLEEP": "0.05", "PYTHONWARNINGS": "ignore"}
    procs, events = [], []
    for i in range(2):
        ev = tmp_path / f"events{i}"
        events.append(ev)
        procs.append(subprocess.Popen([sys.executable, str(HERE / "faultkit.py"), "probe", str(store)],
                                      env={**env, "FAULTKIT_EVENTS": str(ev)}, cwd=str(ROOT),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=200)
        assert p.returncode == 0, err[-2000:]
    rows = ResultStore(store).runs()
    assert sorted(r["status"] for r in rows) == ["done", "reused"]
    assert len({r["key"] for r in rows}) == 1
    batches = [ev.read_text().split().count("batch") if ev.exists() else 0 for ev in events]
    assert sorted(batches)[0] == 0 and sorted(batches)[1] > 0, f"forward batches per process: {batches}"


def test_a_second_claim_on_a_key_waits_and_can_be_given_up(tmp_path):
    """The claim itself: a process holding it makes another wait (its callback is called while it
    waits); the waiter may give up by raising, and gets the claim once the holder ends."""
    store = ResultStore(tmp_path / "s")
    code = ("import sys, time; sys.path[:0] = [%r]\n"
            "from workbench.store import ResultStore\n"
            "with ResultStore(%r).computing('p', 'k'):\n"
            "    print('held', flush=True); time.sleep(3)\n") % (str(ROOT), str(store.root))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waited: list[float] = []

    class GiveUp(Exception):
        pass

    def impatient(seconds: float) -> None:
        waited.append(seconds)
        raise GiveUp

    with pytest.raises(GiveUp):
        with store.computing("p", "k", impatient):
            pass
    assert waited and waited[0] >= 1.0
    t0 = time.monotonic()
    with store.computing("p", "k", lambda s: None):
        took = time.monotonic() - t0
    holder.wait(30)
    assert 0.5 < took < 10
    with store.computing("p", "k"), store.computing("p", "k"):  # re-entrant in one thread
        pass
