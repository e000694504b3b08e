"""Wall time of SAE circuit discovery against the per-head patching baseline, same task and machine.

SAE method: position-averaged head outputs of every prompt (2 x `--pairs`), then one SAE trial
(500 epochs on 10 examples, argmax codes, node and edge scores). Baseline: per-head activation
patching (negative into positive) of every head on `--baseline-pairs` pairs. The ratio
baseline / SAE is printed with both times, the per-head patching cost and the machine's load
(other processes on a shared CPU slow both methods).

Usage: python -m benchmarks.sae_circuits [--model smollm2-135m] [--task ioi] [--pairs 250] [--baseline-pairs 64]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from probes.sae_circuits import (
    SAECircuitsConfig,
    edge_scores,
    head_outputs,
    head_patching,
    make_task,
    node_scores,
    sae_codes,
    train_sae,
    unique_cooccurrence,
)
from workbench.config import config_from_dict
from workbench.models import load_model


def main(argv: list[str] | None = None) -> dict:

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="ioi")
    p.add_argument("--pairs", type=int, default=250, help="positive/negative pairs for the SAE method")
    p.add_argument("--baseline-pairs", type=int, default=64, help="pairs the patching baseline runs on")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)

    cfg = config_from_dict(SAECircuitsConfig, {"task": args.task, "n_prompts": args.pairs, "batch_size": args.batch_size})
    model = load_model(args.model, numerics="processed")
    prompts = make_task(model, args.task, args.pairs, cfg.task_seed)
    load0 = os.getloadavg()[0]

    t0 = time.perf_counter()
    acts, _, _ = head_outputs(model, prompts, args.batch_size, progress=False)
    t_acts = time.perf_counter() - t0
    t0 = time.perf_counter()
    settings = cfg.sae_settings()
    sae, _, _ = train_sae(acts, settings, seed=0)
    codes = sae_codes(sae, acts)
    is_pos = torch.arange(acts.shape[0]) < len(prompts)
    node_scores(codes, is_pos, settings.n_features)
    edge_scores(unique_cooccurrence(codes, is_pos, settings.n_features), 0)
    t_sae = time.perf_counter() - t0

    base = head_patching(model, prompts.subset(args.baseline_pairs), "patching", args.batch_size, progress=False)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    out = {
        "model": args.model, "task": args.task, "heads": n_heads, "threads": torch.get_num_threads(),
        "load_avg_start": load0, "load_avg_end": os.getloadavg()[0],
        "sae_pairs": len(prompts), "head_outputs_s": t_acts, "sae_trial_s": t_sae, "sae_method_s": t_acts + t_sae,
        "baseline_pairs": base.n_pairs, "baseline_s": base.seconds, "baseline_s_per_head": base.seconds / n_heads,
        "baseline_over_sae": base.seconds / (t_acts + t_sae),
    }
    for k, v in out.items():
        print(f"{k:>20}: {v:.3f}" if isinstance(v, float) else f"{k:>20}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
