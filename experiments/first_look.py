"""The first look: every dashboard page filled from real runs on the embedded defaults in minutes.

Each step runs one analysis through the store, like any other run, at a small but honest budget
(stated in the run's registry label, which the page shows): the survey on a Brown slice, the
SAE-based analyses on one small SAE trained on the spot, bigram subnetworks and the collapse
sweep on the smallest models the workbench trains, SAE circuits on IOI with a few pairs. The
cpu preset (`workbench figures --preset cpu`) gives the report's numbers; this gives something
real to look at on every page while that runs. Steps already stored are reused, so a second
call takes seconds.

Usage: workbench figures --preset first-look   (or python -m experiments.first_look)
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Callable

from workbench.progress import format_seconds

LABEL = "first-look"
CPU_PRESET_MINUTES = 330  # the whole cpu preset on the 2-core reference machine (README)


@dataclass
class Step:
    page: str  # the dashboard page it fills
    title: str
    budget: str  # in words, for the registry label and the page
    estimate_s: float  # measured on the 2-core reference machine from a cold cache (a warm one is faster)
    run: Callable[["Context"], Any]


class Context:
    """Models loaded once and shared by the steps (on one device), and the budgets they run at."""

    def __init__(self, device: str, store, quick: bool = False):
        self.device, self.store, self.quick = device, store, quick
        self.budget = QUICK if quick else FULL
        self._models: dict[tuple[str, str], Any] = {}
        self._corpora: dict[str, Any] = {}
        self.sae_dir: str | None = None

    def model(self, name: str | None = None, numerics: str = "raw"):
        from workbench.models import load_model

        name = name or self.budget["model"]
        if (name, numerics) not in self._models:
            self._models[(name, numerics)] = load_model(name, numerics=numerics, device=self.device)
        return self._models[(name, numerics)]

    def corpus(self, name: str = "brown"):
        from workbench.corpora import load_corpus

        if name not in self._corpora:
            self._corpora[name] = load_corpus(name)
        return self._corpora[name]

    def probe(self, name: str, config: dict, model=None, corpus="brown"):
        from workbench.runner import run_probe

        return run_probe(name, model if model is not None else self.model(), self.corpus(corpus) if corpus else None, config,
                         store=self.store)


# ----------------------------------------------------------------------------- the budgets

SAE_LAYER = 15
FULL: dict[str, Any] = {
    "model": "smollm2-135m",
    "residual-norms": {"max_tokens": 8192, "seq_len": 128, "batch_size": 8},
    "attention-sinks": {"max_tokens": 1024, "seq_len": 128, "batch_size": 8, "ablation_tokens": 128},
    "bb": dict(n_layers=1, d_model=64, batch_size=16, seq_len=64, lr=3e-3, steps=1000, charset="letters", n_checkpoints=6),
    "bigram-backcopy": {"bb_sequences": 32, "dynamics_sequences": 16},
    "sae_layer": SAE_LAYER,
    "sae": dict(expansion=4, k=32, activation_tokens=24_576, training_tokens=98_304, train_batch_tokens=256, eval_tokens=4096),
    "function-token-loss": {"max_tokens": 4096},
    "function-tokens": {"max_tokens": 16_384},
    "sae-features": {"max_tokens": 8192},
    "loss-over-training": {"split": "validation", "max_tokens": 4096},
    "function-token-steering": {"strengths": [4.0, 8.0], "max_new_tokens": 10},
    "lm": dict(n_layers=2, d_model=64, n_heads=4, n_ctx=128, tokenizer="bytes", steps=1500, batch_size=8, warmup_steps=50,
               n_checkpoints=4, seed=0),
    "bigram-subnetworks": {"lambdas": [0.0, 100.0], "lr": 0.01, "temp_growth": 1.05, "max_steps": 200, "batch_size": 8, "seq_len": 128,
                           "eval_tokens": 4096, "rotation_tokens": 4096, "n_random": 2, "overlap_samples": 2000},
    "linguistic-collapse": {"max_tokens": 8192, "heldout_max_tokens": 2048},
    "sweep": {"depths": [1, 2], "widths": [32, 64], "steps": [100, 300], "seeds": [0],
              "probe": {"max_tokens": 8192, "heldout_max_tokens": 2048}},
    "key-space": {"categories": ["planets", "months", "days_of_week", "colours"], "top_n": 50, "top_k": 10, "n_explore": 6,
                  "max_new_tokens": 8, "batch_size": 50},
    "sae-circuits": {"task": "ioi", "n_prompts": 40, "n_seeds": 3, "epochs": 100, "baseline_prompts": 2, "graph_pairs": 8,
                     "attribution_too": False, "batch_size": 24},
}
# The same steps on tiny stand-ins, in seconds (the tests visit every page after this)
QUICK: dict[str, Any] = {
    **FULL,
    "model": "tiny-llama",
    "residual-norms": {"max_tokens": 512, "seq_len": 64, "batch_size": 4},
    "attention-sinks": {"max_tokens": 256, "seq_len": 64, "batch_size": 4, "ablation_tokens": 64},
    "bb": dict(n_layers=1, d_model=32, batch_size=4, seq_len=32, steps=20, charset="letters", n_checkpoints=2),
    "bigram-backcopy": {"bb_sequences": 8, "dynamics_sequences": 4},
    "sae_layer": 1,
    "sae": dict(expansion=2, k=8, activation_tokens=2048, training_tokens=4096, train_batch_tokens=256, eval_tokens=512),
    "function-token-loss": {"max_tokens": 512, "seq_len": 64},
    "function-tokens": {"max_tokens": 1024, "seq_len": 64},
    "sae-features": {"max_tokens": 1024, "seq_len": 64},
    "loss-over-training": {"split": "validation", "max_tokens": 512, "seq_len": 64},
    "function-token-steering": {"strengths": [4.0], "max_new_tokens": 4},
    "lm": dict(n_layers=1, d_model=32, n_heads=2, n_ctx=64, tokenizer="bytes", steps=20, batch_size=4, warmup_steps=2,
               n_checkpoints=2, seed=0),
    "bigram-subnetworks": {"lambdas": [0.0, 100.0], "max_steps": 10, "batch_size": 4, "seq_len": 64, "eval_tokens": 512,
                           "rotation_tokens": 512, "n_random": 2, "overlap_samples": 200},
    "linguistic-collapse": {"max_tokens": 1024, "heldout_max_tokens": 512, "seq_len": 64},
    "sweep": {"depths": [1], "widths": [16, 32], "steps": [5, 10], "seeds": [0], "probe": {"max_tokens": 512, "heldout_max_tokens": 256}},
    "key-space": {"categories": ["planets", "months"], "top_n": 16, "top_k": 4, "n_explore": 5, "max_new_tokens": 6, "icn_per_round": 2,
                  "batch_size": 8, "n_clusters": 6},
    "sae-circuits": {"task": "greater-than", "n_prompts": 16, "n_seeds": 2, "epochs": 40, "n_features": 16, "baseline_prompts": 8,
                     "threshold": 0.1, "batch_size": 8},
}


# ----------------------------------------------------------------------------- the steps


def _residual_norms(ctx: Context):
    return ctx.probe("residual-norms", ctx.budget["residual-norms"])


def _attention_sinks(ctx: Context):
    return ctx.probe("attention-sinks", ctx.budget["attention-sinks"])


def _bigram_backcopy(ctx: Context):
    from probes.attention_sinks import BBRecipe, load_bb, train_bb

    recipe = BBRecipe(**ctx.budget["bb"])
    train_bb(recipe, device=ctx.device)
    return ctx.probe("bigram-backcopy", ctx.budget["bigram-backcopy"], model=load_bb(recipe, device=ctx.device), corpus=None)


def _sae_dir(ctx: Context) -> str:
    """The one SAE the function-token and feature steps share (trained once; reused when stored)."""
    from workbench import hooks
    from workbench.saes import preset_spec, train_saes

    if ctx.sae_dir is None:
        spec = preset_spec(hooks.resid_post(ctx.budget["sae_layer"]), "cpu", **ctx.budget["sae"])
        ctx.sae_dir = str(train_saes(ctx.model(), ctx.corpus(), [spec])[0])
    return ctx.sae_dir


def _small_lm(ctx: Context):
    """The small byte-level Brown LM (with checkpoints) that the function-token loss over training
    and bigram subnetworks share (trained once; reused when cached)."""
    from workbench.zoo import LMRecipe, train_lm

    recipe = LMRecipe(**ctx.budget["lm"])
    train_lm(recipe, device=ctx.device)
    return recipe


def _function_tokens(ctx: Context):
    from probes.function_tokens import FunctionTokenLossConfig, loss_over_checkpoints

    sae = _sae_dir(ctx)
    ctx.probe("function-token-loss", ctx.budget["function-token-loss"])
    loss_over_checkpoints(_small_lm(ctx), ctx.corpus(), FunctionTokenLossConfig(**ctx.budget["loss-over-training"]), store=ctx.store,
                          device=ctx.device)
    ctx.probe("function-token-steering", {"sae": sae, **ctx.budget["function-token-steering"]})
    return ctx.probe("function-tokens", {"saes": [sae], **ctx.budget["function-tokens"]})


def _sae_features(ctx: Context):
    return ctx.probe("sae-features", {"sae": _sae_dir(ctx), **ctx.budget["sae-features"]})


def _bigram_subnetworks(ctx: Context):
    from workbench.zoo import load_lm

    return ctx.probe("bigram-subnetworks", ctx.budget["bigram-subnetworks"], model=load_lm(_small_lm(ctx), device=ctx.device))


def _linguistic_collapse(ctx: Context):
    from workbench.runner import run_study

    out = ctx.probe("linguistic-collapse", ctx.budget["linguistic-collapse"])
    run_study("linguistic-collapse-sweep", ctx.budget["sweep"], store=ctx.store, device=ctx.device)
    return out


def _key_space(ctx: Context):
    return ctx.probe("key-space", ctx.budget["key-space"], corpus=None)


def _sae_circuits(ctx: Context):
    return ctx.probe("sae-circuits", ctx.budget["sae-circuits"], model=ctx.model(numerics="processed"), corpus=None)


STEPS = [
    Step("/residual-norms", "residual norms", "8,192 Brown tokens", 75, _residual_norms),
    Step("/attention-sinks", "Bigram-Backcopy toy model", "a 1-layer, 64-wide BB model trained 1,000 steps", 15, _bigram_backcopy),
    Step("/attention-sinks", "attention-sink survey", "1,024 tokens per domain, 128 for the 270-head ablation", 110, _attention_sinks),
    Step("/function-tokens", "function tokens", f"one TopK SAE at layer {SAE_LAYER} (24,576 tokens, 98,304 samples); graph on "
         "16,384 tokens; loss over a small byte LM's 4 checkpoints; steering at 2 strengths", 160, _function_tokens),
    Step("/sae-features", "SAE features", f"the layer-{SAE_LAYER} SAE's features on 8,192 Brown tokens", 15, _sae_features),
    Step("/bigram-subnetworks", "bigram subnetworks", "a 2-layer, 64-wide byte LM trained 1,500 steps; masks at 2 lambdas, "
         "200 steps", 20, _bigram_subnetworks),
    Step("/linguistic-collapse", "linguistic collapse", "8,192 tokens; a sweep of 8 small LMs trained 100 and 300 steps", 110,
         _linguistic_collapse),
    Step("/key-space", "key space", "4 categories, 6 explorations each", 70, _key_space),
    Step("/sae-circuits", "SAE circuits", "IOI, 40 prompt pairs, 3 seeds", 30, _sae_circuits),
]


def plan_seconds() -> float:
    return sum(s.estimate_s for s in STEPS)


def print_plan() -> None:
    print(f"first look: {len(STEPS)} steps on smollm2-135m and Brown (and the small models it trains), about "
          f"{format_seconds(plan_seconds())} on a 2-core CPU")
    for s in STEPS:
        print(f"  {s.page:<22} {s.title:<28} {s.budget} (about {format_seconds(s.estimate_s)})")


def main(device: str | None = None, store=None, only: list[str] | None = None, quick: bool = False) -> dict[str, float]:
    """Run every step (or those whose title is in `only`); return the seconds each took. `quick`
    runs the same steps on tiny stand-ins in seconds (for tests)."""
    from workbench.active_run import labelled
    from workbench.models import default_device
    from workbench.store import ResultStore

    device = device or default_device()
    ctx = Context(device, store or ResultStore(), quick=quick)
    steps = [s for s in STEPS if not only or s.title in only]
    total = sum(s.estimate_s for s in steps)
    print(f"first look: {len(steps)} steps, about {format_seconds(total)} here (2-core CPU); the cpu preset takes about "
          f"{CPU_PRESET_MINUTES // 60} h {CPU_PRESET_MINUTES % 60} min", flush=True)
    took: dict[str, float] = {}
    t_all = time.perf_counter()
    left = total
    for i, step in enumerate(steps, 1):
        print(f"\n[{i}/{len(steps)}] {step.title} ({step.budget}): about {format_seconds(step.estimate_s)}, "
              f"{format_seconds(left)} left", flush=True)
        t0 = time.perf_counter()
        with labelled(f"{LABEL}: {'tiny stand-ins' if quick else step.budget}"):
            step.run(ctx)
        took[step.title] = time.perf_counter() - t0
        left -= step.estimate_s
        print(f"[{i}/{len(steps)}] {step.title}: {format_seconds(took[step.title])}", flush=True)
    took["total"] = time.perf_counter() - t_all
    print(f"\nfirst look done in {format_seconds(took['total'])}; open the dashboard: workbench dashboard", flush=True)
    return took


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="cpu | cuda (default: cuda when present)")
    p.add_argument("--only", nargs="*", help="step titles to run")
    a = p.parse_args()
    main(a.device, only=a.only)
