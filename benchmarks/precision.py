"""Every probe on the embedded SmolLM2 in float32 and in bfloat16 (or float16): does the half-precision
run agree with float32 within the derived tolerance (`workbench.precision`), and how long does each
take here? Writes benchmarks/results/precision.txt.

    python -m benchmarks.precision [--dtype bfloat16] [--only residual-norms ...]

Budgets are a smoke run's (a few hundred tokens per probe), not a report's. The SAE-based probes
use a random TopK SAE at layer 15 (the comparison is about the model's precision, not the SAE's
quality). On a CPU without native bfloat16 (no AVX512-BF16 or AMX) bfloat16 matrix products are
several times slower than float32; the table says which this CPU has.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "precision.txt"
STREAM = {"max_tokens": 512, "seq_len": 64, "batch_size": 4}
SETTINGS = {
    "residual-norms": {},
    "attention-sinks": {"ablation_tokens": 64, "example_len": 16, "domains": []},
    "linguistic-collapse": {"heldout_max_tokens": 256},
    "sae-features": {},
    "function-tokens": {},
    "function-token-loss": {},
    "sinks-by-token-kind": {},
    "function-token-steering": {"sweep_templates": [], "strengths": [4.0, 16.0], "max_new_tokens": 6},
    "key-space": {"categories": ["planets", "days_of_week"], "top_n": 20, "n_explore": 4, "max_new_tokens": 8},
    "bigram-subnetworks": dict(lambdas=[0.0, 20.0], max_steps=10, lr=0.02, temp_growth=1.15, batch_size=2, seq_len=64,
                               eval_tokens=512, rotation_tokens=512, n_random=2, overlap_samples=200),
    "sae-circuits": {"n_prompts": 40, "baseline_prompts": 8, "epochs": 100, "n_seeds": 2},
}


def cpu_bf16() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    have = [f for f in ("amx_bf16", "avx512_bf16") if f" {f}" in flags]
    return ", ".join(have) if have else "none (bfloat16 is emulated)"


def main() -> None:
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from workbench.config import config_fields
    from workbench.corpora import load_corpus
    from workbench.models import load_model
    from workbench.precision import SUMMARY_FACTOR, logit_gap, summary_differences
    from workbench.probe_api import get_probe
    from workbench.runner import run_probe
    from workbench.store import ResultStore

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--only", nargs="*", default=list(SETTINGS))
    a = p.parse_args()

    brown = load_corpus("brown")
    store = ResultStore(tempfile.mkdtemp(prefix="wb-precision-"))
    sae_dir = Path(tempfile.mkdtemp()) / "sae"
    cfg = TopKSAEConfig(d_in=576, d_sae=1024, k=16, metadata=SAEMetadata(hook_name="blocks.15.hook_resid_post",
                                                                         model_name="smollm2-135m", prepend_bos=True))
    torch.manual_seed(0)
    TopKSAE(cfg).save_model(sae_dir)
    models: dict = {}

    def model(numerics: str, dtype: str):
        if (numerics, dtype) not in models:
            models[(numerics, dtype)] = load_model("smollm2-135m", numerics=numerics, device="cpu", dtype=dtype)
        return models[(numerics, dtype)]

    tok = model("raw", "float32").tokenizer
    batch = tok([d.text[:2000] for d in brown.documents[:4]], return_tensors="pt", truncation=True, max_length=128,
                padding="max_length")["input_ids"]
    gaps = {n: logit_gap(model(n, "float32"), model(n, a.dtype), batch) for n in ("raw", "processed")}
    lines = [f"# bfloat16 against float32 on SmolLM2-135M ({time.strftime('%Y-%m-%d')})", "",
             f"CPU native bfloat16: {cpu_bf16()}; torch threads {torch.get_num_threads()}",
             f"logit gap ({a.dtype} vs float32, 4 x 128 Brown tokens): raw {gaps['raw']:.4f}, processed {gaps['processed']:.4f}",
             f"rule: every numeric summary value within {SUMMARY_FACTOR} x gap x max(|v|, 1) of float32", "",
             f"| probe | float32 s | {a.dtype} s | continuous values | within | worst (diff / allowed) | counts that changed |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    for name in a.only:
        spec = get_probe(name)
        fields = config_fields(spec.config_cls)
        run_cfg = {k: v for k, v in STREAM.items() if k in fields}
        run_cfg.update(SETTINGS[name])
        for f in ("sae", "saes"):
            if f in fields:
                run_cfg[f] = [str(sae_dir)] if f == "saes" else str(sae_dir)
        corpus = brown if spec.needs_corpus else None
        try:
            t0 = time.time()
            if "feature" in fields:
                run_cfg["feature"] = int(run_probe(name, model(spec.numerics, "float32"), corpus, run_cfg, store=store).result.summary()["feature"])
            full = run_probe(name, model(spec.numerics, "float32"), corpus, run_cfg, store=store)
            t1 = time.time()
            half = run_probe(name, model(spec.numerics, a.dtype), corpus, run_cfg, store=store)
            t2 = time.time()
        except Exception as e:  # noqa: BLE001 - reported in the table
            lines.append(f"| {name} | | | | failed: {type(e).__name__}: {str(e)[:120]} | | |")
            print(lines[-1], flush=True)
            continue
        rows = summary_differences(full.result.summary(), half.result.summary(), gaps[spec.numerics])
        cont = [r for r in rows if not r["discrete"]]
        worst = max(cont, key=lambda r: r["diff"] / r["allowed"]) if cont else None
        changed = [f"{r['key']} {r['float32']} -> {r['half']}" for r in rows if r["discrete"] and r["diff"]]
        lines.append(f"| {name} | {t1 - t0:.1f} | {t2 - t1:.1f} | {len(cont)} | {sum(r['ok'] for r in cont)}/{len(cont)} | "
                     + (f"{worst['key']}: {worst['diff']:.3g} / {worst['allowed']:.3g}" if worst else "") + " | "
                     + ("; ".join(changed) or "none") + " |")
        print(lines[-1], flush=True)
        RESULTS.write_text("\n".join(lines) + "\n")  # after every probe: an interrupted run keeps what it measured
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
