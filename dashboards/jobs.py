"""Background runs for the dashboard: the UI never computes a probe itself.

`JobManager.submit` checks a request (probe, model and corpus names from the registries, config
fields through `config_from_dict`), registers it in the store as a *queued* run and hands its id
to a worker process (`python -m dashboards.worker`). The worker loads models once, runs queued
runs one after another through `run_probe(..., run_id=...)`, and records progress, results and
failures in the store, where the Home page reads them. A worker that dies takes no run with it
silently: its unfinished runs are marked failed with the exit code and the log's path.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.config import config_fields, config_from_dict
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, describe_config, get_probe
from workbench.store import ResultStore

log = logging.getLogger("workbench.dashboard")
ACTIVE = ("queued", "running")


@dataclass
class RunRequest:
    """What a queued run asks for, as stored in its registry row until the worker takes it."""

    probe: str
    model: str
    corpus: str | None
    config: dict[str, Any]
    numerics: str


def corpus_names() -> list[str]:
    from workbench.corpora import known_corpora

    return known_corpora()


def check_request(probe: Any, model: Any, corpus: Any, config: dict[str, Any] | None) -> RunRequest:
    """Validate a run request from the UI; raises ConfigError with a readable message."""
    from dashboards.base import check_model_name

    if not isinstance(probe, str):
        raise ConfigError("choose a probe")
    spec = get_probe(probe)  # unknown names raise ConfigError listing the known ones
    check_model_name(model)
    if spec.needs_corpus:
        if corpus not in corpus_names():
            raise ConfigError(f"unknown corpus {str(corpus)[:80]!r}; choose one of: {', '.join(corpus_names())}")
    else:
        corpus = None
    cfg = config_from_dict(spec.config_cls, config or {})
    from dataclasses import asdict

    return RunRequest(spec.name, model, corpus, asdict(cfg), spec.numerics)


# ----- config forms -----
@dataclass
class FieldSpec:
    """How one config field is shown in a form."""

    name: str
    type: str
    default: Any
    widget: str  # bool | choice | number | text
    choices: list[Any] | None = None
    optional: bool = False

    def initial(self) -> Any:
        """The widget's starting value (text widgets show JSON for lists and mappings)."""
        if self.widget in ("bool", "choice", "number"):
            return self.default
        if self.default is None:
            return ""
        if isinstance(self.default, (list, tuple, dict)):
            return json.dumps(list(self.default) if isinstance(self.default, tuple) else self.default)
        return str(self.default)


def form_fields(spec: ProbeSpec) -> list[FieldSpec]:
    """One FieldSpec per config field, from `describe_config` and the field's annotation."""
    types = config_fields(spec.config_cls)
    out = []
    for f in describe_config(spec):
        t = types[f["name"]]
        args = [a for a in typing.get_args(t) if a is not type(None)]
        optional = type(None) in typing.get_args(t)
        base = args[0] if optional and len(args) == 1 else t
        if base is bool:
            widget, choices = "bool", None
        elif typing.get_origin(base) is typing.Literal:
            widget, choices = "choice", list(typing.get_args(base))
        elif base in (int, float) and not optional:
            widget, choices = "number", None
        else:
            widget, choices = "text", None
        out.append(FieldSpec(f["name"], f["type"], f["default"], widget, choices, optional))
    return out


def form_to_config(spec: ProbeSpec, values: dict[str, Any]) -> dict[str, Any]:
    """Form values -> config dict for `config_from_dict` (which coerces and validates them).

    An empty text box means None for optional fields and the default otherwise.
    """
    fields = {f.name: f for f in form_fields(spec)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            raise ConfigError(f"unknown field {name!r} for {spec.name}")
        if value is None or (isinstance(value, str) and not value.strip()):
            if f.optional:
                out[name] = None
            continue
        out[name] = value.strip() if isinstance(value, str) else value
    return out


# ----- the manager -----
class JobManager:
    """Queues runs in the store and feeds their ids to one long-lived worker process."""

    def __init__(self, store: ResultStore, python: str | None = None):
        self.store = store
        self.python = python or sys.executable
        self.log_path = Path(store.root) / "worker.log"
        self._proc: subprocess.Popen | None = None
        self._sent: set[int] = set()
        self._lock = threading.Lock()
        atexit.register(self.shutdown)

    def submit(self, probe: Any, model: Any, corpus: Any, config: dict[str, Any] | None) -> int:
        """Check and queue a run; returns its run id at once (the worker does the work)."""
        req = check_request(probe, model, corpus, config)
        run_id = self.store.start_run(
            key="queued", probe=req.probe, model=req.model, numerics=req.numerics, corpus=req.corpus,
            config=req.config, code_version="", status="queued",
        )
        self.store.update_run(run_id, message="waiting for the worker", started=None)
        self._send(run_id)
        return run_id

    def start_worker(self) -> None:
        """Start the worker now (it imports torch and the probes, which takes a while) instead of on the first run."""
        with self._lock:
            self._ensure_worker()

    def _send(self, run_id: int) -> None:
        with self._lock:
            proc = self._ensure_worker()
            try:
                assert proc.stdin is not None
                proc.stdin.write(f"{run_id}\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as e:
                self.store.finish_run(run_id, "failed", error=f"could not reach the worker: {e}")
                return
            self._sent.add(run_id)

    def _ensure_worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._reap()
            env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
            root = Path(__file__).resolve().parent.parent
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            logf = open(self.log_path, "a")
            self._proc = subprocess.Popen(
                [self.python, "-m", "dashboards.worker", "--store", str(self.store.root)],
                stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(root),
            )
            logf.close()
            log.info("started run worker (pid %d), log: %s", self._proc.pid, self.log_path)
        return self._proc

    def _reap(self) -> None:
        """Mark the unfinished runs of a dead worker as failed."""
        if self._proc is None:
            return
        code = self._proc.poll()
        for run_id in sorted(self._sent):
            row = self.store.get_run(run_id)
            if row is not None and row["status"] in ACTIVE:
                self.store.finish_run(run_id, "failed", error=f"the worker process exited (code {code}) before this run finished; see {self.log_path}")
        self._sent.clear()
        self._proc = None

    def check(self) -> None:
        """Called by the Home page's poll: notice a dead worker and forget finished runs."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._reap()
            done = {r for r in self._sent if (row := self.store.get_run(r)) is None or row["status"] not in ACTIVE}
            self._sent -= done

    def active(self) -> list[int]:
        with self._lock:
            return sorted(self._sent)

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def shutdown(self, timeout: float = 5.0) -> None:
        """Close the worker's input (it exits after its current run) and wait a little for it."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=timeout)
        except (subprocess.TimeoutExpired, OSError):
            proc.terminate()
