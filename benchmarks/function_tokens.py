"""Overhead of the token-feature graph accumulation over the model + SAE forward pass (target <= 20%).

Both runs stream the same Brown slice through the same forward pass (stopped after the deepest
SAE layer) and encode the same positions with the same SAEs; the baseline stops there, the
measured run also scatters the edges, counts activations, sums edge weights and keeps the top
contexts (`probes.function_tokens.BipartiteAccumulator`). Runs alternate and each variant keeps
its fastest repeat.

    python -m benchmarks.function_tokens                                         # SmolLM2, trained SAEs at 5/15/25
    python -m benchmarks.function_tokens --model tiny --tokens 4096              # random SAEs on the tiny model
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from probes.function_tokens import BipartiteAccumulator, sae_labels
from workbench import hooks
from workbench.activations import stream
from workbench.config import StreamConfig
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.saes import hook_name, load_sae, special_token_ids
from workbench.saes.quality import scored_mask
from workbench.slices import corpus_batches


class EncodeOnly:
    """The baseline: the SAEs encode the scored positions; nothing is accumulated."""

    needs_logits = False

    def __init__(self, saes: dict, exclude: list[int]):
        self.saes, self.exclude = saes, torch.tensor(exclude)
        self.hook_names = sorted({hook_name(s) for s in saes.values()})
        self.sink = torch.zeros(1)

    @torch.no_grad()
    def update(self, batch, acts, logits) -> None:
        flat = scored_mask(batch, self.exclude).reshape(-1).nonzero().squeeze(1)
        for sae in self.saes.values():
            f = sae.encode(acts[hook_name(sae)].reshape(-1, sae.cfg.d_in)[flat])
            self.sink += f[0, 0]  # keep the result alive

    def state_dict(self) -> dict:
        return {"sink": self.sink}

    def load_state_dict(self, s: dict) -> None:
        self.sink = s["sink"].clone()


def _saes(model, args) -> dict:
    if args.model == "tiny":
        import sys

        sys.path.insert(0, "tests")
        from sae_standins import random_topk_sae

        saes = [random_topk_sae(hook=hooks.resid_post(l), d_sae=512, k=16, seed=l) for l in range(model.cfg.n_layers)]
    else:
        saes = [load_sae(s, model=model) for s in args.saes]
    return dict(zip(sae_labels(saes), saes))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--saes", nargs="+", default=["trained:5", "trained:15", "trained:25"])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    model = load_model(args.model, device="cpu")
    saes = _saes(model, args)
    corpus = load_corpus("brown")
    batches = corpus_batches(model, corpus, StreamConfig(max_tokens=args.tokens, seq_len=128, batch_size=8))
    special = special_token_ids(model)
    vocab = model.cfg.d_vocab
    row_ids = torch.as_tensor(np.unique(batches.tc.tokens))
    weighted = row_ids[:100]

    def graph_acc(m: int) -> BipartiteAccumulator:
        return BipartiteAccumulator(saes, row_ids, vocab, weighted, special, top_contexts=m)

    variants = {"model+SAE": lambda: EncodeOnly(saes, special), "graph": lambda: graph_acc(0), "graph+contexts": lambda: graph_acc(5)}
    stream(model, batches, EncodeOnly(saes, special), progress=False)  # warm-up
    best = {k: float("inf") for k in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            t0 = time.perf_counter()
            stream(model, batches, make(), progress=False)
            best[name] = min(best[name], time.perf_counter() - t0)
    base = best["model+SAE"]
    out = {
        "model": args.model, "saes": {k: f"{hook_name(s)} d_sae={s.cfg.d_sae}" for k, s in saes.items()},
        "positions": batches.n_positions, "threads": torch.get_num_threads(),
        "seconds": best, "tokens_per_s": {k: batches.n_positions / v for k, v in best.items()},
        "overhead_graph": best["graph"] / base - 1, "overhead_graph_contexts": best["graph+contexts"] / base - 1,
    }
    print(f"{args.model}, {len(saes)} SAEs ({', '.join(out['saes'].values())}), {batches.n_positions} positions, {out['threads']} threads")
    for k, v in best.items():
        print(f"  {k:<16} {v:7.2f} s  {batches.n_positions / v:8.0f} tok/s")
    print(f"graph accumulation overhead over model+SAE forward: {100 * out['overhead_graph']:.1f}% "
          f"(ratio {best['graph'] / base:.3f}); with top contexts: {100 * out['overhead_graph_contexts']:.1f}% "
          f"(ratio {best['graph+contexts'] / base:.3f}); target <= 20%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return out


if __name__ == "__main__":
    main()
