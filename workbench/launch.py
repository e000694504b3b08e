"""Start a sharded run on this machine, and be one rank of it.

`launch(args, nproc)` runs `python -m torch.distributed.run --standalone --nproc-per-node N`
with the same command line (`workbench run PROBE ...` without `--nproc`): torchrun starts the
ranks, each joins the process group (`rank_session`), streams its share and merges. Only rank 0's
output is shown. When a rank dies or raises, torchrun stops the others and `launch` raises
`RankFailure` naming the rank and its error; every rank's checkpoint stays, so the same command
resumes. Several nodes: run the same rank command under your own `torchrun --nnodes ...`
(docs/SCALING.md).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import torch

from workbench.distributed import World, init_from_env
from workbench.errors import WorkbenchError

ERRORS_ENV = "WORKBENCH_RANK_ERRORS"  # where each rank writes its error (JSON, one file per rank)
CLI_ENTRY = ("-m", "workbench.cli")


class RankFailure(WorkbenchError):
    """A rank of a sharded run died or raised."""


def ranks_for(nproc: str | int) -> int:
    """`--nproc`: a positive count, or "auto" (one rank per GPU; one rank without GPUs)."""
    from workbench.arguments import parse_nproc

    n = parse_nproc(nproc)
    if n is None:
        return max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1
    return n


DEVICES_PER_RANK_ENV = "WORKBENCH_DEVICES_PER_RANK"  # --n-devices of a sharded run: each rank's GPU group size


def check_ranks(nproc: int, device: str | None, n_devices: int = 1, gpus: int | None = None) -> str:
    """Before launching: "cuda" when the ranks will run on GPUs (each on its own group of `n_devices`
    GPUs), "cpu" when on CPUs (gloo). Refused in one line: more ranks x GPUs per rank than this
    machine has, or GPUs asked for where there are none. `--device cpu` means CPUs even where GPUs
    are present."""
    if gpus is None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    kind = (device or ("cuda" if gpus else "cpu")).split(":")[0]
    if kind == "cpu":
        if n_devices != 1:
            raise WorkbenchError(f"--n-devices {n_devices} spreads a model over GPUs; it cannot be combined with --device cpu")
        return "cpu"
    if kind != "cuda":
        raise WorkbenchError(f"sharded runs go to 'cuda' or 'cpu' ranks, not {device!r}")
    need = nproc * n_devices
    if need > gpus:
        per = f" x {n_devices} GPUs each" if n_devices > 1 else ""
        raise WorkbenchError(f"{nproc} ranks{per} need {need} GPUs; this machine has {gpus}. Use --nproc {max(gpus // n_devices, 1)}"
                             + (" or --device cpu" if gpus == 0 else "") + ".")
    return "cuda"


def rank_env(kind: str, n_devices: int = 1) -> dict[str, str]:
    """Environment every rank starts with: no GPU at all for CPU ranks (gloo), the GPU group size otherwise."""
    if kind == "cpu":
        return {"CUDA_VISIBLE_DEVICES": "", "WORKBENCH_DIST_BACKEND": "gloo"}
    return {DEVICES_PER_RANK_ENV: str(n_devices)}


def first_gpu_of(local_rank: int, n_devices: int = 1) -> int:
    """The first GPU of a local rank's group: ranks take disjoint groups of `n_devices` GPUs."""
    return local_rank * n_devices


def torchrun_command(args: Sequence[str], nproc: int, entry: Sequence[str] = CLI_ENTRY) -> list[str]:
    """The single-node torchrun command line for `nproc` ranks of `entry args`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "--max-restarts=0", "--monitor-interval=0.5", "--local-ranks-filter=0", *entry, *args]


def launch(args: Sequence[str], nproc: int, entry: Sequence[str] = CLI_ENTRY, env: dict[str, str] | None = None) -> None:
    """Run `entry args` on `nproc` local ranks; raise RankFailure naming the rank that failed."""
    with tempfile.TemporaryDirectory(prefix="workbench-ranks-") as errors:
        full_env = {**os.environ, **(env or {}), ERRORS_ENV: errors}
        proc = subprocess.Popen(torchrun_command(args, nproc, entry), env=full_env, stderr=subprocess.PIPE)
        captured = _pass_through(proc)
        rc = proc.wait()
        if rc != 0:
            raise RankFailure(describe_failure(rc, captured, Path(errors), nproc))


def _pass_through(proc: subprocess.Popen) -> str:
    """Copy the launcher's stderr (rank 0's progress bars included) to ours as it comes; keep it."""
    chunks: list[bytes] = []
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    while True:
        try:
            data = os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover
            continue
        if not data:
            break
        chunks.append(data)
        sys.stderr.buffer.write(data)
        sys.stderr.flush()
    return b"".join(chunks).decode("utf-8", "replace")


def describe_failure(rc: int, launcher_stderr: str, errors: Path, nproc: int) -> str:
    """One line: which rank failed first and how (its Python error, or the signal that killed
    it), the other ranks' errors, and that rerunning resumes from the checkpoints."""
    recorded = {}
    for f in sorted(errors.glob("rank*.json")):
        try:
            d = json.loads(f.read_text())
            recorded[int(d["rank"])] = str(d["error"])
        except (ValueError, KeyError, OSError):
            continue
    root = _root_cause(launcher_stderr)
    if root is not None:
        rank, how = root
        first = f"rank {rank} of {nproc} failed: {recorded.pop(rank, how)}"
    elif recorded:
        rank = min(recorded)
        first = f"rank {rank} of {nproc} failed: {recorded.pop(rank)}"
    else:
        first = f"the launcher exited with code {rc} before naming a rank"
    others = "; ".join(f"rank {r}: {e}" for r, e in sorted(recorded.items()))
    tail = " Every rank's checkpoint is kept: run the same command again to resume."
    return first + (f" (then {others})" if others else "") + "." + tail


def _root_cause(text: str) -> tuple[int, str] | None:
    """(rank, how it ended) of torchrun's "Root Cause (first observed failure)" summary."""
    part = text.split("Root Cause", 1)
    if len(part) < 2:
        return None
    body = part[1]
    rank = re.search(r"rank\s*:\s*(\d+)", body)
    if rank is None:
        return None
    code = re.search(r"exitcode\s*:\s*(-?\d+)", body)
    exit_code = int(code.group(1)) if code else None
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        how = f"killed by {name} (exit code {exit_code})"
    else:
        how = f"exited with code {exit_code}"
    return int(rank.group(1)), how


@contextmanager
def rank_session() -> Iterator[World]:
    """Be one rank of a torchrun job: join the group, turn torchrun's SIGTERM (sent when another
    rank failed) into KeyboardInterrupt so the registry records the run as interrupted, record
    this rank's error for the launcher, and leave the group at the end."""
    import torch.distributed as dist

    w = init_from_env()
    previous = signal.signal(signal.SIGTERM, _interrupt) if w.sharded else None
    try:
        yield w
    except BaseException as e:
        _record_error(w, e)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if dist.is_initialized():
            dist.destroy_process_group()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}: another rank failed")


def _record_error(w: World, e: BaseException) -> None:
    where = os.environ.get(ERRORS_ENV)
    if not where or not w.sharded:
        return
    msg = f"{type(e).__name__}: {e}".strip().splitlines()[0] if str(e) else type(e).__name__
    path = Path(where) / f"rank{w.rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": w.rank, "error": msg[:500]}))
    os.replace(tmp, path)

