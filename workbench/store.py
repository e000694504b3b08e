"""The result store: results keyed by everything that determines them, plus a run registry.

A key is the hash of (model identity, corpus identity, probe name + config, the identities of
every other resource the config names, code version, library versions). A changed input gives a
new key, so an old result is never silently reused. Results are directories written atomically
with a SHA-256 manifest (see `workbench.results`); a result that fails its manifest is moved to
`<root>/quarantine/` and computed again.

The registry is a SQLite table (WAL mode, so readers never block the writer) of every run: its
key, probe, model, corpus, config, status, progress, timings, artifact path and the process that
runs it. A run left "running" by a process that no longer exists is marked "interrupted" when a
store is opened. Workers take queued runs with one atomic UPDATE, so two workers never run the
same job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar

import psutil

from workbench.errors import CorruptResultError
from workbench.io import RESULT_FILE, _json_default, remove_stale
from workbench.paths import store_dir

if TYPE_CHECKING:  # results (and torch) load only when a result is read: `workbench runs` stays fast
    from workbench.results import Result

R = TypeVar("R", bound="Result")

ACTIVE = ("queued", "running")
FINISHED_OK = ("done", "reused")
STATUSES = ("queued", "running", "done", "reused", "failed", "interrupted", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    probe TEXT NOT NULL,
    model TEXT,
    numerics TEXT,
    corpus TEXT,
    config TEXT,
    code_version TEXT,
    status TEXT NOT NULL,           -- queued | running | done | reused | failed | interrupted | cancelled
    progress REAL DEFAULT 0,
    message TEXT DEFAULT '',
    created REAL,
    started REAL,
    finished REAL,
    wall_s REAL,
    artifact TEXT,
    summary TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
"""
# Columns added after the first schema; older registries gain them when opened.
EXTRA_COLUMNS = {
    "pid": "INTEGER",            # the process running it
    "host": "TEXT",              # ... on this host
    "proc_start": "REAL",        # ... started at this time (guards against a reused pid)
    "attempts": "INTEGER DEFAULT 0",  # how many times a process took it
    "cancel_requested": "INTEGER DEFAULT 0",
    "world_size": "INTEGER DEFAULT 1",
    "request": "TEXT",           # a queued run's request as asked (probe, model, corpus, config names), kept for retries
    "label": "TEXT",             # why the run was made, e.g. "first-look: 4,096 Brown tokens" (pages show it)
}


def result_key(model_key: str, corpus_key: str | None, probe: str, config: dict[str, Any], code_version: str,
               resources: dict[str, Any] | None = None, runtime: dict[str, str] | None = None) -> str:
    """Hash of everything that determines a result (canonical JSON, SHA-256, 20 hex chars).

    resources: identities of what the config names besides the main corpus (SAEs, other corpora);
    runtime: versions of the libraries that compute the result.
    """
    blob = json.dumps(
        {"model": model_key, "corpus": corpus_key, "probe": probe, "config": config, "code": code_version,
         "resources": resources or {}, "runtime": runtime or {}},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def this_process() -> dict[str, Any]:
    """pid, host and start time of the current process (what the registry records per run)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _start_time(os.getpid())}


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def process_alive(pid: int | None, host: str | None, proc_start: float | None) -> bool:
    """Whether the recorded process still runs. A process on another host is assumed alive."""
    if pid is None:
        return False
    if host and host != socket.gethostname():
        return True
    started = _start_time(int(pid))
    if started is None:
        return False
    return proc_start is None or abs(started - float(proc_start)) < 1.0


class ResultStore:
    """Results under `<root>/results/<probe>/<key>/` and the registry in `<root>/registry.sqlite`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else store_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self._open_registry()
        self.mark_interrupted()
        for sub in ("results", "scratch"):
            remove_stale(self.root / sub)

    @property
    def registry_path(self) -> Path:
        return self.root / "registry.sqlite"

    # ----- results -----
    def path(self, probe: str, key: str) -> Path:
        return self.root / "results" / probe / key

    def has(self, probe: str, key: str) -> bool:
        """Whether something is stored under this key (not yet verified; `get` verifies)."""
        return self.path(probe, key).is_dir()

    def load(self, probe: str, key: str, result_cls: type[R]) -> R:
        """The stored result, verified against its manifest. A corrupt one is moved to the
        quarantine folder and CorruptResultError is raised."""
        try:
            return result_cls.load(self.path(probe, key))
        except CorruptResultError as e:
            self.quarantine(probe, key, str(e))
            raise

    def get(self, probe: str, key: str, result_cls: type[R]) -> R | None:
        """The stored, verified result, or None when there is none (a corrupt one is quarantined)."""
        if not self.has(probe, key):
            return None
        try:
            return self.load(probe, key, result_cls)
        except CorruptResultError:
            return None

    def save(self, probe: str, key: str, result: Any) -> Path:
        return result.save(self.path(probe, key))

    def quarantine(self, probe: str, key: str, reason: str) -> Path | None:
        """Move a result directory aside to `<root>/quarantine/` with the reason; warn once."""
        src = self.path(probe, key)
        if not src.exists():
            return None
        dest = self.root / "quarantine" / probe / f"{key}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(src, dest)
        except OSError:  # another process moved it first
            return None
        (dest / "QUARANTINED.txt").write_text(reason + "\n")
        warnings.warn(f"stored result {probe}/{key} is corrupt ({reason}); moved to {dest} and will be computed again",
                      stacklevel=2)
        return dest

    def scratch(self, probe: str, key: str) -> Path:
        """A per-key directory for checkpoints of an unfinished run (kept across restarts)."""
        p = self.root / "scratch" / probe / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ----- registry -----
    def _open_registry(self) -> None:
        try:
            self._init_schema()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            self._recover_registry(str(e))

    def _init_schema(self) -> None:
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            db.executescript(SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
            for name, decl in EXTRA_COLUMNS.items():
                if name not in have:
                    try:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError as e:  # another process opening the registry added it first
                        if "duplicate column" not in str(e):
                            raise

    def _recover_registry(self, reason: str) -> None:
        """Move an unreadable registry aside and rebuild it from the stored results' metadata."""
        dest = self.root / "quarantine" / f"registry-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        dest.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.registry_path) + suffix)
            if p.exists():
                shutil.move(str(p), dest / p.name)
        (dest / "QUARANTINED.txt").write_text(reason + "\n")
        self._init_schema()
        n = self._rebuild_from_results()
        warnings.warn(f"the run registry {self.registry_path} was unreadable ({reason}); moved to {dest} and "
                      f"rebuilt from {n} stored results", stacklevel=3)

    def _rebuild_from_results(self) -> int:
        n = 0
        for rj in sorted((self.root / "results").glob(f"*/*/{RESULT_FILE}")):
            try:
                meta = json.loads(rj.read_text())["fields"]["meta"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            model = meta.get("model") or {}
            with self._db() as db:
                db.execute(
                    "INSERT INTO runs (key, probe, model, numerics, corpus, config, code_version, status, message, "
                    "created, finished, wall_s, artifact) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (rj.parent.name, rj.parent.parent.name, model.get("id"), meta.get("numerics"), meta.get("corpus"),
                     json.dumps(meta.get("config", {}), sort_keys=True, default=_json_default), meta.get("code_version"),
                     "done", "recovered from the stored result", rj.stat().st_mtime, rj.stat().st_mtime,
                     meta.get("wall_s"), str(rj.parent)),
                )
            n += 1
        return n

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.registry_path, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def start_run(self, key: str, probe: str, model: str, numerics: str, corpus: str | None, config: dict, code_version: str,
                  status: str = "running", world_size: int = 1, label: str | None = None) -> int:
        now = time.time()
        proc = this_process() if status == "running" else {"pid": None, "host": None, "proc_start": None}
        config_json = json.dumps(config, default=_json_default, sort_keys=True)
        request = json.dumps({"probe": probe, "model": model, "corpus": corpus, "config": json.loads(config_json)}) if status == "queued" else None
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO runs (key, probe, model, numerics, corpus, config, code_version, status, created, started,"
                " pid, host, proc_start, attempts, world_size, request, label) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, probe, model, numerics, corpus, config_json, code_version,
                 status, now, now if status == "running" else None, proc["pid"], proc["host"], proc["proc_start"],
                 1 if status == "running" else 0, world_size, request, label),
            )
            return int(cur.lastrowid)

    def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"status", "progress", "message", "started", "finished", "wall_s", "artifact", "summary", "error",
                   "key", "model", "numerics", "corpus", "config", "code_version", "world_size", "label"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"cannot update {bad}")
        for name in ("summary", "config"):
            if name in fields and not isinstance(fields[name], str):
                fields[name] = json.dumps(fields[name], default=_json_default, sort_keys=name == "config")
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._db() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE run_id = ?", (*fields.values(), run_id))

    def finish_run(self, run_id: int, status: str, artifact: str | None = None, summary: Any = None, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = time.time()
        with self._db() as db:
            row = db.execute("SELECT started FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        wall = now - row["started"] if row and row["started"] else None
        fields: dict[str, Any] = dict(status=status, finished=now, wall_s=wall, artifact=artifact,
                                      summary=summary if summary is not None else "", error=error)
        if status in FINISHED_OK:
            fields["progress"] = 1.0
        self.update_run(run_id, **fields)

    # ----- claiming, interruption, cancellation -----
    def claim(self, run_id: int | None = None) -> int | None:
        """Atomically take a queued run for this process (the oldest one, or `run_id`); its id, or
        None when there is none to take. Two processes can never take the same run."""
        proc = this_process()
        now = time.time()
        pick = "?" if run_id is not None else "(SELECT run_id FROM runs WHERE status = 'queued' ORDER BY run_id LIMIT 1)"
        args: tuple = (now, proc["pid"], proc["host"], proc["proc_start"]) + ((run_id,) if run_id is not None else ())
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            cur = db.execute(
                "UPDATE runs SET status = 'running', started = ?, pid = ?, host = ?, proc_start = ?, "
                f"attempts = COALESCE(attempts, 0) + 1, message = 'taken by a worker' WHERE run_id = {pick} AND status = 'queued' "
                "RETURNING run_id",
                args,
            )
            row = cur.fetchone()
        return int(row["run_id"]) if row else None

    def mark_interrupted(self) -> list[int]:
        """Mark runs left "running" by processes that no longer exist as "interrupted"."""
        with self._db() as db:
            rows = db.execute("SELECT run_id, pid, host, proc_start FROM runs WHERE status = 'running'").fetchall()
        dead = [r["run_id"] for r in rows if not process_alive(r["pid"], r["host"], r["proc_start"])]
        for run_id in dead:
            with self._db() as db:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', finished = ?, message = ?, "
                    "error = COALESCE(error, '') || ? WHERE run_id = ? AND status = 'running'",
                    (time.time(), "its process ended before it finished; rerun it to resume",
                     "the process running this run ended (killed or crashed) before it finished", run_id),
                )
        return dead

    def forget_run(self, run_id: int) -> bool:
        """Remove a run that ended without a result (failed, interrupted, cancelled) from the registry;
        its checkpoints stay (a later run of the same key resumes from them). False for any other run."""
        with self._db() as db:
            cur = db.execute("DELETE FROM runs WHERE run_id = ? AND status IN ('failed', 'interrupted', 'cancelled')", (run_id,))
            return cur.rowcount == 1

    def request_cancel(self, run_id: int) -> str:
        """Cancel a run: a queued one at once, a running one at its next progress report.
        Returns the run's status afterwards."""
        with self._db() as db:
            db.execute("UPDATE runs SET status = 'cancelled', finished = ?, message = 'cancelled before it started' "
                       "WHERE run_id = ? AND status = 'queued'", (time.time(), run_id))
            db.execute("UPDATE runs SET cancel_requested = 1, message = 'cancelling…' WHERE run_id = ? AND status = 'running'",
                       (run_id,))
            row = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else "missing"

    def cancel_requested(self, run_id: int) -> bool:
        with self._db() as db:
            row = db.execute("SELECT cancel_requested FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def requeue(self, run_id: int) -> bool:
        """Put an interrupted, failed or cancelled run back in the queue (it resumes from its checkpoints)."""
        with self._db() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'queued', cancel_requested = 0, progress = 0, error = NULL, finished = NULL, "
                "wall_s = NULL, message = 'queued again' WHERE run_id = ? AND status IN ('interrupted', 'failed', 'cancelled')",
                (run_id,),
            )
            return cur.rowcount == 1

    def count(self, statuses: tuple[str, ...]) -> int:
        marks = ",".join("?" * len(statuses))
        with self._db() as db:
            return int(db.execute(f"SELECT COUNT(*) FROM runs WHERE status IN ({marks})", statuses).fetchone()[0])

    def runs(self, limit: int = 200, probe: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM runs" + (" WHERE probe = ?" if probe else "") + " ORDER BY run_id DESC LIMIT ?"
        args = (probe, limit) if probe else (limit,)
        with self._db() as db:
            return [dict(r) for r in db.execute(q, args).fetchall()]

    def request_of(self, run_id: int) -> dict[str, Any] | None:
        """A queued run's request as it was asked (what a retry runs again), or None."""
        row = self.get_run(run_id)
        if row is None:
            return None
        if row.get("request"):
            return json.loads(row["request"])
        return {"probe": row["probe"], "model": row["model"], "corpus": row["corpus"], "config": json.loads(row["config"] or "{}")}

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None
