"""Scale-out benchmark: a sharded stream against one process over the same tokens.

On the CPU: 2 ranks x 1 thread (torch.distributed, gloo) against 1 rank x 2 threads, on the
embedded SmolLM2 over the same Brown batches, for two accumulators: residual norms (sum states:
one all_reduce) and linguistic collapse's class statistics (sparse per-class rows: gathered and
merged by the accumulator's own rule). Reported: throughput of each (tokens / the slowest rank's
stream time, the merge included), their ratio, the merge's share of the sharded run, and the peak
resident memory of each process. With --device cuda: 1 GPU rank against the plain transformers
forward, and the scaling with one rank per GPU.

Usage: python -m benchmarks.scaling [--batches 16] [--batch-size 8] [--seq-len 128] [--device cpu|cuda]
The numbers we measured are in benchmarks/results/scaling.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCUMULATORS = ("residual-norms", "class-stats")


def _accumulator(name: str, model):
    if name == "residual-norms":
        from probes.residual_norms import ResidualNormsAccumulator

        return ResidualNormsAccumulator(model, lens_positions=32)  # the probe's default
    from probes.linguistic_collapse import ClassStatsAccumulator

    return ClassStatsAccumulator(model)


def worker(out: str, batches_n: int, batch_size: int, seq_len: int, device: str) -> None:
    """One process of a measurement (a rank under torchrun, or the single run): stream each
    accumulator once to warm up, then once timed; write the timings and peak memory as JSON."""
    import torch

    import workbench.activations as activations
    from workbench.config import StreamConfig
    from workbench.corpora import load_corpus
    from workbench.distributed import barrier, rank_device
    from workbench.launch import rank_session
    from workbench.models import load_model
    from workbench.slices import corpus_batches

    with rank_session() as w:
        dev = rank_device(device)
        model = load_model("smollm2-135m", device=dev)
        cfg = StreamConfig(max_tokens=batches_n * batch_size * seq_len, seq_len=seq_len, batch_size=batch_size, prepend_bos=True)
        batches = corpus_batches(model, load_corpus("brown"), cfg)
        warm = corpus_batches(model, load_corpus("brown"), StreamConfig(**{**cfg.to_dict(), "max_tokens": batch_size * seq_len * w.size}))
        merge_seconds = [0.0]
        plain_merge = activations.merge_accumulator

        def timed_merge(acc) -> None:
            t = time.perf_counter()
            plain_merge(acc)
            merge_seconds[0] += time.perf_counter() - t

        activations.merge_accumulator = timed_merge
        report = {"rank": w.rank, "world": w.size, "threads": torch.get_num_threads(), "tokens": batches.n_positions,
                  "batches": len(batches), "runs": {}}
        for name in ACCUMULATORS:
            activations.stream(model, warm, _accumulator(name, model), progress=False, check_memory_first=False)  # warm-up
            barrier()
            merge_seconds[0] = 0.0
            t = time.perf_counter()
            stats = activations.stream(model, batches, _accumulator(name, model), progress=False, check_memory_first=False)
            if dev and str(dev).startswith("cuda"):
                torch.cuda.synchronize()
            report["runs"][name] = {"seconds": time.perf_counter() - t, "merge_seconds": merge_seconds[0], "own_tokens": stats.tokens}
        report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        Path(out, f"rank{w.rank}of{w.size}.json").write_text(json.dumps(report))


def _measure(nproc: int, threads: int, args, out: Path) -> list[dict]:
    from workbench.launch import launch

    out.mkdir(parents=True, exist_ok=True)
    cmd = ["worker", str(out), str(args.batches), str(args.batch_size), str(args.seq_len), args.device]
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if nproc == 1:
        subprocess.run([sys.executable, __file__, *cmd], check=True, cwd=ROOT, env={**os.environ, **env})
    else:
        launch(cmd, nproc, entry=[__file__], env=env)
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def _summary(reports: list[dict], name: str) -> dict:
    runs = [r["runs"][name] for r in reports]
    wall = max(r["seconds"] for r in runs)
    tokens = reports[0]["tokens"]
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "merge_s": max(r["merge_seconds"] for r in runs),
            "peak_rss_mib": [round(r["peak_rss_mib"]) for r in reports]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the sharded run (cpu: each with one thread)")
    args = p.parse_args()
    import torch

    cores = os.cpu_count() or 1
    lines = [f"# benchmarks/scaling.py on {args.device}: {args.batches} batches x {args.batch_size} x {args.seq_len} Brown tokens, "
             f"SmolLM2-135M; {cores} CPU cores; torch {torch.__version__}"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cpu":
            single = _measure(1, args.ranks, args, Path(tmp, "single"))
            sharded = _measure(args.ranks, 1, args, Path(tmp, "sharded"))
            lines.append(f"{'accumulator':<16} {'1 x ' + str(args.ranks) + ' thr tok/s':>16} {str(args.ranks) + ' x 1 thr tok/s':>16} "
                         f"{'ratio':>7} {'merge share':>12} {'peak RSS MiB (1 | per rank)':>30}")
            for name in ACCUMULATORS:
                a, b = _summary(single, name), _summary(sharded, name)
                lines.append(f"{name:<16} {a['tokens_per_s']:>16.0f} {b['tokens_per_s']:>16.0f} {b['tokens_per_s'] / a['tokens_per_s']:>6.2f}x "
                             f"{b['merge_s'] / b['wall_s']:>11.2%} {str(a['peak_rss_mib']) + ' | ' + str(b['peak_rss_mib']):>30}")
        else:
            n_gpu = torch.cuda.device_count()
            lines.append(f"card: {torch.cuda.get_device_name(0)} x {n_gpu}")
            for n in sorted({1, n_gpu}):
                reports = _measure(n, 1, args, Path(tmp, f"gpu{n}"))
                for name in ACCUMULATORS:
                    s = _summary(reports, name)
                    lines.append(f"{n} rank(s) {name:<16} {s['tokens_per_s']:>10.0f} tok/s, merge {s['merge_s'] / s['wall_s']:.2%}")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / ("scaling.txt" if args.device == "cpu" else "scaling_gpu.txt")
    out.write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.path.insert(0, str(ROOT))
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
