"""Real processes, real signals: runs killed with SIGKILL (mid-stream and inside checkpoint writes)
resume to the uninterrupted result bit for bit; a killed dashboard worker leaves its run
"interrupted" and a retry completes it; two workers on one store run each of 20 jobs exactly once;
Cancel stops a running job. These take longer than the unit tests (child processes import torch):
about 45 s for the kill sequence (seven processes), 10 to 30 s each for the others."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from workbench.store import ResultStore

FAULTKIT = Path(__file__).resolve().parent / "faultkit.py"


def _env(events: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, FAULTKIT_EVENTS=str(events), TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _events(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not pred():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _table(store_root: Path) -> pd.DataFrame:
    from probes.residual_norms import ResidualNormsResult

    (result,) = list((store_root / "results" / "residual-norms").iterdir())
    return ResidualNormsResult.load(result).table


def test_kill_9_at_random_moments_and_inside_checkpoint_writes_resumes_bit_for_bit(tmp_path):
    import faultkit
    import torch

    from workbench.models import load_model
    from workbench.runner import run_probe

    rng = random.Random(7)
    store = tmp_path / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the children: the same order of sums, so the same bits
    try:
        ref = run_probe("residual-norms", load_model("tiny", device="cpu"), faultkit.corpus(), faultkit.CONFIG,
                        store=ResultStore(tmp_path / "ref"))
    finally:
        torch.set_num_threads(threads)
    reference = ref.result.table

    # (moment to kill, how long after it): random moments mid-stream, and inside checkpoint writes
    plan = [("batch", "random"), ("write-begin", 0.05), ("batch", "random"), ("write-bytes-done", 0.05),
            ("batch", "random"), ("write-begin", 0.1)]
    kills = 0
    for i, (moment, delay) in enumerate(plan):
        ev = tmp_path / f"events-{i}"
        proc = subprocess.Popen([sys.executable, str(FAULTKIT), "probe", str(store)],
                                env=_env(ev, FAULTKIT_FORWARD_SLEEP=0.01, FAULTKIT_WRITE_SLEEP=0.3),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        skip = rng.randint(0, 3) if moment == "batch" else 0
        _wait_for(lambda: sum(e == moment for e in _events(ev)) > skip or proc.poll() is not None, 90, moment)
        assert proc.poll() is None, f"the run finished before kill {i}"
        time.sleep(rng.uniform(0.0, 0.15) if delay == "random" else delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        kills += 1
    assert kills >= 5
    registry = ResultStore(store)  # opening the store notices the dead runs
    rows = registry.runs()
    assert len(rows) == kills and all(r["status"] == "interrupted" for r in rows)
    ev = tmp_path / "events-final"
    subprocess.run([sys.executable, str(FAULTKIT), "probe", str(store)], env=_env(ev), check=True, timeout=120,
                   capture_output=True)
    assert any(e.startswith("done") for e in _events(ev))
    pd.testing.assert_frame_equal(_table(store), reference, check_exact=True)
    assert registry.runs(limit=1)[0]["status"] == "done"


def _queue(store: ResultStore, config: dict, probe: str = "residual-norms") -> int:
    run_id = store.start_run("queued", probe, "tiny", "raw", "brown", config, "", status="queued")
    return run_id


WORKER_CFG = {"max_tokens": 6000, "seq_len": 32, "batch_size": 4}


def test_a_killed_worker_leaves_its_run_interrupted_and_a_retry_completes_it(tmp_path):
    ref = ResultStore(tmp_path / "ref")
    ref_id = _queue(ref, WORKER_CFG)
    subprocess.run([sys.executable, str(FAULTKIT), "worker", "--store", str(ref.root), str(ref_id)],
                   env=_env(tmp_path / "ref-events"), check=True, timeout=120, capture_output=True)
    assert ref.get_run(ref_id)["status"] == "done"

    store = ResultStore(tmp_path / "store")
    run_id = _queue(store, WORKER_CFG)
    ev = tmp_path / "events"
    proc = subprocess.Popen([sys.executable, str(FAULTKIT), "worker", "--store", str(store.root)], stdin=subprocess.PIPE,
                            env=_env(ev, FAULTKIT_FORWARD_SLEEP=0.02), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(lambda: _events(ev).count("write-bytes-done") >= 2, 90, "two checkpoints")
    assert store.get_run(run_id)["status"] == "running" and store.get_run(run_id)["pid"] == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ResultStore(store.root)
    row = store.get_run(run_id)
    assert row["status"] == "interrupted" and "ended" in row["error"]
    assert list((store.root / "scratch" / "residual-norms").glob("*/stream-residual-norms/stream_state.safetensors"))
    assert store.requeue(run_id)
    subprocess.run([sys.executable, str(FAULTKIT), "worker", "--store", str(store.root), str(run_id)],
                   env=_env(tmp_path / "events-retry"), check=True, timeout=120, capture_output=True)
    row = store.get_run(run_id)
    assert row["status"] == "done" and row["attempts"] == 2
    pd.testing.assert_frame_equal(_table(store.root), _table(ref.root), check_exact=True)


def test_two_workers_run_each_of_twenty_jobs_exactly_once(tmp_path):
    store = ResultStore(tmp_path / "store")
    ids = [_queue(store, {"max_tokens": 600, "seq_len": 32, "batch_size": 4, "seed": s}) for s in range(20)]
    procs = [subprocess.Popen([sys.executable, "-m", "dashboards.worker", "--store", str(store.root)], stdin=subprocess.PIPE,
                              stdout=open(tmp_path / f"w{i}.log", "w"), stderr=subprocess.STDOUT, text=True,
                              cwd=str(FAULTKIT.parent.parent), env=_env(tmp_path / "ev"))
             for i in range(2)]
    try:
        _wait_for(lambda: all(store.get_run(i)["status"] in ("done", "failed") for i in ids), 180, "20 jobs")
    finally:
        for p in procs:
            p.stdin.close()
        for p in procs:
            p.wait(timeout=30)
    rows = [store.get_run(i) for i in ids]
    assert [r["status"] for r in rows] == ["done"] * 20, [r["error"] for r in rows if r["status"] != "done"]
    assert all(r["attempts"] == 1 for r in rows)
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    for i in ids:
        assert logs.count(f"run {i} done") == 1, i
    assert {r["pid"] for r in rows} <= {p.pid for p in procs}
    assert len({r["key"] for r in rows}) == 20 and len(list((store.root / "results" / "residual-norms").iterdir())) == 20


def test_cancel_stops_a_running_job(tmp_path):
    store = ResultStore(tmp_path / "store")
    run_id = _queue(store, {**WORKER_CFG, "max_tokens": 20000})
    ev = tmp_path / "events"
    proc = subprocess.Popen([sys.executable, str(FAULTKIT), "worker", "--store", str(store.root)], stdin=subprocess.PIPE,
                            env=_env(ev, FAULTKIT_FORWARD_SLEEP=0.02), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _events(ev).count("batch") >= 10, 90, "the run to start")
        assert store.request_cancel(run_id) == "running"
        _wait_for(lambda: store.get_run(run_id)["status"] == "cancelled", 15, "the run to stop")
        assert proc.poll() is None  # the worker survives and takes the next job
        nxt = _queue(store, {"max_tokens": 300, "seq_len": 32, "batch_size": 4})
        _wait_for(lambda: store.get_run(nxt)["status"] == "done", 60, "the next job")
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert not (store.root / "results" / "residual-norms" / (store.get_run(run_id)["key"] or "x")).exists()
    assert json.loads(store.get_run(nxt)["summary"])["layers"] == 2


def test_a_job_that_ignores_cancel_has_its_worker_killed(tmp_path, monkeypatch):
    """A probe stuck where it reports no progress cannot stop itself: after the grace period the
    manager kills its worker and records the run as cancelled."""
    import dashboards.jobs as jobs_mod

    fake = tmp_path / "stuck-python"  # stands in for the interpreter: claims the run, then hangs
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} -c \"import sys, time; sys.path.insert(0, '{FAULTKIT.parent.parent}'); "
                    "from workbench.store import ResultStore; ResultStore(sys.argv[-1]).claim(); time.sleep(120)\" \"$@\"\n")
    fake.chmod(0o755)
    monkeypatch.setattr(jobs_mod, "CANCEL_GRACE_S", 0.5)
    store = ResultStore(tmp_path / "store")
    jobs = jobs_mod.JobManager(store, python=str(fake))
    run_id = jobs.submit("residual-norms", "tiny", "brown", {"max_tokens": 300})
    _wait_for(lambda: store.get_run(run_id)["status"] == "running", 30, "the fake worker to claim the run")
    proc = jobs._proc
    assert jobs.cancel(run_id) == "running"
    _wait_for(lambda: (jobs.check(), store.get_run(run_id)["status"] == "cancelled")[1], 20, "the kill")
    assert proc.poll() == -signal.SIGKILL and "stopped after" in store.get_run(run_id)["error"]
    jobs.shutdown()
