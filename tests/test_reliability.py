"""Faults injected into the store, the checkpoints and the registry: each ends in a recompute or a
clear error, never in a wrong result (docs/RELIABILITY.md tabulates them)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import networkx as nx
import pandas as pd
import pytest
import torch

from workbench.corpora import Corpus, Document
from workbench.errors import CorruptResultError
from workbench.probe_api import ProbeSpec
from workbench.results import Result
from workbench.statefile import StaleStateWarning, load_state, save_state
from workbench.store import ResultStore

# ----------------------------------------------------------------------------- helpers


def text_corpus(n_docs: int = 24) -> Corpus:
    words = "the jury said that an election was conducted in a manner that deserves praise".split()
    docs = [Document(f"d{i}", " ".join(words[(i + j) % len(words)] for j in range(180)), genre="g") for i in range(n_docs)]
    return Corpus("faults", "1", docs)


def residual_norms(tiny, store, **cfg):
    from workbench.runner import run_probe

    return run_probe("residual-norms", tiny, text_corpus(), {"max_tokens": 3000, "seq_len": 32, "batch_size": 4, **cfg}, store=store)


def same_result(a, b) -> bool:
    """Bit-for-bit equality of two results' fields (tensors, tables, JSON values)."""
    for f in dataclasses.fields(a):
        if f.name == "meta":
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, pd.DataFrame):
            try:
                pd.testing.assert_frame_equal(x, y, check_exact=True)
            except AssertionError:
                return False
        elif isinstance(x, nx.Graph):
            if nx.node_link_data(x, edges="edges") != nx.node_link_data(y, edges="edges"):
                return False
        elif x != y:
            return False
    return True


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garble":
        mid = len(data) // 2
        path.write_bytes(data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 16]) + data[mid + 16:])
    elif how == "delete":
        path.unlink()
    else:
        raise ValueError(how)


HOW = ("truncate", "empty", "garble", "delete")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ----------------------------------------------------------------------------- checkpoint files


def test_state_file_round_trip_and_every_corruption_is_discarded(tmp_path):
    path = tmp_path / "s.safetensors"
    tensors = {"a": torch.arange(6.0).view(2, 3), "n": torch.tensor([3, 1], dtype=torch.int64), "b": torch.ones(0)}
    save_state(path, tensors, {"next_batch": 7, "fingerprint": "x"})
    back, meta = load_state(path)
    assert meta == {"next_batch": 7, "fingerprint": "x"}
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert load_state(path, expect={"fingerprint": "y"}) is None and not path.exists()  # another run's: discarded
    for how in ("truncate", "empty", "garble"):
        save_state(path, tensors, {"next_batch": 7})
        corrupt(path, how)
        with pytest.warns(StaleStateWarning):
            assert load_state(path) is None, how
        assert not path.exists()
    assert load_state(tmp_path / "missing.safetensors") is None


def test_a_tampered_value_fails_the_digest(tmp_path):
    """Same length, same header: only the digest can tell that one number changed."""
    path = tmp_path / "s.safetensors"
    save_state(path, {"a": torch.zeros(64, dtype=torch.float64)}, {"next_batch": 1})
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the last float64
    path.write_bytes(bytes(data))
    with pytest.warns(StaleStateWarning, match="digest"):
        assert load_state(path) is None


class CountingAcc:
    """Counts positions and sums token ids (exact integer state), to catch double counting."""

    hook_names = ("blocks.0.hook_resid_post",)
    needs_logits = False

    def __init__(self):
        self.n = torch.zeros((), dtype=torch.int64)
        self.s = torch.zeros((), dtype=torch.int64)

    def update(self, batch, acts, logits):
        self.n += int(batch.valid.sum())
        self.s += int(batch.tokens[batch.valid].sum())

    def state_dict(self):
        return {"n": self.n, "s": self.s}

    def load_state_dict(self, st):
        self.n, self.s = st["n"].clone(), st["s"].clone()


def _batches(tiny):
    from workbench.config import StreamConfig
    from workbench.slices import corpus_batches

    return corpus_batches(tiny, text_corpus(), StreamConfig(max_tokens=3000, seq_len=32, batch_size=4))


@pytest.mark.parametrize("how", ["truncate", "empty", "garble"])
def test_a_torn_stream_checkpoint_restarts_instead_of_double_counting(tiny, tmp_path, how):
    from workbench.activations import CHECKPOINT_FILE, stream

    batches = _batches(tiny)
    ref = CountingAcc()
    stream(tiny, batches, ref, progress=False)

    class Dies(CountingAcc):
        def update(self, batch, acts, logits):
            if batch.index == 7:
                raise KeyboardInterrupt
            super().update(batch, acts, logits)

    with pytest.raises(KeyboardInterrupt):
        stream(tiny, batches, Dies(), checkpoint_dir=tmp_path, checkpoint_every=3, progress=False)
    ckpt = tmp_path / CHECKPOINT_FILE
    assert ckpt.exists()
    corrupt(ckpt, how)
    acc = CountingAcc()
    with pytest.warns(StaleStateWarning):
        stats = stream(tiny, batches, acc, checkpoint_dir=tmp_path, checkpoint_every=3, progress=False)
    assert stats.resumed_from_batch == 0
    assert int(acc.n) == int(ref.n) and int(acc.s) == int(ref.s)


def test_a_checkpoint_of_other_batches_is_not_resumed(tiny, tmp_path):
    from workbench.activations import CHECKPOINT_FILE, stream

    batches = _batches(tiny)
    save_state(tmp_path / CHECKPOINT_FILE, CountingAcc().state_dict(), {"fingerprint": "another run", "next_batch": 5})
    acc = CountingAcc()
    with pytest.warns(StaleStateWarning, match="another run"):
        stats = stream(tiny, batches, acc, checkpoint_dir=tmp_path, progress=False)
    assert stats.resumed_from_batch == 0


def test_trainer_resume_state_is_one_verified_file(tiny, tmp_path):
    from workbench.training import RESUME_FILE, TrainConfig, train

    data = torch.randint(0, 200, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=6, lr=1e-3, resume_every=2, log_every=1)
    train(tiny, lambda step: data, cfg, tmp_path / "run", progress=False)
    state = tmp_path / "run" / RESUME_FILE
    assert state.exists() and not list((tmp_path / "run").glob("resume_state.json"))
    corrupt(state, "garble")
    with pytest.warns(StaleStateWarning):
        res = train(tiny, lambda step: data, cfg, tmp_path / "run", progress=False)
    assert res.resumed_from == 0  # started over rather than trusting a garbled state


# ----------------------------------------------------------------------------- stored results
# A probe whose result has one file of every kind the store writes: JSON, safetensors, parquet, graph.


@dataclasses.dataclass
class FaultDemoConfig:
    n_layers_seen: int = 1


@dataclasses.dataclass
class FaultDemoResult(Result):
    counts: torch.Tensor = dataclasses.field(default_factory=lambda: torch.zeros(0))
    table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    graph: nx.Graph = dataclasses.field(default_factory=nx.Graph)


def _fault_demo(model, corpus, config):
    from workbench.config import StreamConfig
    from workbench.slices import stream_corpus

    acc = CountingAcc()
    stream_corpus(model, corpus, StreamConfig(max_tokens=600, seq_len=32, batch_size=4), acc, desc="fault-demo", progress=False)
    g = nx.Graph()
    g.add_edge("n", "s", weight=float(acc.s))
    return FaultDemoResult(counts=torch.stack([acc.n, acc.s]), table=pd.DataFrame({"n": [int(acc.n)], "s": [int(acc.s)]}), graph=g)


FAULT_DEMO = ProbeSpec("fault-demo", "counts tokens (a test probe)", FaultDemoConfig, FaultDemoResult, _fault_demo)
STORED_FILES = {"result.json": "result.json", "files.json": "files.json", "safetensors": "tensors.safetensors",
                "parquet": "table.parquet", "graph": "graph.graph.json"}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("which", list(STORED_FILES))
def test_a_corrupt_stored_result_is_quarantined_and_recomputed(tiny, store, which, how):
    from workbench.runner import run_probe

    first = run_probe(FAULT_DEMO, tiny, text_corpus(), store=store)
    assert sorted(p.name for p in first.path.iterdir()) == sorted(STORED_FILES.values())
    corrupt(first.path / STORED_FILES[which], how)
    with pytest.warns(UserWarning, match="corrupt"):
        again = run_probe(FAULT_DEMO, tiny, text_corpus(), store=store)
    assert not again.reused and again.key == first.key
    assert same_result(again.result, first.result)
    quarantined = list((store.root / "quarantine" / "fault-demo").glob(f"{first.key}-*"))
    assert len(quarantined) == 1 and "QUARANTINED.txt" in {p.name for p in quarantined[0].iterdir()}
    third = run_probe(FAULT_DEMO, tiny, text_corpus(), store=store)  # the recomputed result verifies and is reused
    assert third.reused and same_result(third.result, first.result)


def test_an_edited_value_in_result_json_is_caught(tiny, store):
    first = residual_norms(tiny, store)
    rj = first.path / "result.json"
    rj.write_text(rj.read_text().replace('"residual-norms"', '"residual-normz"', 1))
    with pytest.raises(CorruptResultError, match="SHA-256"):
        store.load("residual-norms", first.key, type(first.result))


def test_the_dashboard_refuses_a_corrupt_result_with_a_clear_error(tiny, store):
    from dashboards.base import AppState

    first = residual_norms(tiny, store)
    corrupt(first.path / "result.json", "truncate")
    ctx = AppState(store)
    with pytest.raises(CorruptResultError):
        ctx.result(first.run_id)


def test_a_leftover_old_directory_does_not_block_saving(tiny, store):
    from workbench.runner import run_probe

    first = residual_norms(tiny, store)
    leftover = first.path.parent / f".{first.key}.old"  # what an older writer left when killed mid-replace
    leftover.mkdir()
    (leftover / "x").write_text("x")
    redo = run_probe("residual-norms", tiny, text_corpus(), {"max_tokens": 3000, "seq_len": 32, "batch_size": 4},
                     store=store, force=True)
    assert not redo.reused and redo.key == first.key and same_result(redo.result, first.result)
    assert store.get_run(redo.run_id)["status"] == "done"


def test_stale_temporary_and_replaced_directories_are_cleared(tmp_path):
    root = tmp_path / "store"
    probe_dir = root / "results" / "p"
    probe_dir.mkdir(parents=True)
    pid = dead_pid()
    stale = [probe_dir / f".k1.tmp-{pid}-abc", probe_dir / f".k2.old-{pid}-def"]
    fresh = probe_dir / f".k3.tmp-{pid}-ghi"
    live = probe_dir / f".k4.tmp-{os.getpid()}-jkl"
    for d in stale + [fresh, live]:
        d.mkdir()
    old = time.time() - 3600
    for d in stale + [live]:
        os.utime(d, (old, old))
    ResultStore(root)
    assert not any(d.exists() for d in stale)
    assert fresh.exists() and live.exists()  # too young, or its writer still runs


# ----------------------------------------------------------------------------- the registry


def test_a_failed_save_marks_the_run_failed(tiny, store, monkeypatch):
    from workbench.results import Result

    def broken(self, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Result, "save", broken)
    with pytest.raises(OSError):
        residual_norms(tiny, store)
    row = store.runs(limit=1)[0]
    assert row["status"] == "failed" and "No space left" in row["error"]


def test_ctrl_c_marks_the_run_interrupted_with_the_way_to_resume(tiny, store, monkeypatch):
    import probes.residual_norms.probe as rn

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(rn, "stream_corpus", interrupted)
    with pytest.raises(KeyboardInterrupt):
        residual_norms(tiny, store)
    row = store.runs(limit=1)[0]
    assert row["status"] == "interrupted" and "resume" in row["error"]


def test_runs_left_running_by_dead_processes_become_interrupted(store):
    alive = store.start_run("k1", "p", "m", "raw", None, {}, "v")  # this process: alive
    gone = store.start_run("k2", "p", "m", "raw", None, {}, "v")
    reused_pid = store.start_run("k3", "p", "m", "raw", None, {}, "v")
    with store._db() as db:
        db.execute("UPDATE runs SET pid = ? WHERE run_id = ?", (dead_pid(), gone))
        db.execute("UPDATE runs SET proc_start = proc_start - 1000 WHERE run_id = ?", (reused_pid,))  # same pid, other process
    ResultStore(store.root)
    assert store.get_run(alive)["status"] == "running"
    assert store.get_run(gone)["status"] == "interrupted"
    assert store.get_run(reused_pid)["status"] == "interrupted"


@pytest.mark.parametrize("how", ["truncate", "garble", "empty-pages"])
def test_a_corrupt_registry_is_moved_aside_and_rebuilt_from_the_results(tiny, store, how):
    first = residual_norms(tiny, store)
    db = store.registry_path
    with sqlite3.connect(db) as con:  # fold the WAL into the main file so the damage hits real pages
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = db.read_bytes()
    if how == "truncate":
        db.write_bytes(data[:100])
    elif how == "garble":
        db.write_bytes(b"this is not a database" + data[22:])
    else:
        db.write_bytes(data[:4096] + b"\x00" * (len(data) - 4096))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fresh = ResultStore(store.root)
    assert any("registry" in str(w.message) for w in caught)
    rows = fresh.runs()
    assert [(r["probe"], r["key"], r["status"]) for r in rows] == [("residual-norms", first.key, "done")]
    assert list((store.root / "quarantine").glob("registry-*/registry.sqlite"))
    again = residual_norms(tiny, fresh)
    assert again.reused and same_result(again.result, first.result)


def test_a_deleted_registry_row_gives_a_clear_error_and_the_result_stays_reusable(tiny, store):
    from dashboards.base import AppState

    first = residual_norms(tiny, store)
    with store._db() as db:
        db.execute("DELETE FROM runs WHERE run_id = ?", (first.run_id,))
    with pytest.raises(LookupError, match="no stored result"):
        AppState(store).result(first.run_id)
    again = residual_norms(tiny, store)
    assert again.reused and again.run_id != first.run_id


def test_a_registry_from_an_older_version_gains_the_new_columns(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    with sqlite3.connect(root / "registry.sqlite") as con:
        con.execute("CREATE TABLE runs (run_id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, probe TEXT NOT NULL, "
                    "model TEXT, numerics TEXT, corpus TEXT, config TEXT, code_version TEXT, status TEXT NOT NULL, "
                    "progress REAL DEFAULT 0, message TEXT DEFAULT '', created REAL, started REAL, finished REAL, "
                    "wall_s REAL, artifact TEXT, summary TEXT, error TEXT)")
        con.execute("INSERT INTO runs (key, probe, status) VALUES ('k', 'p', 'running')")
    store = ResultStore(root)
    row = store.get_run(1)
    assert row["status"] == "interrupted" and "pid" in row  # no process recorded: it cannot still be running
    with sqlite3.connect(root / "registry.sqlite") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_staleness_is_judged_by_host_and_pid(tmp_path):
    """On a store shared between machines, another host's temporary file is not removed because
    its pid is not running here; this host's dead writer's is; the names carry both."""
    from workbench.io import FOREIGN_STALE_S, atomic_path, host_tag, remove_stale

    root = tmp_path / "shared"
    root.mkdir()
    pid, other = dead_pid(), "0badf00d" if host_tag() != "0badf00d" else "0badf00e"
    mine = root / f".k1.tmp-h{host_tag()}-{pid}-a"
    theirs = root / f".k2.tmp-h{other}-{pid}-b"
    theirs_old = root / f".k3.old-h{other}-{pid}-c"
    running_here = root / f".k4.tmp-h{host_tag()}-{os.getpid()}-d"
    for d in (mine, theirs, theirs_old, running_here):
        d.mkdir()
        os.utime(d, (time.time() - 3600,) * 2)
    os.utime(theirs_old, (time.time() - FOREIGN_STALE_S - 60,) * 2)
    removed = remove_stale(root)
    assert set(removed) == {mine, theirs_old}
    assert theirs.exists() and running_here.exists()
    with atomic_path(root / "x.json") as tmp:  # what this process writes is tagged with its host and pid
        assert tmp.name.startswith(f".x.json.tmp-h{host_tag()}-{os.getpid()}-")
        tmp.write_text("{}")
