"""Background runs for the dashboard: the UI never computes a probe itself.

`JobManager.submit` checks a request against what the server offers (`check_request`), registers
it in the store as a *queued* run and makes sure a worker process (`python -m dashboards.worker`)
is running. Workers take queued runs from the store with one atomic claim, so any number of
workers on one store never run a job twice, and a queued run survives a restart of the app.
Progress, results and failures are recorded in the store, where the Home page reads them.

A worker that dies takes no run with it silently: the run it held becomes "interrupted" (its
pid is gone) and can be retried; if the worker cannot start at all, the runs this app queued
become "failed" with the exit code and the log's path. A running job can be cancelled: the probe
stops at its next progress report, or after CANCEL_GRACE_S the worker is killed.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from dashboards.base import check_model_name
from workbench.config import check_bounds, config_fields, config_from_dict
from workbench.errors import ConfigError, WorkbenchError
from workbench.models import offline_n_layers
from workbench.models.info import DTYPES
from workbench.probe_api import Spec, StudySpec, describe_config, get_spec
from workbench.resources import check_offered_sae, offered_corpora, resource_fields
from workbench.store import ACTIVE, ResultStore, parse_run_id

log = logging.getLogger("workbench.dashboard")
MAX_ACTIVE = 20  # queued + running runs the dashboard accepts at once
CANCEL_GRACE_S = 10.0  # a running job that has not stopped this long after Cancel is killed
MAX_NAME_CHARS = 200
STUDY_MODEL = "study"  # what a study's request and row show as its model (its config names its own)


@dataclass
class RunRequest:
    """What a queued run asks for, as stored in its registry row until a worker takes it."""

    probe: str
    model: str
    corpus: str | None
    config: dict[str, Any]
    numerics: str
    dtype: str = "float32"  # the model's precision (one of workbench.models.info.DTYPES)


def _run_id(value: Any) -> int:
    """A run id from a request, or ConfigError saying that it is not one."""
    run_id = parse_run_id(value)
    if run_id is None:
        raise ConfigError(f"{str(value)[:40]!r} is not a run id")
    return run_id


def corpus_names() -> list[str]:

    return offered_corpora()


def check_request(probe: Any, model: Any, corpus: Any, config: Any, dtype: Any = "float32") -> RunRequest:
    """Validate a run request from the UI against what the server offers.

    Only registered probes, the offline model names, the built-in corpora, SAEs the workbench
    trained or SAE Lens lists, and numbers within each field's declared range pass. Anything
    else, of any type, raises ConfigError with a message that names the field.
    """

    if not isinstance(probe, str) or len(probe) > MAX_NAME_CHARS:
        raise ConfigError("choose a probe")
    spec = get_spec(probe)  # unknown names raise ConfigError listing the known probes and studies
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ConfigError(f"precision must be one of {', '.join(DTYPES)}, got {str(dtype)[:40]!r}")
    if isinstance(spec, StudySpec):  # its models and corpora are config fields, checked like every resource field
        cfg = check_config(spec, config, None)
        return RunRequest(spec.name, STUDY_MODEL, None, asdict(cfg), "-", dtype)
    check_model_name(model)
    if spec.needs_corpus:
        if not isinstance(corpus, str) or corpus not in corpus_names():
            raise ConfigError(f"unknown corpus {str(corpus)[:80]!r}; choose one of: {', '.join(corpus_names())}")
    else:
        corpus = None
    cfg = check_config(spec, config, _offline_n_layers(model))
    return RunRequest(spec.name, model, corpus, asdict(cfg), spec.numerics, dtype)


def check_config(spec: Spec, config: Any, n_layers: int | None) -> Any:
    """The config of a probe or study built from a request's mapping, or ConfigError naming the
    field: unknown fields, wrong types, numbers outside their declared range, and, in every field
    that names a resource (`setting(names=...)`), anything the server does not offer: corpora
    outside the built-in ones, SAEs other than `trained:<layer>` (a layer of a model with
    `n_layers`) or a listed release id, models outside the offline names. Never a path."""
    if config is None:
        config = {}
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise ConfigError(f"the config must be a mapping of field names to values, got {type(config).__name__}")
    owner = spec.config_cls.__name__
    try:
        cfg = config_from_dict(spec.config_cls, config)
    except WorkbenchError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a validate() that is not ours to word
        raise ConfigError(f"{owner}: {e}") from None
    check_bounds(cfg)
    for name, kind in resource_fields(spec.config_cls).items():
        value = getattr(cfg, name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in values:
            try:
                if kind == "corpus" and v not in corpus_names():
                    raise ConfigError(f"corpus {str(v)[:80]!r} is not offered here; choose from: {', '.join(corpus_names())}")
                if kind == "sae":
                    check_offered_sae(v, n_layers)
                if kind == "model":
                    check_model_name(v)
            except ConfigError as e:
                raise ConfigError(f"{owner}.{name}: {e}") from None
    return cfg


def _offline_n_layers(model: str) -> int | None:

    return offline_n_layers(model)


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


def form_fields(spec: Spec) -> list[FieldSpec]:
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


def form_to_config(spec: Spec, values: dict[str, Any]) -> dict[str, Any]:
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
    """Queues runs in the store and keeps one long-lived worker process taking them."""

    def __init__(self, store: ResultStore, python: str | None = None, max_active: int = MAX_ACTIVE, device: str | None = None):
        self.store = store
        self.device = device  # the worker's device (None: CUDA when present, else the CPU)
        self.python = python or sys.executable
        self.max_active = max_active
        self.log_path = Path(store.root) / "worker.log"
        self._proc: subprocess.Popen | None = None
        self._queued_here: set[int] = set()
        self._cancels: dict[int, float] = {}
        self._lock = threading.Lock()
        atexit.register(self.shutdown)

    def submit(self, probe: Any, model: Any, corpus: Any, config: Any, dtype: Any = "float32") -> int:
        """Check and queue a run; returns its run id at once (a worker does the work)."""
        req = check_request(probe, model, corpus, config, dtype)
        active = self.store.count(ACTIVE)
        if active >= self.max_active:
            raise ConfigError(f"the queue is full ({active} runs waiting or running, at most {self.max_active}); "
                              "wait for one to finish or cancel one")
        run_id = self.store.start_run(
            key="queued", probe=req.probe, model=req.model, numerics=req.numerics, corpus=req.corpus,
            config=req.config, code_version="", status="queued", request_extra={"dtype": req.dtype},
        )
        self.store.update_run(run_id, message="waiting for the worker")
        with self._lock:
            self._queued_here.add(run_id)
            self._ensure_worker()
        return run_id

    def cancel(self, run_id: int) -> str:
        """Cancel a queued run at once, a running one at its next progress report (or kill it after
        CANCEL_GRACE_S); returns the status now."""
        run_id = _run_id(run_id)
        status = self.store.request_cancel(run_id)
        if status == "running":
            with self._lock:
                self._cancels.setdefault(run_id, time.monotonic())
        return status

    def retry(self, run_id: int) -> bool:
        """Queue an interrupted, failed or cancelled run again; it resumes from its checkpoints."""
        run_id = _run_id(run_id)
        ok = self.store.requeue(run_id)
        if ok:
            with self._lock:
                self._queued_here.add(run_id)
                self._ensure_worker()
        return ok

    def start_worker(self) -> None:
        """Start the worker now (it imports torch and the probes, which takes a while) instead of on the first run."""
        with self._lock:
            self._ensure_worker()

    def _ensure_worker(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            self._reap()
            env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
            root = Path(__file__).resolve().parent.parent
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
            logf = open(self.log_path, "a")
            self._proc = subprocess.Popen(
                [self.python, "-m", "dashboards.worker", "--store", str(self.store.root)]
                + (["--device", self.device] if self.device else []),
                stdin=subprocess.PIPE, stdout=logf, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(root),
            )
            logf.close()
            log.info("started run worker (pid %d), log: %s", self._proc.pid, self.log_path)
        return self._proc

    def _reap(self) -> None:
        """After the worker exited: the run it held is marked interrupted (its pid is gone); if it
        exited without taking anything, the runs queued here cannot run and are marked failed."""
        if self._proc is None:
            return
        code = self._proc.poll()
        pid = self._proc.pid
        self._proc = None
        self.store.mark_interrupted()
        held = [r for r in self.store.runs(limit=500) if r["pid"] == pid]
        if not held and code not in (0, None):
            for run_id in sorted(self._queued_here):
                row = self.store.get_run(run_id)
                if row is not None and row["status"] == "queued":
                    self.store.finish_run(run_id, "failed", error=f"the worker process could not start (exit code {code}); see {self.log_path}")
            self._queued_here.clear()

    def check(self) -> None:
        """Called by the Home page's poll: notice a dead worker, enforce cancellations, restart the
        worker while runs are waiting."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is not None:
                self._reap()
            now = time.monotonic()
            for run_id, asked in list(self._cancels.items()):
                row = self.store.get_run(run_id)
                if row is None or row["status"] != "running":
                    del self._cancels[run_id]
                elif now - asked > CANCEL_GRACE_S and self._proc is not None and row["pid"] == self._proc.pid:
                    log.warning("run %s did not stop within %.0f s of Cancel; stopping its worker", run_id, CANCEL_GRACE_S)
                    self._proc.kill()
                    self._proc.wait(timeout=10)
                    self._proc = None
                    self.store.finish_run(run_id, "cancelled", error=f"cancelled (its worker was stopped after {CANCEL_GRACE_S:.0f} s)")
                    del self._cancels[run_id]
            self._queued_here = {r for r in self._queued_here if (row := self.store.get_run(r)) is not None and row["status"] in ACTIVE}
            if self._queued_here and (self._proc is None or self._proc.poll() is not None):
                self._ensure_worker()

    def active(self) -> list[int]:
        """Runs this app queued that are still waiting or running."""
        with self._lock:
            return sorted(self._queued_here)

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
