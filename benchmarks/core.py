"""Core benchmarks on the embedded model, each a ratio measured in one run:

1. throughput of hooked streaming against the plain transformers forward of the same model (what
   a user would otherwise run), at 8 x 128, 1 x 1024 and 1 x 2048 tokens, on the same Brown
   batches. Every pass does the same work: a full forward pass with logits (the streamed one also
   reduces the 31 hooked activations to norms). Also measured: the same stream with
   TransformerLens's explicit attention (`explicit_path`), and a bare workbench forward (no
   hooks). Rounds alternate between the passes and the medians are reported;
2. peak memory of one streamed pass against one plain transformers pass at each shape, each in a
   child process of its own (sampled resident memory while the pass runs: weights plus the
   pass's transient memory; on a GPU, torch's peak allocation);
3. cold (dequantise the GGUF) against warm (cached safetensors) model load time.

Usage: python -m benchmarks.core [--rounds 3] [--skip-cold] [--skip-memory] [--device cuda] [--dtype bfloat16]
The numbers we measured are in benchmarks/results/core.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import torch

from workbench import hooks
from workbench.activations import stream
from workbench.config import StreamConfig
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.models.embedded import embedded_dir
from workbench.models.fast_path import explicit_path
from workbench.slices import corpus_batches

SHAPES = ((8, 128), (1, 1024), (1, 2048))
N_BATCHES = {128: 3, 1024: 2, 2048: 1}


class NormAccumulator:
    """The hooks and work of a typical streaming probe: every layer's residual and the final norm,
    reduced to norm sums; with the logits (so the pass does what a plain forward does)."""

    needs_logits = True

    def __init__(self, model):
        self.hook_names = [hooks.resid_post(l) for l in range(model.cfg.n_layers)] + [hooks.FINAL_NORM]
        self.sums = torch.zeros(len(self.hook_names), dtype=torch.float64, device=next(model.parameters()).device)

    def update(self, batch, acts, logits):
        for i, name in enumerate(self.hook_names):
            self.sums[i] += acts[name][batch.valid].norm(dim=-1).double().sum()

    def state_dict(self):
        return {"sums": self.sums}

    def load_state_dict(self, s):
        self.sums = s["sums"].clone()


def hf_model(device: str, dtype: str = "float32"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(embedded_dir()), dtype=getattr(torch, dtype)).to(device).eval()


def shape_batches(model, batch: int, seq: int, n_batches: int | None = None):
    n = n_batches or N_BATCHES[seq]
    cfg = StreamConfig(max_tokens=batch * seq * n, seq_len=seq, batch_size=batch, prepend_bos=True)
    return corpus_batches(model, load_corpus("brown"), cfg)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_hf(hf, batches, device: str) -> float:
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            hf(b.tokens.to(device)).logits
            n += b.n_tokens
    _sync(device)
    return n / (time.perf_counter() - t0)


def time_bare(model, batches, device: str) -> float:
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            model(b.tokens.to(device), return_type="logits")
            n += b.n_tokens
    _sync(device)
    return n / (time.perf_counter() - t0)


def time_stream(model, batches, device: str) -> float:
    t0 = time.perf_counter()
    stats = stream(model, batches, NormAccumulator(model), progress=False, check_memory_first=False)
    _sync(device)
    return stats.tokens / (time.perf_counter() - t0)


def throughput(model, hf, device: str, rounds: int) -> dict:
    out: dict = {}
    for batch, seq in SHAPES:
        batches = shape_batches(model, batch, seq)
        time_hf(hf, batches, device), time_stream(model, batches, device)  # warm-up
        rates: dict[str, list[float]] = {"hf": [], "stream": [], "stream_explicit": [], "bare": []}
        for _ in range(rounds):  # alternate, so load on a shared machine hits every pass alike
            rates["hf"].append(time_hf(hf, batches, device))
            rates["stream"].append(time_stream(model, batches, device))
            rates["bare"].append(time_bare(model, batches, device))
            with explicit_path(model):
                rates["stream_explicit"].append(time_stream(model, batches, device))
        tag = f"{batch}x{seq}"
        med = {k: statistics.median(v) for k, v in rates.items()}
        out[f"{tag}:hf_tok_s"] = med["hf"]
        out[f"{tag}:stream_tok_s"] = med["stream"]
        out[f"{tag}:stream_over_hf"] = statistics.median(s / h for s, h in zip(rates["stream"], rates["hf"]))
        out[f"{tag}:bare_over_hf"] = statistics.median(b / h for b, h in zip(rates["bare"], rates["hf"]))
        out[f"{tag}:explicit_stream_over_hf"] = statistics.median(s / h for s, h in zip(rates["stream_explicit"], rates["hf"]))
        print(f"  {tag}: hf {med['hf']:.0f} tok/s, stream {med['stream']:.0f} ({out[f'{tag}:stream_over_hf']:.2f}x), "
              f"explicit attention {out[f'{tag}:explicit_stream_over_hf']:.2f}x", flush=True)
    return out


# ----- peak memory, each measurement in a child process -----


class RSSPeak:
    """The highest resident set size seen while the block runs (sampled every 2 ms)."""

    def __enter__(self) -> "RSSPeak":
        self.proc = psutil.Process()
        self.before = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _child(mode: str, batch: int, seq: int, device: str, dtype: str = "float32") -> None:
    """One pass of one kind; prints {weights, transient, peak} in GiB as JSON."""
    model = load_model("smollm2-135m", device=device, dtype=dtype)
    batches = shape_batches(model, batch, seq)
    first = batches.batch(0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if mode == "hf":
        del model
        runner = hf_model(device, dtype)
        weights = sum(p.numel() * p.element_size() for p in runner.parameters())

        def run():
            with torch.inference_mode():
                runner(first.tokens.to(device)).logits
    else:
        one = shape_batches(model, batch, seq, n_batches=1)  # a single batch, like the plain pass

        def run():
            stream(model, one, NormAccumulator(model), progress=False, check_memory_first=False)

    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        transient = torch.cuda.max_memory_allocated() - base
    else:
        with RSSPeak() as m:
            run()
        transient = m.peak - m.before
    print(json.dumps({"weights_gib": weights / 2**30, "transient_gib": transient / 2**30,
                      "peak_gib": (weights + transient) / 2**30}))


def _peak(mode: str, batch: int, seq: int, device: str, dtype: str = "float32") -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.core", "--child", mode, "--shape", f"{batch}x{seq}", "--device", device,
                          "--dtype", dtype], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(device: str, dtype: str = "float32") -> dict:
    out = {}
    for batch, seq in SHAPES:
        s, h = _peak("stream", batch, seq, device, dtype), _peak("hf", batch, seq, device, dtype)
        tag = f"{batch}x{seq}"
        out.update({f"{tag}:stream_peak_gib": s["peak_gib"], f"{tag}:hf_peak_gib": h["peak_gib"],
                    f"{tag}:stream_transient_gib": s["transient_gib"], f"{tag}:hf_transient_gib": h["transient_gib"],
                    f"{tag}:stream_peak_over_hf": s["peak_gib"] / h["peak_gib"]})
    return out


def load_times() -> dict:
    out = {}
    t0 = time.perf_counter()
    load_model("smollm2-135m", device="cpu")
    out["warm_load_s"] = time.perf_counter() - t0
    cmd = [sys.executable, "-c", "from workbench.models import load_model; load_model('smollm2-135m', device='cpu')"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(cmd, env={**os.environ, "WORKBENCH_CACHE": tmp}, check=True, capture_output=True)
        out["cold_load_s_incl_imports"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    out["warm_load_s_incl_imports"] = time.perf_counter() - t0
    out["cold_over_warm"] = out["cold_load_s_incl_imports"] / out["warm_load_s_incl_imports"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per shape (medians are reported)")
    p.add_argument("--skip-cold", action="store_true", help="skip the load-time comparison (the cold load dequantises for ~40 s)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", choices=["stream", "hf"], help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="precision of both models (the workbench's and the plain transformers one)")
    p.add_argument("--skip-memory", action="store_true", help="skip the peak-memory comparison (six child processes)")
    args = p.parse_args(argv)
    if args.child:
        b, s = (int(x) for x in args.shape.split("x"))
        _child(args.child, b, s, args.device, args.dtype)
        return {}
    device = args.device
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
                 "threads": torch.get_num_threads(), "dtype": args.dtype}
    model = load_model("smollm2-135m", device=device, dtype=args.dtype)
    hf = hf_model(device, args.dtype)
    out.update(throughput(model, hf, device, args.rounds))
    del model, hf
    if not args.skip_memory:
        out.update(memory(device, args.dtype))
    if not args.skip_cold:
        out.update(load_times())
    for k, v in out.items():
        print(f"{k:>34}: {v:.3f}" if isinstance(v, float) else f"{k:>34}: {v}")
    return out


if __name__ == "__main__":
    main()
