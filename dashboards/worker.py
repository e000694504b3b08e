"""The dashboard's run worker: `python -m dashboards.worker --store DIR [RUN_ID ...]`.

Without run ids it takes queued runs from the store (one atomic claim each, oldest first) until
its stdin closes; the dashboard keeps that pipe open, so the worker ends with the app. With run
ids it takes just those and exits. Several workers may serve one store: a run is claimed by
exactly one. Each run's request (probe, model name, corpus name, config) is read from its
registry row and checked again; the run goes through `run_probe(..., run_id=...)`, which records
progress, the result and any failure. Models and corpora stay loaded between runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
import traceback
from typing import Any

from dashboards.cache import LRU
from workbench.errors import RunCancelled
from workbench.store import ResultStore

log = logging.getLogger("workbench.worker")
POLL_S = 0.3


class Worker:
    def __init__(self, store: ResultStore, max_models: int = 2, device: str | None = None):
        self.store = store
        self.max_models = max_models
        self.device = device  # the worker owns the GPU: None = CUDA when present
        self._models: LRU = LRU(max_models, on_evict=lambda _model: _free_device_memory())
        self._corpora: dict[str, Any] = {}

    def model(self, name: str, numerics: str, dtype: str = "float32"):
        from workbench.models import load_model

        return self._models.get((name, numerics, dtype),
                                lambda: load_model(name, numerics=numerics, device=self.device, dtype=dtype))

    def corpus(self, name: str):
        from workbench.corpora import load_corpus

        if name not in self._corpora:
            self._corpora[name] = load_corpus(name)
        return self._corpora[name]

    def take_next(self) -> int | None:
        """Claim the oldest queued run and run it; its id, or None when the queue is empty."""
        run_id = self.store.claim()
        if run_id is not None:
            self._run_claimed(run_id)
        return run_id

    def run(self, run_id: int) -> str:
        """Claim and run one queued run; returns its final status (never raises for a failed probe)."""
        row = self.store.get_run(run_id)
        if row is None:
            log.error("run %s is not in the registry", run_id)
            return "missing"
        if self.store.claim(run_id) is None:
            status = self.store.get_run(run_id)["status"]
            log.warning("run %s is %s, not queued; skipped", run_id, status)
            return status
        return self._run_claimed(run_id)

    def _run_claimed(self, run_id: int) -> str:
        from dashboards.jobs import STUDY_MODEL, check_request
        from workbench.models.info import using_dtype
        from workbench.runner import run_probe, run_study

        asked = self.store.request_of(run_id)
        t0 = time.time()
        taken = False
        try:
            req = check_request(asked["probe"], asked["model"], asked["corpus"], asked["config"], asked.get("dtype", "float32"))
            if req.model == STUDY_MODEL:  # a study loads what its config names, through the store like any run
                taken = True
                with using_dtype(req.dtype):
                    outcome = run_study(req.probe, req.config, store=self.store, device=self.device, run_id=run_id)
                status = "reused" if outcome.reused else "done"
                log.info("run %s %s in %.1f s", run_id, status, time.time() - t0)
                return status
            self.store.update_run(run_id, message=f"loading {req.model}")
            model = self.model(req.model, req.numerics, req.dtype)
            corpus = None
            if req.corpus is not None:
                self.store.update_run(run_id, message=f"loading corpus {req.corpus}")
                corpus = self.corpus(req.corpus)
            if self.store.cancel_requested(run_id):
                raise RunCancelled(f"run {run_id} was cancelled")
            taken = True  # from here on run_probe records the outcome itself
            outcome = run_probe(req.probe, model, corpus, req.config, store=self.store, run_id=run_id)
            status = "reused" if outcome.reused else "done"
        except RunCancelled as e:
            if not taken:
                self.store.finish_run(run_id, "cancelled", error=str(e))
            status = "cancelled"
        except BaseException as e:
            current = self.store.get_run(run_id)["status"]
            if not taken or current in ("queued", "running"):
                kind = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
                self.store.finish_run(run_id, kind, error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            status = "failed"
        log.info("run %s %s in %.1f s", run_id, status, time.time() - t0)
        return status


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def _watch_stdin(stop: threading.Event) -> None:
    for _ in sys.stdin:  # the dashboard writes nothing; end of input means it has gone
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.worker", description=__doc__.split("\n")[0])
    parser.add_argument("run_ids", nargs="*", type=int, help="queued runs to run (default: take queued runs until stdin closes)")
    parser.add_argument("--store", default=None, help="result store directory (default: the workbench store)")
    parser.add_argument("--device", default=None, help="where runs load their models (default: cuda when present, else cpu)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    worker = Worker(ResultStore(args.store), device=args.device)
    log.info("worker ready (store %s)", worker.store.root)
    try:
        if args.run_ids:
            statuses = [worker.run(r) for r in args.run_ids]
            return 0 if all(s in ("done", "reused") for s in statuses) else 1
        stop = threading.Event()
        threading.Thread(target=_watch_stdin, args=(stop,), daemon=True).start()
        while not stop.is_set():
            if worker.take_next() is None:
                stop.wait(POLL_S)
    except KeyboardInterrupt:
        log.info("worker stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
