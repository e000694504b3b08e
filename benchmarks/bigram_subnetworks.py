"""Bigram-subnetworks benchmark: one mask-training step against one plain training step on the
same model and batch (target: at most 1.5x).

- plain step: next-token cross-entropy, backward through every weight, AdamW on all parameters
  and gradient clipping (what `workbench.training.train` does per step);
- mask step: what the mask trainer does per step (`probes.bigram_subnetworks.mask_training.optimizer_step`):
  the masked forward through `functional_call` with W0 * sigmoid(T m), soft-target cross-entropy
  plus the penalty, backward to the mask logits only, AdamW on the logits, and the stopping-rule
  counts; measured with the bigram target rows given and, separately, built inside the step.

The model is the experiment's workbench LM (its cached weights when trained, else the same
architecture at initialisation: step cost does not depend on the weight values). Times are
process CPU seconds (robust on a shared machine) and wall seconds; medians over alternating reps.
Usage: python -m benchmarks.bigram_subnetworks [--batch-size 16] [--reps 5] [--preset cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from experiments.bigram_subnetworks import PRESETS
from probes.bigram_subnetworks import BigramModel, MaskLogits, optimizer_step
from workbench.tokenizers import load_tokenizer
from workbench.training import TrainConfig, frozen, make_optimizer, next_token_loss
from workbench.zoo import LMRecipe, checkpoints, load_lm, train_batches


def build(preset: str):
    from transformer_lens import HookedTransformer


    recipe = LMRecipe(**PRESETS[preset]["recipe"])
    if recipe.steps in checkpoints(recipe):
        return load_lm(recipe), recipe, "trained"
    tok = load_tokenizer(recipe.tokenizer)
    torch.manual_seed(0)
    return HookedTransformer(recipe.model_config(len(tok)), tokenizer=tok, default_padding_side="right"), recipe, "initialisation"


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model, recipe, weights = build(a.preset)
    model.cpu()
    batches = train_batches(recipe, "train")
    bigram = BigramModel.from_batches(batches, model.cfg.d_vocab)
    batch = batches.batch(0)
    tokens = batch.tokens[: a.batch_size]
    batch = type(batch)(batch.index, tokens, batch.valid[: a.batch_size], batch.is_bos[: a.batch_size],
                        batch.word_index[: a.batch_size], batch.doc_index[: a.batch_size])
    V = model.cfg.d_vocab

    plain_model = model
    opt = make_optimizer(plain_model, TrainConfig())
    logits = MaskLogits(model)
    mopt = torch.optim.AdamW(logits.parameters(), lr=5e-5, weight_decay=0.01)
    target = bigram.target_rows(batch.tokens, vocab_size=V)

    def plain() -> None:
        plain_model.train()
        for p in plain_model.parameters():
            p.requires_grad_(True)
        loss, _ = next_token_loss(plain_model, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 1.0)
        opt.step()

    def mask_given_target() -> None:
        with frozen(model):
            optimizer_step(model, logits, mopt, batch, target, 10.0, 2.0)

    def mask_with_target() -> None:
        with frozen(model):
            optimizer_step(model, logits, mopt, batch, bigram.target_rows(batch.tokens, vocab_size=V), 10.0, 2.0)

    fns = {"plain": plain, "mask": mask_given_target, "mask+target": mask_with_target}
    for f in fns.values():  # warm-up
        f()
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    for _ in range(a.reps):
        for k, f in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            f()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    out = {
        "model": recipe.name, "weights": weights, "batch": [a.batch_size, recipe.n_ctx], "threads": torch.get_num_threads(),
        "maskable": sum(p.numel() for p in logits.parameters()), "params": sum(p.numel() for p in model.parameters()),
        "cpu_s": {k: round(med(v), 4) for k, v in cpu.items()}, "wall_s": {k: round(med(v), 4) for k, v in wall.items()},
    }
    out["ratio_cpu"] = round(out["cpu_s"]["mask"] / out["cpu_s"]["plain"], 3)
    out["ratio_cpu_with_target"] = round(out["cpu_s"]["mask+target"] / out["cpu_s"]["plain"], 3)
    out["ratio_wall"] = round(out["wall_s"]["mask"] / out["wall_s"]["plain"], 3)
    out["target_ok"] = out["ratio_cpu_with_target"] <= 1.5
    print(json.dumps(out, indent=1))
    print(f"mask step / plain step: {out['ratio_cpu']:.2f}x CPU time ({out['ratio_cpu_with_target']:.2f}x with the bigram target "
          f"rows built in the step; wall {out['ratio_wall']:.2f}x); target <= 1.5x: {'met' if out['target_ok'] else 'NOT met'}")


if __name__ == "__main__":
    main()
