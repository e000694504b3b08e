"""Recipe: the SAEs the function-token experiment uses.

SmolLM2-135M (raw numerics) on Brown's train split, SAE Lens TopK SAEs (k = 64 on the cpu preset) at
`blocks.{5,15,25}.hook_resid_post` (early, middle, late of 30 layers). Each is cached by its full
recipe (model, corpus, spec) under `<cache>/saes/`, so running this again returns at once; the
probe finds them as `trained:5`, `trained:15`, `trained:25`.

    python -m experiments.train_saes                                     # CPU preset
    python -m experiments.train_saes --preset gpu --device cuda          # GPU preset

CPU preset: d_sae = 4 x 576 = 2304; one shared forward pass over 49,152 Brown tokens (stopped after
layer 25), then 393,216 training samples (8 shuffled passes over those activations) per SAE, with SAE
Lens's TopK dead-latent auxiliary loss; about 15 minutes in all on 2 cores. GPU preset: d_sae = 8 x 576 = 4608, 4M fresh tokens per SAE.

Quality on Brown's validation split (explained variance, L0, dead share, CE increase) is printed
and stored beside each SAE in `workbench_sae.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from workbench import hooks
from workbench.corpora import load_corpus
from workbench.models import load_model
from workbench.saes import preset_spec, read_recipe, train_saes

LAYERS = (5, 15, 25)


def train_all(layers: tuple[int, ...] = LAYERS, preset: str = "cpu", model_name: str = "smollm2-135m",
              corpus_name: str = "brown", device: str | None = None, progress: bool = True) -> dict[int, Path]:
    """Train (or reuse) one SAE per layer; returns {layer: SAE directory}."""

    model = load_model(model_name, numerics="raw", device=device)
    corpus = load_corpus(corpus_name)
    specs = [preset_spec(hooks.resid_post(layer), preset) for layer in layers]
    return dict(zip(layers, train_saes(model, corpus, specs, progress=progress)))


def quality_table(paths: dict[int, Path]) -> str:
    """Markdown table of the SAEs' recorded recipe and held-out quality."""

    lines = ["| layer | d_sae | k | distinct train tokens | train samples | train s | eval tokens | explained var. | L0 | dead share | "
             "CE clean | CE spliced | CE increase | CE recovered |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for layer, path in sorted(paths.items()):
        r = read_recipe(path)
        q, s = r["quality"], r["spec"]
        distinct = r.get("distinct_train_tokens") or s["training_tokens"]
        lines.append(f"| {layer} | {r['d_sae']} | {s['k']} | {distinct:,} | {s['training_tokens']:,} | {r['train_seconds']:.0f} | {q['n_tokens']:,} | "
                     f"{q['explained_variance']:.3f} | {q['l0']:.1f} | {q['dead_share']:.3f} | {q['ce_clean']:.3f} | "
                     f"{q['ce_spliced']:.3f} | {q['ce_increase']:.3f} | {q['ce_loss_recovered']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    p.add_argument("--preset", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--gpu", action="store_true", help="shorthand for --preset gpu --device cuda")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="brown")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    preset, device = ("gpu", args.device or "cuda") if args.gpu else (args.preset, args.device)
    paths = train_all(tuple(args.layers), preset, args.model, args.corpus, device)
    for layer, path in sorted(paths.items()):
        print(f"layer {layer}: {path}")
    print(quality_table(paths))


if __name__ == "__main__":
    main()
