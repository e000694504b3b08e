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

import errno
import fcntl
import hashlib
import json
import os
import random
import shutil
import socket
import sqlite3
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import psutil

from workbench.errors import CorruptResultError, StoreUnavailableError
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


MAX_RUN_ID = 2**63 - 1  # SQLite's largest integer


def parse_run_id(value: Any) -> int | None:
    """A run id from what a caller holds (an int, or a string of ASCII digits from an address or a
    form), or None when it cannot be one: not a number, a bool, a digit of another script ('²'),
    zero or negative, or beyond SQLite's 64-bit range."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        v = value.strip()
        if not (0 < len(v) <= 19 and v.isascii() and v.isdigit()):
            return None
        value = int(v)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or not 0 < value <= MAX_RUN_ID:
        return None
    return value


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


_HELD: dict[tuple[str, str, str, int], int] = {}  # (store, probe, key, thread) claims held here, with their depth
SCHEMA_ATTEMPTS = 12  # tries to create or upgrade the schema while another process holds SQLite's lock (about 40 s in all)


class RegistryCorrupt(sqlite3.DatabaseError):
    """The registry opened but failed its integrity check."""


def _is_corruption(e: BaseException) -> bool:
    """Whether a registry error means the file itself is damaged (the only case that quarantines)."""
    if isinstance(e, RegistryCorrupt):
        return True
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _is_busy(e: BaseException) -> bool:
    name = getattr(e, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(e)


def _free_bytes(path: Path) -> int:
    """Bytes free for this user on `path`'s file system (a large number when it cannot be told)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _inside(path: Path, root: Path) -> bool:
    """Whether `path`, all links resolved, lies inside `root`."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


class ResultStore:
    """Results under `<root>/results/<probe>/<key>/` and the registry in `<root>/registry.sqlite`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else store_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailableError(f"cannot create the store {self.root}: {e.strerror or e}") from None
        # A store on a read-only file system (or one this user may not write) can still be read.
        self.read_only = not os.access(self.root, os.W_OK)
        self._open_registry()
        if not self.read_only:
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
        """The stored result, verified against its manifest and against the key it was asked for.

        A result directory that is a link, or that holds a result computed for another key (copied
        or linked from elsewhere), is refused like a corrupt one: moved to the quarantine folder,
        and CorruptResultError is raised.
        """
        path = self.path(probe, key)
        try:
            if path.is_symlink() or not _inside(path, self.root):
                raise CorruptResultError(f"{path} is a link to {os.path.realpath(path)}, not a result written into this store")
            result = result_cls.load(path)
            stored_key = result.meta.get("key")
            if stored_key != key:
                raise CorruptResultError(f"{path} holds the result of key {str(stored_key)[:40]!r}, not {key!r} "
                                         "(copied or linked from another key)")
            return result
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
        """Move a result directory (or a link in its place) aside to `<root>/quarantine/` with the
        reason; warn once. The reason is written beside what was moved, inside the store: never
        through a link. A store that cannot be written is left as it is (the result is still
        refused)."""
        src = self.path(probe, key)
        if not os.path.lexists(src):
            return None
        if self.read_only:
            warnings.warn(f"stored result {probe}/{key} is refused ({reason}); the store is read-only, so it stays where it is",
                          stacklevel=2)
            return None
        dest = self.root / "quarantine" / probe / f"{key}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:
            dest.mkdir(parents=True)
            os.rename(src, dest / ("link" if src.is_symlink() else "result"))
        except OSError:  # another process moved it first, or the disk cannot take even a directory
            return None
        try:
            (dest / "QUARANTINED.txt").write_text(reason + "\n")
        except OSError:
            pass  # the move is what matters; a full disk may refuse the note
        warnings.warn(f"stored result {probe}/{key} is refused ({reason}); moved to {dest} and will be computed again",
                      stacklevel=2)
        return dest

    @contextmanager
    def computing(self, probe: str, key: str, waiting: Callable[[float], None] | None = None) -> Iterator[None]:
        """Hold the claim on (probe, key) while its result is looked up and, if absent, computed.

        Two processes asking for one key at once (two CLI runs, a CLI run and a worker) take turns:
        the second waits here, calling `waiting(seconds_waited)` about once a second (it may raise
        to give up, e.g. on Cancel), and then finds the first one's result stored and reuses it.
        The claim is a lock on `<root>/locks/<probe>/<key>.lock`, released by the kernel when its
        process ends, however it ends. Re-entrant within a process; none on a read-only store."""
        ident = (str(self.root.resolve()), probe, key, threading.get_ident())
        if self.read_only or _HELD.get(ident):
            _HELD[ident] = _HELD.get(ident, 0) + 1
            try:
                yield
            finally:
                _HELD[ident] -= 1
            return
        lock = self.root / "locks" / probe / f"{key}.lock"
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreUnavailableError(f"the store {self.root} cannot take the claim on {probe}/{key}: {e.strerror or e}") from None
        try:
            t0, last = time.monotonic(), 0.0
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - t0
                    if waiting is not None and waited - last >= 1.0:
                        last = waited
                        waiting(waited)
                    time.sleep(0.1)
            _HELD[ident] = 1
            try:
                yield
            finally:
                _HELD.pop(ident, None)
        finally:
            os.close(fd)

    def scratch(self, probe: str, key: str) -> Path:
        """A per-key directory for checkpoints of an unfinished run (kept across restarts)."""
        p = self.root / "scratch" / probe / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ----- registry -----
    def _open_registry(self) -> None:
        """Create or upgrade the registry's schema (once per store, under a file lock, retried while
        another process holds SQLite's write lock). Only real corruption (not a database, a
        malformed image, a failed `quick_check`) moves the registry to quarantine; a full disk, a
        read-only file system or an I/O error raise StoreUnavailableError and touch nothing."""
        if self.read_only:
            self._check_readable()
            return
        with self._schema_lock():
            for attempt in range(SCHEMA_ATTEMPTS):
                try:
                    self._init_schema()
                    return
                except sqlite3.DatabaseError as e:
                    if _is_corruption(e):
                        self._recover_registry(str(e))
                        return
                    if _is_busy(e) and attempt + 1 < SCHEMA_ATTEMPTS:
                        time.sleep(min(2.0, 0.02 * 2**attempt) * (0.5 + random.random()))
                        continue
                    raise self._unavailable(e) from None

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """An exclusive lock on `<root>/.registry.lock` while the schema is created or upgraded, so
        processes opening a fresh store at once take turns instead of failing on SQLite's lock."""
        try:
            fd = os.open(self.root / ".registry.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # cannot create even an empty file (full or odd file system): rely on the retries
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _init_schema(self) -> None:
        with self._raw_db() as db:
            mode = db.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RegistryCorrupt(f"integrity check failed: {check}")
            db.executescript(SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(runs)")}
            for name, decl in EXTRA_COLUMNS.items():
                if name not in have:
                    try:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
                    except sqlite3.OperationalError as e:  # another process opening the registry added it first
                        if "duplicate column" not in str(e):
                            raise

    def _check_readable(self) -> None:
        """A read-only store's registry must at least open (or be absent: no runs yet)."""
        if not self.registry_path.exists():
            return
        try:
            with self._raw_db() as db:
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except sqlite3.DatabaseError as e:
            raise self._unavailable(e) from None

    def _unavailable(self, e: BaseException) -> StoreUnavailableError:
        """A one-line error for a registry that cannot be used now; says what and where."""
        name = getattr(e, "sqlite_errorname", "") or ""
        code = getattr(e, "errno", None)
        if name.startswith("SQLITE_FULL") or code == errno.ENOSPC or _free_bytes(self.root) < 1 << 20:
            what = "its disk is full; free some space and run again"
        elif name.startswith("SQLITE_READONLY") or code == errno.EROFS or self.read_only:
            what = "it is read-only (results can be read; runs cannot be recorded)"
        elif _is_busy(e):
            what = "another process has held its lock for more than 30 s"
        elif name.startswith("SQLITE_CANTOPEN"):
            what = "the registry file cannot be opened (permissions, or a missing directory)"
        else:
            what = f"the disk reported an error ({e}); is it full or unmounted?"
        return StoreUnavailableError(f"the store {self.root} cannot be used: {what}; nothing in it was changed")

    def _recover_registry(self, reason: str) -> None:
        """Move an unreadable registry aside and rebuild it from the stored results' metadata."""
        dest = self.root / "quarantine" / f"registry-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
        try:  # the note first: a disk that cannot take it must not see the registry moved
            dest.mkdir(parents=True, exist_ok=True)
            (dest / "QUARANTINED.txt").write_text(reason + "\n")
        except OSError as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise self._unavailable(e) from None
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(self.registry_path) + suffix)
            if p.exists():
                os.rename(p, dest / p.name)
        try:
            self._init_schema()
        except sqlite3.DatabaseError as e:
            raise self._unavailable(e) from None
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
    def _raw_db(self) -> Iterator[sqlite3.Connection]:
        """A connection to the registry (read-only when the store is); sqlite3 errors propagate."""
        if self.read_only:
            if self.registry_path.exists():
                uri = f"{self.registry_path.resolve().as_uri()}?mode=ro"
                try:
                    con = sqlite3.connect(uri, uri=True, timeout=30)
                    con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
                except sqlite3.OperationalError:  # a WAL registry whose -shm cannot be created here
                    con = sqlite3.connect(f"{self.registry_path.resolve().as_uri()}?immutable=1", uri=True)
            else:  # no registry yet: an empty one in memory
                con = sqlite3.connect(":memory:")
                con.executescript(SCHEMA)
                for name, decl in EXTRA_COLUMNS.items():
                    con.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        else:
            con = sqlite3.connect(self.registry_path, timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A registry connection whose I/O, full-disk, read-only and lock errors become one
        StoreUnavailableError (corruption errors propagate as sqlite3 errors)."""
        try:
            with self._raw_db() as con:
                yield con
        except sqlite3.DatabaseError as e:
            if _is_corruption(e):
                raise
            raise self._unavailable(e) from None

    def start_run(self, key: str, probe: str, model: str, numerics: str, corpus: str | None, config: dict, code_version: str,
                  status: str = "running", world_size: int = 1, label: str | None = None,
                  request_extra: dict[str, Any] | None = None) -> int:
        now = time.time()
        proc = this_process() if status == "running" else {"pid": None, "host": None, "proc_start": None}
        config_json = json.dumps(config, default=_json_default, sort_keys=True)
        request = json.dumps({"probe": probe, "model": model, "corpus": corpus, "config": json.loads(config_json),
                              **(request_extra or {})}) if status == "queued" else None
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
        """Mark runs left "running" by processes that no longer exist as "interrupted", or as "done"
        when their result was saved under their key (a process that saved its result and then
        could not write the registry: a full disk at the very end)."""
        with self._db() as db:
            rows = db.execute("SELECT run_id, pid, host, proc_start, probe, key, started FROM runs WHERE status = 'running'").fetchall()
        dead = [r for r in rows if not process_alive(r["pid"], r["host"], r["proc_start"])]
        for row in dead:
            run_id = row["run_id"]
            saved = self._saved_meta(row["probe"], row["key"], since=row["started"])
            if saved is not None:
                with self._db() as db:
                    db.execute(
                        "UPDATE runs SET status = 'done', progress = 1.0, finished = ?, wall_s = ?, artifact = ?, message = ? "
                        "WHERE run_id = ? AND status = 'running'",
                        (self.path(row["probe"], row["key"]).stat().st_mtime, saved.get("wall_s"),
                         str(self.path(row["probe"], row["key"])),
                         "finished; recorded when the store was next opened (the registry could not be written then)", run_id),
                    )
                continue
            with self._db() as db:
                db.execute(
                    "UPDATE runs SET status = 'interrupted', finished = ?, message = ?, "
                    "error = COALESCE(error, '') || ? WHERE run_id = ? AND status = 'running'",
                    (time.time(), "its process ended before it finished; rerun it to resume",
                     "the process running this run ended (killed or crashed) before it finished", run_id),
                )
        return [r["run_id"] for r in dead]

    def _saved_meta(self, probe: str | None, key: str | None, since: float | None = None) -> dict[str, Any] | None:
        """The meta of the result saved under (probe, key) (after `since`, when given), when one is
        there and says it is that key's (not yet verified against its manifest: `load` does that
        when it is read)."""
        if not probe or not key:
            return None
        rj = self.path(probe, key) / RESULT_FILE
        try:
            if since is not None and rj.stat().st_mtime < float(since):
                return None  # an older result under the key; this run did not finish
            meta = json.loads(rj.read_text())["fields"]["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return meta if isinstance(meta, dict) and meta.get("key") == key else None

    def forget_run(self, run_id: int) -> bool:
        """Remove a run that ended without a result (failed, interrupted, cancelled) from the registry;
        its checkpoints stay (a later run of the same key resumes from them). False for any other run."""
        run_id = parse_run_id(run_id)
        if run_id is None:
            return False
        with self._db() as db:
            cur = db.execute("DELETE FROM runs WHERE run_id = ? AND status IN ('failed', 'interrupted', 'cancelled')", (run_id,))
            return cur.rowcount == 1

    def request_cancel(self, run_id: int) -> str:
        """Cancel a run: a queued one at once, a running one at its next progress report.
        Returns the run's status afterwards."""
        run_id = parse_run_id(run_id)
        if run_id is None:
            return "missing"
        with self._db() as db:
            db.execute("UPDATE runs SET status = 'cancelled', finished = ?, message = 'cancelled before it started' "
                       "WHERE run_id = ? AND status = 'queued'", (time.time(), run_id))
            db.execute("UPDATE runs SET cancel_requested = 1, message = 'cancelling…' WHERE run_id = ? AND status = 'running'",
                       (run_id,))
            row = db.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row["status"] if row else "missing"

    def cancel_requested(self, run_id: int) -> bool:
        run_id = parse_run_id(run_id)
        if run_id is None:
            return False
        with self._db() as db:
            row = db.execute("SELECT cancel_requested FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def requeue(self, run_id: int) -> bool:
        """Put an interrupted, failed or cancelled run back in the queue (it resumes from its checkpoints)."""
        run_id = parse_run_id(run_id)
        if run_id is None:
            return False
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
        """The registry row of a run, or None (also for anything that cannot be a run id)."""
        run_id = parse_run_id(run_id)
        if run_id is None:
            return None
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None
