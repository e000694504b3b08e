"""Fault injection for tests that kill real processes.

A child process imports this module first (`python tests/faultkit.py <mode> ...`), which slows
the forward pass and, when asked, the checkpoint writes, and logs what it is doing to an event
file, so the parent can send SIGKILL at a known moment: mid-stream, or inside a checkpoint write
(before its bytes are written, or after they are written but before the rename).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

EVENTS = os.environ.get("FAULTKIT_EVENTS")
FORWARD_SLEEP = float(os.environ.get("FAULTKIT_FORWARD_SLEEP", "0"))
WRITE_SLEEP = float(os.environ.get("FAULTKIT_WRITE_SLEEP", "0"))


def event(what: str) -> None:
    if EVENTS:
        rank = os.environ.get("RANK")  # a rank of a sharded run says which it is
        with open(EVENTS, "a") as f:
            f.write(f"{what}\n" if rank is None else f"r{rank} {what}\n")
            f.flush()
            os.fsync(f.fileno())


def install() -> None:
    import torch

    torch.set_num_threads(1)  # one thread: sums in the same order in every process
    import workbench.activations as activations
    import workbench.statefile as statefile

    activations.CHECKPOINT_EVERY = int(os.environ.get("FAULTKIT_CHECKPOINT_EVERY", "2"))
    forward = activations.forward_with_hooks

    def slow_forward(*a, **k):
        event("batch")
        time.sleep(FORWARD_SLEEP)
        return forward(*a, **k)

    activations.forward_with_hooks = slow_forward
    save_file = statefile.save_file

    def slow_save(*a, **k):
        event("write-begin")
        time.sleep(WRITE_SLEEP)
        save_file(*a, **k)
        event("write-bytes-done")
        time.sleep(WRITE_SLEEP)

    statefile.save_file = slow_save


def corpus():
    from workbench.corpora import Corpus, Document

    words = "the jury said that an election was conducted in a manner that deserves praise".split()
    docs = [Document(f"d{i}", " ".join(words[(i * 7 + j) % len(words)] for j in range(200)), genre="g") for i in range(30)]
    return Corpus("faults", "1", docs)


CONFIG = {"max_tokens": 4000, "seq_len": 32, "batch_size": 4}


def run_probe_main(store_dir: str) -> None:
    from workbench.models import load_model
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    install()
    event("start")
    out = run_probe("residual-norms", load_model("tiny", device="cpu"), corpus(), CONFIG, store=ResultStore(store_dir))
    event(f"done {out.path}")


def rank_probe_main(store_dir: str) -> None:
    """One rank of a sharded residual-norms run (started by torchrun through workbench.launch)."""
    from workbench.launch import rank_session

    with rank_session():  # run_probe_main installs the slow forward
        event(f"pid {os.getpid()}")
        run_probe_main(store_dir)


def worker_main(argv: list[str]) -> int:
    install()
    from dashboards.worker import main

    return main(argv)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "probe":
        run_probe_main(rest[0])
    elif mode == "rank-probe":
        rank_probe_main(rest[0])
    elif mode == "worker":
        sys.exit(worker_main(rest))
    else:
        raise SystemExit(f"unknown mode {mode}")
