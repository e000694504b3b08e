"""Run a probe or a study through the store: look up its key, reuse a stored result only when
every input matches (and its files verify), otherwise run it, record progress in the registry,
and save the result atomically. This module is the only code that reads or writes results in the
store; probes, studies, experiments and the dashboard all go through it.

The registry row of a run ends in exactly one of: done, reused, failed (the error is recorded,
a failed save included), interrupted (Ctrl-C or a signal; rerunning resumes from the run's
checkpoints) or cancelled (asked for through the registry; noticed at the next progress report).
"""

from __future__ import annotations

import contextvars
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from transformer_lens import HookedTransformer

from workbench.active_run import ActiveRun, current_label, running
from workbench.config import config_from_dict
from workbench.corpora.base import Corpus
from workbench.distributed import broadcast, world
from workbench.errors import ConfigError, RunCancelled, StoreUnavailableError
from workbench.identity import runtime_versions
from workbench.models.info import default_device, model_info, model_key
from workbench.probe_api import (
    ProbeSpec,
    Spec,
    StudySpec,
    code_version,
    get_probe,
    get_spec,
    get_study,
)
from workbench.progress import reporting_to
from workbench.resources import resource_identities
from workbench.results import Result
from workbench.store import FINISHED_OK, ResultStore, result_key
from workbench.scoped import scoped


@dataclass
class RunOutcome:
    result: Result  # on a rank other than 0 of a sharded run that reused a result it cannot read: None
    run_id: int
    key: str
    reused: bool
    path: Path


def resolve_config(spec: Spec, config: Any) -> Any:
    if config is None:
        return config_from_dict(spec.config_cls, {})
    if isinstance(config, Mapping):
        return config_from_dict(spec.config_cls, config)
    if not isinstance(config, spec.config_cls):
        raise ConfigError(f"{spec.kind} {spec.name!r} takes a {spec.config_cls.__name__}, got {type(config).__name__}")
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def probe_key(spec: ProbeSpec, model: HookedTransformer, corpus: Corpus | None, config: Any) -> str:
    """The store key of `spec` run on these inputs (everything that can change its result)."""
    cfg = resolve_config(spec, config)
    corpus_id = corpus.id if corpus is not None else None
    resources = resource_identities(cfg, model, corpus.name if corpus is not None else None)
    return result_key(model_key(model), corpus_id, spec.name, asdict(cfg), code_version(spec), resources, runtime_versions())


INTERRUPTED_HINT = "interrupted; run the same command again to resume from its last checkpoint"


def run_probe(
    probe: str | ProbeSpec,
    model: HookedTransformer,
    corpus: Corpus | None,
    config: Any = None,
    *,
    store: ResultStore | None = None,
    force: bool = False,
    run_id: int | None = None,
) -> RunOutcome:
    """Run (or reuse) a probe's result and record it in the registry.

    `run_id` lets a caller that already registered and claimed a queued run (the dashboard's
    worker) take it over.
    """
    spec = probe if isinstance(probe, ProbeSpec) else get_probe(probe)
    cfg = resolve_config(spec, config)
    info = model_info(model)
    if info.numerics != spec.numerics:
        raise ConfigError(
            f"probe {spec.name!r} is defined on {spec.numerics!r} numerics but the model was loaded with "
            f"{info.numerics!r}; load it with numerics={spec.numerics!r}"
        )
    if spec.needs_corpus and corpus is None:
        raise ConfigError(f"probe {spec.name!r} needs a corpus")
    store = store or ResultStore()
    corpus_id = corpus.id if corpus is not None else None
    try:
        key = probe_key(spec, model, corpus, cfg)
    except BaseException as e:  # a named resource is missing or unreadable: say so in the queued row
        if run_id is not None:
            store.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}")
        raise
    meta = {"model": info.to_dict(), "model_key": model_key(model), "numerics": info.numerics, "corpus": corpus_id}
    out = _run_keyed(store, spec, cfg, key, run_id, force, lambda: spec.run(model, corpus, cfg),
                     row=dict(model=info.id, numerics=info.numerics, corpus=corpus_id), meta=meta)
    _record_part(out.key)
    return out


# The parts of the study (or report) running in this context: every probe run or study made while
# it runs is one of its parts, whether it goes through `StudyParts.run_probe` or calls `run_probe`.
_COMPOSING: contextvars.ContextVar["StudyParts | None"] = contextvars.ContextVar("composing", default=None)


def _record_part(key: str) -> None:
    parts = _COMPOSING.get()
    if parts is not None:
        parts.parts.append(key)


def stored_result(probe: str | ProbeSpec, model: HookedTransformer, corpus: Corpus | None, config: Any = None, *,
                  store: ResultStore | None = None) -> RunOutcome | None:
    """The stored, verified result of this probe on these inputs, or None; never computes and
    records nothing (for views that use another analysis's result only when it exists)."""
    spec = probe if isinstance(probe, ProbeSpec) else get_probe(probe)
    store = store or ResultStore()
    key = probe_key(spec, model, corpus, config)
    result = store.get(spec.name, key, spec.result_cls)
    return None if result is None else RunOutcome(result, -1, key, True, store.path(spec.name, key))


def result_of_run(run_id: int, store: ResultStore | None = None, expect: str | tuple[str, ...] = ()) -> Result:
    """The stored result of a finished run in the registry, verified against its manifest.

    LookupError when the run has no stored result (or is not of the analysis `expect` names);
    CorruptResultError (after moving it to quarantine) when its files do not verify.
    """
    store = store or ResultStore()
    row = store.get_run(run_id)  # None for anything that is not a run id
    if row is None or row["status"] not in FINISHED_OK or not row["artifact"]:
        raise LookupError(f"run {str(run_id)[:40]} has no stored result")
    names = (expect,) if isinstance(expect, str) else tuple(expect)
    if names and row["probe"] not in names:
        raise LookupError(f"run {run_id} is a {row['probe']} run, not {' or '.join(names)}")
    spec = get_spec(row["probe"])
    return store.load(spec.name, row["key"], spec.result_cls)


@dataclass
class StudyParts:
    """What a study's `run(config, ctx)` composes its parts with: probe runs through the store (each
    keyed, reused and registered like any other), stored results, and the run's device. Every
    part's key is collected in `parts`; the study's own key includes them."""

    store: ResultStore
    device: str | None = None
    parts: list[str] = field(default_factory=list)

    def run_probe(self, probe: str | ProbeSpec, model: HookedTransformer, corpus: Corpus | None, config: Any = None) -> RunOutcome:
        return run_probe(probe, model, corpus, config, store=self.store)  # recorded as a part by run_probe

    def stored(self, probe: str | ProbeSpec, model: HookedTransformer, corpus: Corpus | None, config: Any = None) -> RunOutcome | None:
        out = stored_result(probe, model, corpus, config, store=self.store)
        self.parts.append(out.key if out is not None else f"absent:{probe_key(_spec(probe), model, corpus, config)}")
        return out

    def used(self, run_id: int, key: str) -> None:
        """Record a stored result the study found by other means (the registry)."""
        self.parts.append(f"run:{key}")


def _spec(probe: str | ProbeSpec) -> ProbeSpec:
    return probe if isinstance(probe, ProbeSpec) else get_probe(probe)


def run_study(study: str | StudySpec, config: Any = None, *, store: ResultStore | None = None, force: bool = False,
              device: str | None = None, run_id: int | None = None) -> RunOutcome:
    """Run a study (or a report) and store (or reuse) its result.

    The parts always run through `run_probe` (so they are reused when stored and cheap then); the
    study's key is its config (with the identities of the models, corpora and SAEs it names), its
    code and library versions, and the keys of every part it used (each probe run and study made
    while it runs). A stored result under that key is reused; otherwise the new one is saved.
    """
    out = _run_study(study, config, store=store, force=force, device=device, run_id=run_id)
    _record_part(f"{out.key}")  # a study inside a report is one of its parts
    return out


def _run_study(study: str | StudySpec, config: Any, *, store: ResultStore | None, force: bool, device: str | None,
               run_id: int | None) -> RunOutcome:
    spec = study if isinstance(study, StudySpec) else get_study(study)
    cfg = resolve_config(spec, config)
    store = store or ResultStore()
    version = code_version(spec)
    run_id = _register(store, spec, cfg, "pending", run_id, dict(model=spec.kind, numerics="-", corpus=None), version)
    ctx = StudyParts(store, device or default_device())  # the run's one device decision
    t0 = time.time()
    with _recorded(store, run_id):
        with scoped(_COMPOSING, ctx), reporting_to(_progress_callback(store, run_id)):
            result = spec.run(cfg, ctx)
        resources = {**resource_identities(cfg, None, None), "parts": ctx.parts}
        key = result_key(f"{spec.kind}:{spec.name}", None, spec.name, asdict(cfg), version, resources, runtime_versions())
        if world().is_main:
            store.update_run(run_id, key=key)
        path = store.path(spec.name, key)
        reuse, stored = _reuse(store, spec, key, force)
        if reuse:
            _finish(store, run_id, "reused", artifact=str(path), summary=stored.summary() if stored is not None else None)
            return RunOutcome(stored, run_id, key, True, path)
        result.meta.update(_meta(spec, cfg, key, version, t0, {"parts": ctx.parts}))
        if world().is_main:
            store.save(spec.name, key, result)
    _finish(store, run_id, "done", artifact=str(path), summary=result.summary())
    return RunOutcome(result, run_id, key, False, path)


def _register(store: ResultStore, spec: Spec, cfg: Any, key: str, run_id: int | None, row: dict[str, Any], version: str) -> int:
    """A new registry row, or a queued one taken over (it gets its full identity now). In a
    sharded run rank 0 writes the row (with the world size) and every rank gets its id."""
    w = world()
    if not w.is_main:
        return broadcast(None)
    if run_id is None:
        run_id = store.start_run(key, spec.name, row["model"], row["numerics"], row["corpus"], asdict(cfg), version,
                                 world_size=w.size, label=current_label())
    else:
        current = store.get_run(run_id)
        if current is not None and current["status"] == "queued" and store.claim(run_id) is None:
            raise ConfigError(f"run {run_id} was taken by another worker")
        store.update_run(run_id, status="running", key=key, config=asdict(cfg), code_version=version, world_size=w.size, **row)
    return broadcast(run_id)


def _reuse(store: ResultStore, spec: Spec, key: str, force: bool) -> tuple[bool, Result | None]:
    """Whether to reuse the verified stored result under `key`, and that result. Rank 0 decides for
    a sharded run; the other ranks read it from their own view of the store (None where they
    cannot: a node without the shared store)."""
    w = world()
    stored = None if force or not w.is_main else store.get(spec.name, key, spec.result_cls)  # a corrupt one is quarantined
    if not broadcast(stored is not None):
        return False, None
    return True, stored if w.is_main else store.get(spec.name, key, spec.result_cls)


def _finish(store: ResultStore, run_id: int, status: str, **fields: Any) -> None:
    """Record how the run ended (rank 0 alone writes the registry). A registry that cannot be
    written now (a full disk) costs the row, not the result: the run's outcome is returned, a
    note says so, and the row is marked done when the store is next opened (`mark_interrupted`)."""
    if world().is_main:
        try:
            store.finish_run(run_id, status, **fields)
        except StoreUnavailableError as e:
            warnings.warn(f"run {run_id} is {status} and its result is stored at {fields.get('artifact')}, but the registry "
                          f"could not record it ({e}); it is recorded when the store is next opened", stacklevel=2)


def _quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A registry write that must not end a run when the registry cannot be written (None then)."""
    try:
        return fn(*args, **kwargs)
    except StoreUnavailableError:
        return None


def _progress_callback(store: ResultStore, run_id: int) -> Callable[[float, str], None]:
    """Progress into the registry at most once a second; a requested cancellation stops the run there
    (rank 0's progress in a sharded run; its failure ends the other ranks through the launcher)."""
    last = [0.0]
    if not world().is_main:
        return lambda fraction, message: None

    def on_progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or fraction >= 1.0:
            last[0] = now
            _quietly(store.update_run, run_id, progress=fraction, message=message)  # a full disk must not end the run here
            if _quietly(store.cancel_requested, run_id):
                raise RunCancelled(f"run {run_id} was cancelled")

    return on_progress


@contextmanager
def _recorded(store: ResultStore, run_id: int) -> Iterator[None]:
    """Record how a run that did not finish ended: cancelled, interrupted or failed (with the error)."""
    if not world().is_main:
        yield
        return
    try:
        yield
    except RunCancelled as e:
        _quietly(store.finish_run, run_id, "cancelled", error=str(e))
        raise
    except KeyboardInterrupt:
        _quietly(store.finish_run, run_id, "interrupted", error=INTERRUPTED_HINT)
        raise
    except BaseException as e:  # the run's own error is what propagates, whether or not the row can record it
        _quietly(store.finish_run, run_id, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        raise


def _meta(spec: Spec, cfg: Any, key: str, version: str, t0: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {spec.kind: spec.name, "probe": spec.name, **extra, "config": asdict(cfg), "code_version": version,
            "runtime": runtime_versions(), "key": key, "wall_s": time.time() - t0, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _run_keyed(store: ResultStore, spec: Spec, cfg: Any, key: str, run_id: int | None, force: bool,
               compute: Callable[[], Result], row: dict[str, Any], meta: dict[str, Any]) -> RunOutcome:
    """The store protocol of a probe run: register, reuse a verified result, or compute with
    progress and cancellation, save atomically and record how the run ended."""
    version = code_version(spec)
    path = store.path(spec.name, key)
    if store.read_only:  # a store that cannot be written can still answer with what it holds
        stored = None if force else store.get(spec.name, key, spec.result_cls)
        if stored is None:
            raise StoreUnavailableError(f"the store {store.root} is read-only and holds no {spec.name} result for these "
                                        "inputs; point WORKBENCH_STORE at a writable store to compute it")
        return RunOutcome(stored, -1, key, True, path)
    run_id = _register(store, spec, cfg, key, run_id, row, version)
    with _recorded(store, run_id), _claimed(store, spec.name, key, run_id):
        reuse, stored = _reuse(store, spec, key, force)
        if reuse:
            _finish(store, run_id, "reused", artifact=str(path), summary=stored.summary() if stored is not None else None)
            return RunOutcome(stored, run_id, key, True, path)
        t0 = time.time()
        with reporting_to(_progress_callback(store, run_id)), running(ActiveRun(store, spec.name, key, run_id)):
            result = compute()
        result.meta.update(_meta(spec, cfg, key, version, t0, meta))
        if world().is_main:
            store.save(spec.name, key, result)
    _finish(store, run_id, "done", artifact=str(path), summary=result.summary())
    return RunOutcome(result, run_id, key, False, path)


@contextmanager
def _claimed(store: ResultStore, probe: str, key: str, run_id: int) -> Iterator[None]:
    """Rank 0 holds the claim on the key while the result is looked up and computed, so a second
    run of the same key (another CLI run, a worker) waits and then reuses it instead of computing
    it again. While it waits its row says so, and a Cancel stops the wait."""
    if not world().is_main:
        yield
        return
    told = [False]

    def waiting(seconds: float) -> None:
        if not told[0]:
            told[0] = True
            warnings.warn(f"another process is computing {probe} {key}; waiting for it, then its result is reused",
                          stacklevel=2)
        _quietly(store.update_run, run_id, message=f"waiting {seconds:.0f} s for another run computing the same result")
        if _quietly(store.cancel_requested, run_id):
            raise RunCancelled(f"run {run_id} was cancelled")

    with store.computing(probe, key, waiting):
        yield
