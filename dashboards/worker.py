"""The dashboard's run worker: `python -m dashboards.worker --store DIR [RUN_ID ...]`.

With run ids on the command line it runs those queued runs and exits; otherwise it reads one run
id per line from stdin until stdin closes (the dashboard keeps that pipe open). Each run's request
(probe, model name, corpus name, config) is read from its registry row; the run goes through
`run_probe(..., run_id=...)`, which records progress, the result and any failure. Models and
corpora stay loaded between runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import traceback
from typing import Any

from workbench.store import ResultStore

log = logging.getLogger("workbench.worker")


class Worker:
    def __init__(self, store: ResultStore, max_models: int = 2):
        self.store = store
        self.max_models = max_models
        self._models: dict[tuple[str, str], Any] = {}
        self._corpora: dict[str, Any] = {}

    def model(self, name: str, numerics: str):
        from workbench.models import load_model

        key = (name, numerics)
        if key not in self._models:
            while len(self._models) >= self.max_models:
                self._models.pop(next(iter(self._models)))
            self._models[key] = load_model(name, numerics=numerics)
        return self._models[key]

    def corpus(self, name: str):
        from workbench.corpora import load_corpus

        if name not in self._corpora:
            self._corpora[name] = load_corpus(name)
        return self._corpora[name]

    def run(self, run_id: int) -> str:
        """Run one queued run; returns its final status (never raises for a failed probe)."""
        from dashboards.jobs import check_request
        from workbench.runner import run_probe

        row = self.store.get_run(run_id)
        if row is None:
            log.error("run %s is not in the registry", run_id)
            return "missing"
        if row["status"] != "queued":
            log.warning("run %s is %s, not queued; skipped", run_id, row["status"])
            return row["status"]
        t0 = time.time()
        taken = False
        try:
            req = check_request(row["probe"], row["model"], row["corpus"], json.loads(row["config"] or "{}"))
            self.store.update_run(run_id, status="running", started=t0, message=f"loading {req.model}")
            model = self.model(req.model, req.numerics)
            corpus = None
            if req.corpus is not None:
                self.store.update_run(run_id, message=f"loading corpus {req.corpus}")
                corpus = self.corpus(req.corpus)
            taken = True  # from here on run_probe records a failure itself
            outcome = run_probe(req.probe, model, corpus, req.config, store=self.store, run_id=run_id)
            status = "reused" if outcome.reused else "done"
        except BaseException as e:
            if not taken or self.store.get_run(run_id)["status"] in ("queued", "running"):
                self.store.finish_run(run_id, "failed", error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}")
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            status = "failed"
        log.info("run %s %s in %.1f s", run_id, status, time.time() - t0)
        return status


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.worker", description=__doc__.split("\n")[0])
    parser.add_argument("run_ids", nargs="*", type=int, help="queued runs to run (default: read ids from stdin)")
    parser.add_argument("--store", default=None, help="result store directory (default: the workbench store)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    worker = Worker(ResultStore(args.store))
    log.info("worker ready (store %s)", worker.store.root)
    try:
        if args.run_ids:
            statuses = [worker.run(r) for r in args.run_ids]
            return 0 if all(s in ("done", "reused") for s in statuses) else 1
        for line in sys.stdin:
            line = line.strip()
            if line.isdigit():
                worker.run(int(line))
    except KeyboardInterrupt:
        log.info("worker stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
