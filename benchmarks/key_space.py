"""Benchmark: batched candidate decoding against one-at-a-time decoding (key-space probe).

Knowledge probing decodes one short answer per candidate first token, all from one prompt. Three
ways, on the same candidates, with identical outputs checked:

1. batched: `greedy_continue` (prompt run once, KV cache broadcast over the batch, finished rows dropped);
2. one at a time with the KV cache (`batch_size=1`: the prompt is re-run for every candidate);
3. one at a time without a cache (the whole sequence re-run for every new token, as the paper's script did).

Reports seconds and the ratios 2/1 and 3/1 (how many times faster batching is).
Usage: python -m benchmarks.key_space [--n 50] [--naive 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from probes.key_space import STOP_STRINGS, build_prompt, prompt_tokens, resolve_style
from workbench.generation import greedy_continue
from workbench.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=50, help="candidates decoded batched and one at a time with the cache")
    ap.add_argument("--naive", type=int, default=10, help="candidates decoded without a cache (slow; timed per candidate)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_model(a.model, numerics="raw")
    tok = model.tokenizer
    style = resolve_style("auto", tok)
    prefix = prompt_tokens(tok, build_prompt("Please show me some US states.", [], style, tok), style)
    with torch.inference_mode():
        first = model(torch.tensor([prefix]))[0, -1].topk(a.n).indices.tolist()
    kw = dict(max_new_tokens=a.max_new_tokens, stop_strings=STOP_STRINGS, show_progress=False)

    greedy_continue(model, prefix, first[:2], **kw)  # warm-up
    t0 = time.perf_counter()
    batched = greedy_continue(model, prefix, first, batch_size=a.batch_size, **kw)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = [greedy_continue(model, prefix, [t], batch_size=1, **kw)[0] for t in first]
    t_single = time.perf_counter() - t0
    m = min(a.naive, a.n)
    t0 = time.perf_counter()
    naive = [greedy_continue(model, prefix, [t], batch_size=1, use_cache=False, **kw)[0] for t in first[:m]]
    t_naive = (time.perf_counter() - t0) * a.n / max(m, 1)  # extrapolated to all n candidates
    same = [c.tokens for c in batched] == [c.tokens for c in single] and [c.tokens for c in naive] == [c.tokens for c in batched[:m]]
    out = {
        "model": a.model, "prompt_style": style, "prompt_tokens": len(prefix), "candidates": a.n, "threads": torch.get_num_threads(),
        "new_tokens_total": sum(len(c.tokens) for c in batched), "batched_s": round(t_batched, 2), "one_at_a_time_cache_s": round(t_single, 2),
        "one_at_a_time_no_cache_s_extrapolated": round(t_naive, 2), "naive_measured_on": m,
        "speedup_vs_one_at_a_time": round(t_single / t_batched, 2), "speedup_vs_no_cache": round(t_naive / t_batched, 2),
        "identical_outputs": same,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
