"""Named presets for `python -m experiments.run_all --preset NAME` (and `workbench figures --preset NAME`).

A preset maps every experiment to an entry of that experiment's own settings table (each
experiment module declares its `PRESETS` table with `declare`, which adds an entry for every named
preset that overrides anything, so the table is whole when the module is imported and nothing
writes into it later) plus overrides of single entries, such as the model. The named GPU presets run the same scripts on the models the papers
used, at the experiments' "gpu" budgets:

- `first-look`: every dashboard page filled in minutes at small budgets (experiments/first_look.py;
  the dashboard says so beside each of its runs);
- `cpu`: the embedded defaults (SmolLM2-135M, Brown) at budgets that fit a 2-core CPU;
- `gpu`: the embedded model at the larger "gpu" budgets;
- `gpt2-small`: GPT-2 small (TransformerLens name `gpt2`); pretrained SAEs from the SAE Lens
  release `gpt2-small-res-jb` (residual stream, `blocks.L.hook_resid_pre`);
- `pythia-70m`: Pythia-70M-deduped, the model of the SAE Lens release `pythia-70m-deduped-res-sm`
  (`blocks.L.hook_resid_post`);
- `pythia-160m`: Pythia-160M-deduped; SAE Lens has no residual-stream release for it, so SAEs are
  trained by the workbench (its "gpu" SAE recipe).

Under a hub preset every experiment runs its model part on the preset's model: attention sinks'
LM survey, function tokens (with the release's SAEs, or trained ones for Pythia-160M), bigram
subnetworks (masks on the pretrained model's raw weights), the pretrained-model part of linguistic
collapse, key-space geometry, the SAE-circuit LM tasks and the cross-analysis views. What stays the
same is stated in `Setting.note`, printed by run_all and recorded in the report: the small models
trained by the workbench on Brown (the Bigram-Backcopy toys, the linguistic-collapse size sweep, the
Brown LM of the function-token loss-over-training curves) are the same whatever the preset, and every
analysis reads Brown, not the models' pretraining text.

The hub presets need the weights: online, or an already filled Hugging Face cache
(`check_weights` says which are missing without downloading anything).

Usage:
    python -m experiments.presets                     # list the presets and what each one sets
    python -m experiments.presets --check gpt2-small  # validate it; list missing hub weights
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field
from typing import Any


def experiments() -> list[str]:
    """The registered reports' names, in report order (the `workbench.reports` entry points)."""
    from workbench.probe_api import list_reports

    return [r.name for r in list_reports()]


class UnknownPresetError(SystemExit):
    """An unknown preset name; the message lists the known ones (a SystemExit, so the CLI prints it)."""


@dataclass(frozen=True)
class Setting:
    """One experiment under a preset: its base settings entry, overrides of that entry, and what it cannot take."""

    base: str = "cpu"  # key of the experiment module's own settings table
    overrides: dict[str, Any] = field(default_factory=dict)  # replaced keys of that entry
    note: str = ""  # what this preset does not change for this experiment


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: str  # the model most experiments run on (a workbench / TransformerLens name)
    device: str  # "cpu" or "cuda": what the budgets were sized for
    hub_models: tuple[str, ...] = ()  # TransformerLens names whose weights come from the Hugging Face hub
    saes: tuple[str, ...] = ()  # SAE Lens releases as "release:sae_id" (empty: workbench-trained SAEs)
    experiments: dict[str, Setting] = field(default_factory=dict)

    def setting(self, experiment: str) -> Setting:
        known = experiments()
        if experiment not in known:
            raise SystemExit(f"unknown experiment {experiment!r}; choose from {known}")
        return self.own_setting(experiment)

    def own_setting(self, experiment: str) -> Setting:
        """What this preset sets for `experiment` (its base entry when it names nothing else)."""
        return self.experiments.get(experiment, Setting(base="gpu" if self.device == "cuda" else "cpu"))


_NC_SWEEP = "the size sweep still trains workbench models on Brown (the `gpu` grid); the pretrained-model part runs on {model}"
_BIGRAM = "masks {model}'s raw weights on Brown (bigram counts from Brown's train split); the workbench Brown LM is not trained"


def _hub(name: str, model: str, layers: tuple[int, ...], steer_layer: int, saes: tuple[str, ...], description: str,
         circuits: bool = True) -> Preset:
    exps = {
        "attention_sinks": Setting("gpu", {"lm": model}, note="the Bigram-Backcopy toy models are the same as under `gpu`"),
        "function_tokens": Setting("gpu", {"model": model, "layers": layers, "steer_layer": steer_layer, "saes": saes},
                                   note=("the SAE Lens SAEs are loaded, not trained" if saes else
                                         "no SAE Lens residual release exists for this model: the experiment trains its own SAEs "
                                         "at these layers (SAE Lens trainer, `gpu` SAE recipe)")
                                   + "; the loss-over-training curves still come from the workbench's Brown LM"),
        "bigram_subnetworks": Setting("gpu", {"model": model}, note=_BIGRAM.format(model=model)),
        "linguistic_collapse": Setting("gpu", {"model": model}, note=_NC_SWEEP.format(model=model)),
        "key_space": Setting("gpu", {"model": model}),
        "sae_circuits": Setting("gpu", {"lm": model} if circuits else {},
                                note="" if circuits else "the LM tasks stay on the embedded model"),
        "cross_analysis": Setting("gpu", {"model": model, "saes": list(saes), "sae_layers": tuple(layers)}),
    }
    return Preset(name, description, model, "cuda", (model,), saes, exps)


PRESETS: dict[str, Preset] = {
    "cpu": Preset("cpu", "embedded defaults (SmolLM2-135M-Instruct, Brown) at budgets sized for a 2-core CPU", "smollm2-135m", "cpu",
                  experiments={}),
    "gpu": Preset("gpu", "the embedded model at the experiments' larger GPU budgets", "smollm2-135m", "cuda",
                  experiments={}),
    "gpt2-small": _hub("gpt2-small", "gpt2", (2, 6, 10), 6,
                       tuple(f"gpt2-small-res-jb:blocks.{l}.hook_resid_pre" for l in (2, 6, 10)),
                       "GPT-2 small (12 layers) with SAE Lens's gpt2-small-res-jb residual SAEs"),
    "pythia-70m": _hub("pythia-70m", "pythia-70m-deduped", (1, 3, 5), 3,
                       tuple(f"pythia-70m-deduped-res-sm:blocks.{l}.hook_resid_post" for l in (1, 3, 5)),
                       "Pythia-70M-deduped (6 layers) with SAE Lens's pythia-70m-deduped-res-sm residual SAEs"),
    "pythia-160m": _hub("pythia-160m", "pythia-160m-deduped", (2, 6, 10), 6, (),
                        "Pythia-160M-deduped (12 layers); no SAE Lens residual release exists for it, so SAEs are trained"),
}


FIRST_LOOK = "first-look"  # not a settings table: experiments/first_look.py runs every page's analysis at a small budget


def known() -> list[str]:
    return [*PRESETS, FIRST_LOOK]


def resolve(name: str) -> Preset:
    """The preset called `name`; an error naming the known presets otherwise."""
    if name not in PRESETS:
        raise UnknownPresetError(f"unknown preset {name!r}; known presets: {', '.join(known())} "
                                 "(see `python -m experiments.presets`)")
    return PRESETS[name]


def declare(experiment: str, table: dict[str, Any]) -> dict[str, Any]:
    """An experiment's whole settings table: its own entries and one entry per named preset that
    overrides any of them (a copy of the preset's base entry with the overrides). A preset that
    overrides a key the entry does not have, or names a base the table lacks, is refused here, at
    import, with the preset's name."""
    whole = dict(table)
    for p in PRESETS.values():
        s = p.own_setting(experiment)
        if s.base not in table:
            raise SystemExit(f"preset {p.name!r} runs experiments.{experiment} on its {s.base!r} entry, which its table "
                             f"lacks (it has {sorted(table)})")
        if not s.overrides:
            continue
        entry = copy.deepcopy(table[s.base])
        unknown = sorted(set(s.overrides) - set(entry)) if isinstance(entry, dict) else sorted(s.overrides)
        if unknown:
            raise SystemExit(f"preset {p.name!r} overrides {unknown} of experiments.{experiment}, whose {s.base!r} entry "
                             f"has only {sorted(entry)}")
        entry.update(copy.deepcopy(s.overrides))
        whole[p.name] = entry
    return whole


def key_for(preset: Preset, experiment: str, quick: bool = False) -> str:
    """The entry of the experiment's settings table that `preset` runs: "quick", the preset's own
    entry when it overrides anything, else its base entry."""
    s = preset.setting(experiment)
    return "quick" if quick else preset.name if s.overrides else s.base


def validate(preset: Preset) -> list[str]:
    """Offline checks: hub names are TransformerLens models, SAE ids are in SAE Lens's release
    directory, and every experiment's table has the entry the preset runs (an override of a key an
    entry lacks is refused when the experiment's module is imported). Returns problems."""
    problems: list[str] = []
    for m in preset.hub_models:
        try:
            import transformer_lens.loading_from_pretrained as tl_loading

            tl_loading.get_official_model_name(m)
        except ValueError:
            problems.append(f"{m!r} is not a TransformerLens model name")
    if preset.saes:
        from sae_lens.loading.pretrained_saes_directory import (
            get_pretrained_saes_directory,
        )

        directory = get_pretrained_saes_directory()
        for src in preset.saes:
            release, _, sae_id = src.partition(":")
            if release not in directory:
                problems.append(f"SAE Lens has no release {release!r}")
            elif sae_id not in directory[release].saes_map:
                problems.append(f"SAE Lens release {release!r} has no SAE {sae_id!r}")
            elif preset.model not in (directory[release].model, f"{directory[release].model}".replace("gpt2-small", "gpt2")):
                problems.append(f"SAE Lens release {release!r} is for {directory[release].model!r}, not {preset.model!r}")
    from workbench.probe_api import get_report

    for exp in experiments():
        if key_for(preset, exp) not in get_report(exp).presets:
            problems.append(f"experiments.{exp} has no settings entry {key_for(preset, exp)!r}")
    return problems


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # one of them (or their sharded index)
TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))  # one of these sets


@dataclass(frozen=True)
class NeededFile:
    repo: str
    files: tuple[str, ...]  # all of these (for a choice, the first alternative or the one that is cached)
    what: str
    cached: bool


def _cached(repo: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def _shards(repo: str, index_file: str) -> tuple[str, ...] | None:
    import json

    path = _cached(repo, index_file)
    if path is None:
        return None
    return tuple(sorted(set(json.loads(open(path).read())["weight_map"].values())))


def needed_files(preset: Preset) -> list[NeededFile]:
    """Every hub file the preset reads (model config, weights, tokenizer; SAE config and weights),
    and whether the local Hugging Face cache holds it. Nothing is downloaded."""
    import transformer_lens.loading_from_pretrained as tl_loading

    out: list[NeededFile] = []
    for m in preset.hub_models:
        repo = tl_loading.get_official_model_name(m)
        out.append(NeededFile(repo, ("config.json",), f"{m}: config", _cached(repo, "config.json") is not None))
        weights = None
        for single in WEIGHT_FILES:
            shards = _shards(repo, f"{single}.index.json")
            if shards is not None:
                weights = (f"{single}.index.json", *shards)
                break
            if _cached(repo, single):
                weights = (single,)
                break
        weights = weights or (WEIGHT_FILES[0],)
        out.append(NeededFile(repo, weights, f"{m}: weights (or {WEIGHT_FILES[1]})", all(_cached(repo, f) for f in weights)))
        tok = next((s for s in TOKENIZER_FILES if all(_cached(repo, f) for f in s)), TOKENIZER_FILES[0])
        out.append(NeededFile(repo, (*tok, "tokenizer_config.json"), f"{m}: tokenizer",
                              all(_cached(repo, f) for f in (*tok, "tokenizer_config.json"))))
    if preset.saes:
        from sae_lens.loading.pretrained_saes_directory import (
            get_pretrained_saes_directory,
        )

        directory = get_pretrained_saes_directory()
        for src in preset.saes:
            release, _, sae_id = src.partition(":")
            entry = directory[release]
            folder = entry.saes_map[sae_id]
            files = tuple(f"{folder}/{f}" for f in ("cfg.json", "sae_weights.safetensors"))
            out.append(NeededFile(entry.repo_id, files, f"SAE {src}", all(_cached(entry.repo_id, f) for f in files)))
    return out


def check_weights(preset: Preset) -> list[str]:
    """Hub files the preset needs that are not in the local Hugging Face cache, as "repo: file" (nothing is downloaded)."""
    return [f"{n.repo}: {f}" for n in needed_files(preset) if not n.cached for f in n.files]


def describe(preset: Preset) -> str:
    lines = [f"{preset.name}: {preset.description} (model {preset.model}, sized for {preset.device})"]
    if preset.saes:
        lines.append(f"  SAE Lens SAEs: {', '.join(preset.saes)}")
    for exp in experiments():
        s = preset.setting(exp)
        over = ", ".join(f"{k}={v!r}" for k, v in s.overrides.items())
        lines.append(f"  {exp}: {s.base}{' + ' + over if over else ''}{'; ' + s.note if s.note else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", metavar="PRESET", help="validate one preset offline and list hub weights missing from the cache")
    a = ap.parse_args()
    if a.check:
        p = resolve(a.check)
        print(describe(p))
        issues = validate(p)
        print("\n".join(f"problem: {i}" for i in issues) or "valid")
        needed = needed_files(p)
        for n in needed:
            print(f"  {'cached ' if n.cached else 'MISSING'}  {n.repo}: {', '.join(n.files)}  ({n.what})")
        missing = [n for n in needed if not n.cached]
        print(f"{len(missing)} of {len(needed)} needed file sets are missing from the Hugging Face cache; carry them to an offline "
              "machine with `huggingface-cli download <repo> <files>` (or copy ~/.cache/huggingface/hub/models--<org>--<name>) "
              "and run with HF_HUB_OFFLINE=1" if missing else
              "all needed files are in the local cache" if needed else "weights: embedded (nothing to download)")
    else:
        print("\n\n".join(describe(p) for p in PRESETS.values()))
