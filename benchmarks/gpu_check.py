"""The GPU check: everything a lent GPU should confirm, in one script that fits in about 8 minutes.

    python -m benchmarks.gpu_check [--budget-s 480]

On the first CUDA device it runs, each step with a share of the budget (a step that would overrun
is stopped and reported as such):
1. the conformance matrix (`tests/test_conformance.py`) on CUDA: 15 families x float32/bfloat16 x
   fast/explicit against transformers, hooks, and the probes' smoke runs;
2. `benchmarks/core.py` against the plain transformers forward, in float32 and in bfloat16
   (throughput at 8 x 128, 1 x 1024, 1 x 2048; memory and load times left out for time);
3. `workbench figures --quick --device cuda` into a scratch folder (every experiment's pipeline on
   tiny settings).
It writes benchmarks/results/gpu_check.txt with the card's name, versions and every outcome. On a
machine without CUDA it says so and writes nothing. The test suite never depends on it.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.txt"


def run_step(name: str, cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict:
    """Run one step as a child process; its exit code, wall time and output tail (or a timeout)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                           timeout=max(timeout_s, 1))
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", ((e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""))
    return {"name": name, "rc": rc, "wall_s": time.perf_counter() - t0, "out": out}


def card() -> list[str]:
    p = torch.cuda.get_device_properties(0)
    return [f"card: {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
            f"{torch.cuda.device_count()} visible)",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
            f"bfloat16 supported: {torch.cuda.is_bf16_supported()}"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole check's time budget in seconds")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check (the CPU suite covers the rest)")
        return 2
    t_start = time.perf_counter()
    lines = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M')})", "", *card(), ""]
    print("\n".join(lines), flush=True)
    py = sys.executable
    plan = [
        ("conformance matrix on cuda", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_conformance.py",
                                        "-k", "not models_page"], 0.35, {"WORKBENCH_TEST_DEVICE": "cuda"}),
        ("core benchmark float32", [py, "-m", "benchmarks.core", "--device", "cuda", "--rounds", "2", "--skip-cold",
                                    "--skip-memory"], 0.15, None),
        ("core benchmark bfloat16", [py, "-m", "benchmarks.core", "--device", "cuda", "--rounds", "2", "--skip-cold",
                                     "--skip-memory", "--dtype", "bfloat16"], 0.15, None),
        ("figures --quick on cuda", [py, "-m", "experiments.run_all", "--quick", "--device", "cuda", "--out",
                                     tempfile.mkdtemp(prefix="wb-gpu-quick-")], 0.35, None),
    ]
    for name, cmd, share, env in plan:
        left = a.budget_s - (time.perf_counter() - t_start)
        if left < 20:
            lines.append(f"## {name}: not run (budget spent)")
            continue
        step = run_step(name, cmd, min(share * a.budget_s, left), env)
        lines.append(f"## {name}: exit {step['rc']} in {step['wall_s']:.0f} s")
        lines.extend(summarise(name, step["out"]))
        lines.append("")
        print("\n".join(lines[-6:]), flush=True)
    lines.append(f"total {time.perf_counter() - t_start:.0f} s of a {a.budget_s:.0f} s budget")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")
    return 0


def summarise(name: str, out: str) -> list[str]:
    """The lines of a step's output worth keeping: pytest's counts and failures, the benchmark's
    ratios, each experiment's outcome."""
    keep = []
    for line in out.splitlines():
        if name.startswith("conformance") and (re.search(r"\d+ (passed|failed)", line) or line.startswith("FAILED")):
            keep.append(line.strip())
        elif name.startswith("core") and re.search(r"tok/s|_over_hf|device|dtype", line):
            keep.append(line.strip())
        elif name.startswith("figures") and (line.startswith("===") or "Failed" in line or line.startswith("report:")):
            keep.append(line.strip())
    return keep[-40:] or [out.strip().splitlines()[-1][:300] if out.strip() else "(no output)"]


if __name__ == "__main__":
    sys.exit(main())
