"""Core benchmarks on the embedded model and a Brown slice, measured in one run:

1. streaming throughput with one probe's hooks against a bare forward pass (target >= 0.9x);
2. cold (dequantise the GGUF) against warm (cached safetensors) model load time;
3. peak memory of a streaming run against a run that caches every activation, at N and 4N tokens.

Peak memory is measured in child processes (ru_maxrss), so each number is clean.
Usage: python -m benchmarks.core [--tokens 4096] [--skip-cold]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from workbench import hooks
from workbench.activations import bare_forward, stream
from workbench.config import StreamConfig
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.slices import corpus_batches


class NormAccumulator:
    """The hooks and work of a typical streaming probe: every layer's residual, reduced to norm sums."""

    needs_logits = False

    def __init__(self, model):
        self.hook_names = [hooks.resid_post(l) for l in range(model.cfg.n_layers)] + ["ln_final.hook_normalized"]
        self.sums = torch.zeros(len(self.hook_names), dtype=torch.float64)

    def update(self, batch, acts, logits):
        for i, name in enumerate(self.hook_names):
            self.sums[i] += acts[name][batch.valid].norm(dim=-1).double().sum()

    def state_dict(self):
        return {"sums": self.sums}

    def load_state_dict(self, s):
        self.sums = s["sums"].clone()


def _child(mode: str, tokens: int) -> None:
    """Run one streaming or caching pass and print its peak RSS (GiB) as JSON."""
    model = load_model("smollm2-135m", device="cpu")
    batches = corpus_batches(model, load_corpus("brown"), StreamConfig(max_tokens=tokens, seq_len=128, batch_size=8))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "stream":
        stream(model, batches, NormAccumulator(model), progress=False, check_memory_first=False)
    else:
        kept = []
        names = NormAccumulator(model).hook_names
        with torch.inference_mode():
            for b in batches:
                _, cache = model.run_with_cache(b.tokens, names_filter=lambda n: n in names)
                kept.append({k: v.clone() for k, v in cache.items()})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_gib": peak / 2**20, "before_gib": base / 2**20}))


def _peak(mode: str, tokens: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.core", "--child", mode, "--tokens", str(tokens)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=3, help="alternating bare/stream rounds (median ratio)")
    p.add_argument("--skip-cold", action="store_true", help="skip the cold load (it dequantises for ~40 s)")
    p.add_argument("--child", choices=["stream", "cache"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.tokens)
        return {}

    out: dict = {"threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    model = load_model("smollm2-135m", device="cpu")
    out["warm_load_s"] = time.perf_counter() - t0
    if not args.skip_cold:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "WORKBENCH_CACHE": tmp}
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "from workbench.models import load_model; load_model('smollm2-135m', device='cpu')"],
                           env=env, check=True, capture_output=True)
            out["cold_load_s_incl_imports"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "from workbench.models import load_model; load_model('smollm2-135m', device='cpu')"],
                       check=True, capture_output=True)
        out["warm_load_s_incl_imports"] = time.perf_counter() - t0
        out["cold_over_warm"] = out["cold_load_s_incl_imports"] / out["warm_load_s_incl_imports"]

    brown = load_corpus("brown")
    bare_forward(model, corpus_batches(model, brown, StreamConfig(max_tokens=512, seq_len=128, batch_size=8)))  # warm-up
    batches = corpus_batches(model, brown, StreamConfig(max_tokens=args.tokens, seq_len=128, batch_size=8))
    # Alternate the two passes and take medians, so load on a shared machine hits both alike.
    bare_rates, stream_rates = [], []
    for _ in range(args.rounds):
        bare_rates.append(bare_forward(model, batches).tokens_per_s)
        stream_rates.append(stream(model, batches, NormAccumulator(model), progress=False).tokens_per_s)
    ratios = sorted(s / b for s, b in zip(stream_rates, bare_rates))
    out.update({
        "tokens": batches.n_positions,
        "bare_forward_tok_s": statistics.median(bare_rates),
        "stream_31_hooks_tok_s": statistics.median(stream_rates),
        "stream_over_bare": statistics.median(ratios),
    })
    del model
    for n in (args.tokens, 4 * args.tokens):
        s, c = _peak("stream", n), _peak("cache", n)
        out.update({f"stream_peak_gib@{n}": s["peak_gib"], f"cache_peak_gib@{n}": c["peak_gib"],
                    f"cache_over_stream_peak@{n}": c["peak_gib"] / s["peak_gib"]})
    for k, v in out.items():
        print(f"{k:>28}: {v:.3f}" if isinstance(v, float) else f"{k:>28}: {v}")
    return out


if __name__ == "__main__":
    main()
