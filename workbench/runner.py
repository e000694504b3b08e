"""Run a probe through the store: look up its key, reuse a stored result only when every input
matches (and its files verify), otherwise run it, record progress in the registry, and save the
result atomically.

The registry row of a run ends in exactly one of: done, reused, failed (the error is recorded,
a failed save included), interrupted (Ctrl-C or a signal; rerunning resumes from the run's
checkpoints) or cancelled (asked for through the registry; noticed at the next progress report).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from transformer_lens import HookedTransformer

from workbench.config import config_from_dict
from workbench.corpora.base import Corpus
from workbench.errors import ConfigError, RunCancelled
from workbench.identity import runtime_versions
from workbench.models.info import model_info, model_key
from workbench.probe_api import ProbeSpec, code_version, get_probe
from workbench.progress import reporting_to
from workbench.resources import resource_identities
from workbench.results import Result
from workbench.run_context import RunContext, running
from workbench.store import ResultStore, result_key


@dataclass
class RunOutcome:
    result: Result
    run_id: int
    key: str
    reused: bool
    path: Path


def resolve_config(spec: ProbeSpec, config: Any) -> Any:
    if config is None:
        return config_from_dict(spec.config_cls, {})
    if isinstance(config, Mapping):
        return config_from_dict(spec.config_cls, config)
    if not isinstance(config, spec.config_cls):
        raise ConfigError(f"probe {spec.name!r} takes a {spec.config_cls.__name__}, got {type(config).__name__}")
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
    version = code_version(spec)
    if run_id is None:
        run_id = store.start_run(key, spec.name, info.id, info.numerics, corpus_id, asdict(cfg), version)
    else:  # a queued run (registered with the request only) is taken and gets its full identity now
        row = store.get_run(run_id)
        if row is not None and row["status"] == "queued" and store.claim(run_id) is None:
            raise ConfigError(f"run {run_id} was taken by another worker")
        store.update_run(run_id, status="running", key=key, model=info.id,
                         numerics=info.numerics, corpus=corpus_id, config=asdict(cfg), code_version=version)
    path = store.path(spec.name, key)
    if not force:
        stored = store.get(spec.name, key, spec.result_cls)  # verified; a corrupt one is quarantined
        if stored is not None:
            store.finish_run(run_id, "reused", artifact=str(path), summary=stored.summary())
            return RunOutcome(stored, run_id, key, True, path)

    last = [0.0]

    def on_progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] > 1.0 or fraction >= 1.0:
            last[0] = now
            store.update_run(run_id, progress=fraction, message=message)
            if store.cancel_requested(run_id):
                raise RunCancelled(f"run {run_id} was cancelled")

    t0 = time.time()
    try:
        with reporting_to(on_progress), running(RunContext(store, spec.name, key, run_id)):
            result = spec.run(model, corpus, cfg)
        result.meta.update({
            "probe": spec.name,
            "model": info.to_dict(),
            "model_key": model_key(model),
            "numerics": info.numerics,
            "corpus": corpus_id,
            "config": asdict(cfg),
            "code_version": version,
            "runtime": runtime_versions(),
            "key": key,
            "wall_s": time.time() - t0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        store.save(spec.name, key, result)
    except RunCancelled as e:
        store.finish_run(run_id, "cancelled", error=str(e))
        raise
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error=INTERRUPTED_HINT)
        raise
    except BaseException as e:
        store.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
        raise
    store.finish_run(run_id, "done", artifact=str(path), summary=result.summary())
    return RunOutcome(result, run_id, key, False, path)
