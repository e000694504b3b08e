"""The result store: results keyed by everything that determines them, plus a run registry.

A key is the hash of (model id + numerics mode, corpus id + slice, probe name + config, code
version). A changed input gives a new key, so an old result is never silently reused. Results are
directories written atomically (see `workbench.results`). The registry is a SQLite table of every
run: its key, probe, model, corpus, config, status, progress, timings and artifact path.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from workbench.io import _json_default
from workbench.paths import store_dir
from workbench.results import R

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
    status TEXT NOT NULL,           -- queued | running | done | failed | reused
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


def result_key(model_key: str, corpus_key: str | None, probe: str, config: dict[str, Any], code_version: str) -> str:
    """Hash of everything that determines a result (canonical JSON, SHA-256, 20 hex chars)."""
    blob = json.dumps(
        {"model": model_key, "corpus": corpus_key, "probe": probe, "config": config, "code": code_version},
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ResultStore:
    """Results under `<root>/results/<probe>/<key>/` and the registry in `<root>/registry.sqlite`."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else store_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    # ----- results -----
    def path(self, probe: str, key: str) -> Path:
        return self.root / "results" / probe / key

    def has(self, probe: str, key: str) -> bool:
        return (self.path(probe, key) / "result.json").exists()

    def load(self, probe: str, key: str, result_cls: type[R]) -> R:
        return result_cls.load(self.path(probe, key))

    def save(self, probe: str, key: str, result: Any) -> Path:
        return result.save(self.path(probe, key))

    def scratch(self, probe: str, key: str) -> Path:
        """A per-key directory for checkpoints of an unfinished run (kept across restarts)."""
        p = self.root / "scratch" / probe / key
        p.mkdir(parents=True, exist_ok=True)
        return p

    # ----- registry -----
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.root / "registry.sqlite", timeout=30)
        con.row_factory = sqlite3.Row
        try:
            with con:
                yield con
        finally:
            con.close()

    def start_run(self, key: str, probe: str, model: str, numerics: str, corpus: str | None, config: dict, code_version: str, status: str = "running") -> int:
        now = time.time()
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO runs (key, probe, model, numerics, corpus, config, code_version, status, created, started)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (key, probe, model, numerics, corpus, json.dumps(config, default=_json_default, sort_keys=True), code_version, status, now, now),
            )
            return int(cur.lastrowid)

    def update_run(self, run_id: int, **fields: Any) -> None:
        allowed = {"status", "progress", "message", "started", "finished", "wall_s", "artifact", "summary", "error",
                   "key", "model", "numerics", "corpus", "config", "code_version"}
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
        now = time.time()
        with self._db() as db:
            row = db.execute("SELECT started FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        wall = now - row["started"] if row and row["started"] else None
        fields: dict[str, Any] = dict(status=status, finished=now, wall_s=wall, artifact=artifact,
                                      summary=summary if summary is not None else "", error=error)
        if status in ("done", "reused"):
            fields["progress"] = 1.0
        self.update_run(run_id, **fields)

    def runs(self, limit: int = 200, probe: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM runs" + (" WHERE probe = ?" if probe else "") + " ORDER BY run_id DESC LIMIT ?"
        args = (probe, limit) if probe else (limit,)
        with self._db() as db:
            return [dict(r) for r in db.execute(q, args).fetchall()]

    def get_run(self, run_id: int) -> dict[str, Any] | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return dict(row) if row else None
