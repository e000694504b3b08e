"""Linguistic-collapse benchmarks, measured in one run:

1. peak memory of the class-statistics pass is O(classes x d_model), not O(tokens x d_model): the
   same pass over N and 10 N tokens, each in a child process, against a pass that keeps every
   feature row (what a non-streaming implementation would hold);
2. throughput of each pass (class statistics; held-out NC4 with logits and nearest class means) as
   a ratio to a bare forward pass over the same batches (`workbench.activations.bare_forward`).

Memory is the peak resident set size sampled every 5 ms while the pass runs, minus the resident
size just before the accumulator is built (so it counts the accumulator state and the transient
batch activations, not the model or the tokenised slice).
Usage: python -m benchmarks.linguistic_collapse [--tokens 20000] [--factor 10] [--model zoo|smollm2-135m] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil
import torch

from probes import linguistic_collapse as lc
from workbench.activations import bare_forward, stream
from workbench.config import StreamConfig
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.models.info import ModelInfo, attach_info
from workbench.slices import corpus_batches
from workbench.tokenizers import load_tokenizer
from workbench.zoo import LMRecipe

MiB = 2**20


def build_model(name: str):
    """'zoo': an untrained 4-layer, width-128 zoo-shaped model (BPE 4096); else a loader name."""
    if name == "zoo":
        from transformer_lens import HookedTransformer


        recipe = LMRecipe(n_layers=4, d_model=128, n_heads=4)
        tok = load_tokenizer(recipe.tokenizer)
        torch.manual_seed(0)
        model = HookedTransformer(recipe.model_config(len(tok)), tokenizer=tok, move_to_device=False, default_padding_side="right")
        return attach_info(model.eval(), ModelInfo(id=f"bench:{recipe.name}", source="user", numerics="raw"))

    return load_model(name, numerics="raw", device="cpu")


class PeakRSS:
    """Samples this process's RSS in a thread; `peak` is the maximum seen."""

    def __init__(self, every_s: float = 0.005):
        self.proc, self.every, self.peak, self._stop = psutil.Process(), every_s, 0, threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


class KeepFeatures(lc.ClassStatsAccumulator):
    """The same pass, also keeping every float64 feature row (the O(tokens x d) alternative)."""

    def __init__(self, model, skip_bos: bool = True):
        super().__init__(model, skip_bos)
        self.kept: list[torch.Tensor] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().add(x, y)
        self.kept.append(x.double().clone())


def child(model_name: str, tokens: int, mode: str) -> dict:
    model = build_model(model_name)
    batches = corpus_batches(model, load_corpus("brown"), StreamConfig(split="train", max_tokens=tokens, seq_len=128, batch_size=8))
    with PeakRSS() as mem:
        acc = (KeepFeatures if mode == "keep" else lc.ClassStatsAccumulator)(model)
        stats = stream(model, batches, acc, progress=False, check_memory_first=False)
    return {"mode": mode, "tokens": stats.tokens, "peak_delta_mib": (mem.peak - mem.start) / MiB,
            "classes_seen": int((acc.counts > 0).sum()), "state_mib": sum(t.numel() * t.element_size() for t in acc.state_dict().values()) / MiB}


def run_child(model_name: str, tokens: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.linguistic_collapse", "--child", mode, "--tokens", str(tokens),
                          "--model", model_name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(model_name: str, tokens: int) -> dict:
    model = build_model(model_name)
    corpus = load_corpus("brown")
    cfg = StreamConfig(split="train", max_tokens=tokens, seq_len=128, batch_size=8)
    batches = corpus_batches(model, corpus, cfg)
    bare_forward(model, batches)  # warm-up
    bare = bare_forward(model, batches)
    stats_acc = lc.ClassStatsAccumulator(model)
    s1 = stream(model, batches, stats_acc, progress=False)
    counts = stats_acc.counts
    means = torch.zeros_like(stats_acc.sums)
    seen = counts.nonzero().squeeze(1)
    means[seen] = stats_acc.sums[seen] / counts[seen, None]
    held = lc.HeldoutAccumulator(model, counts, means, [1, 2, 5, 10, 25], 1)
    s3 = stream(model, batches, held, progress=False)
    return {"model": model_name, "tokens": bare.tokens, "classes": int(len(seen)), "bare_tok_s": bare.tokens_per_s,
            "stats_pass_tok_s": s1.tokens_per_s, "stats_ratio": s1.tokens_per_s / bare.tokens_per_s,
            "heldout_pass_tok_s": s3.tokens_per_s, "heldout_ratio": s3.tokens_per_s / bare.tokens_per_s}


def report_memory(model: str, rows: list[dict]) -> None:
    print(f"peak memory of the class-statistics pass ({model}; RSS delta over the pass):")
    for r in rows:
        print(f"  {r['mode']:<7} {r['tokens']:>9,} tokens: peak +{r['peak_delta_mib']:8.1f} MiB "
              f"(classes seen {r['classes_seen']:,}, accumulator checkpoint {r['state_mib']:.1f} MiB)")
    small, large = rows[0], rows[1]
    print(f"  streaming: {large['tokens'] / small['tokens']:.1f}x tokens -> {large['peak_delta_mib'] / max(small['peak_delta_mib'], 1e-9):.2f}x peak; "
          f"keeping features: {rows[3]['peak_delta_mib'] / max(rows[2]['peak_delta_mib'], 1e-9):.2f}x peak")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=20_000, help="the smaller memory run's token budget")
    p.add_argument("--factor", type=int, default=10, help="the larger memory run has factor x tokens")
    p.add_argument("--model", default="zoo", help="'zoo' (untrained 4x128 zoo shape) or a model name, e.g. smollm2-135m")
    p.add_argument("--throughput-tokens", type=int, default=8_192)
    p.add_argument("--skip-memory", action="store_true", help="only measure throughput")
    p.add_argument("--child", choices=["stream", "keep"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.model, args.tokens, args.child)))
        return
    rows = [] if args.skip_memory else [
        run_child(args.model, args.tokens, "stream"), run_child(args.model, args.tokens * args.factor, "stream"),
        run_child(args.model, args.tokens, "keep"), run_child(args.model, args.tokens * args.factor, "keep")]
    if rows:
        report_memory(args.model, rows)
    t = throughput(args.model, args.throughput_tokens)
    print(f"throughput ({t['model']}, {t['tokens']:,} tokens, {t['classes']:,} classes): bare forward {t['bare_tok_s']:.0f} tok/s; "
          f"class-statistics pass {t['stats_pass_tok_s']:.0f} tok/s ({t['stats_ratio']:.2f}x); "
          f"held-out NC4 pass {t['heldout_pass_tok_s']:.0f} tok/s ({t['heldout_ratio']:.2f}x)")
    print(json.dumps({"memory": rows, "throughput": t}))


if __name__ == "__main__":
    main()
