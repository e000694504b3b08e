"""Training SAEs with SAE Lens's own trainer on any hooked model, hook and workbench corpus.

Two ways, chosen by `SAETrainSpec.activation_tokens`:
- streaming (None; the "gpu" preset): a corpus split is tokenised into BOS-prefixed rows of
  `context_size` tokens (documents joined by EOS) and handed to `LanguageModelSAETrainingRunner`
  as a pre-tokenised dataset with our HookedTransformer as `override_model` (SAE Lens drives it
  with `run_with_cache`); every training sample is a fresh token.
- in memory (a token count; the "cpu" preset): that many training-split tokens go through the
  model once (stopped after the deepest hook; several SAEs of one model share the pass, see
  `train_saes`), and SAE Lens's `SAETrainer` trains on shuffled passes over the kept activations.
  On 2 CPU cores the model's forward pass dominates, so reusing activations buys far more steps.
Either way BOS, EOS and PAD positions are excluded (BOS residuals are outliers by orders of
magnitude in many models), the SAE is saved in SAE Lens's own format, and its quality on the
validation split is measured (`workbench.saes.quality`) and written with the recipe to
`workbench_sae.json` beside the weights.

SAEs are cached by recipe under `<cache>/saes/`, keyed by model id + numerics, corpus, and spec.
A training run is not resumable: a killed run starts again.

Presets: "cpu" (TopK, 4x expansion, k=64; 49,152 distinct tokens, 393,216 samples in 8 passes;
about four minutes per SAE of SmolLM2 on 2 cores besides the shared forward pass) and "gpu"
(TopK, 8x, streaming 4M fresh tokens, larger batches; about four passes over Brown's train split).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from workbench.config import StreamConfig
from workbench.corpora.base import Corpus
from workbench.errors import ConfigError
from workbench.io import write_json
from workbench.models.info import model_info
from workbench.progress import progress_bar
from workbench.saes.files import is_sae_dir
from workbench.saes.loading import load_local
from workbench.saes.quality import evaluate_sae, special_token_ids
from workbench.saes.recipes import (
    RECIPE_FILE,
    SAETrainSpec,
    resolved_d_sae,
    trained_dir,
)
from workbench.slices import corpus_batches


def training_rows(model: HookedTransformer, corpus: Corpus, spec: SAETrainSpec) -> torch.Tensor:
    """[n_rows, context_size] token rows ([BOS] + text, documents joined by EOS), shuffled documents.

    Enough rows for the whole run (norm estimate and the buffer's last refill included), so the
    data is seen once.
    """
    need = spec.training_tokens + spec.n_batches_for_norm_estimate * spec.train_batch_tokens
    need += 2 * spec.n_batches_in_buffer * spec.context_size + spec.store_batch_prompts * spec.context_size
    cfg = StreamConfig(split=spec.split, max_tokens=int(need * 1.1), seq_len=spec.context_size, batch_size=64,
                       prepend_bos=True, shuffle_docs=True, seed=spec.seed)
    batches = corpus_batches(model, corpus, cfg)
    rows = [b.tokens[b.valid.all(dim=1)] for b in batches]
    out = torch.cat(rows)
    if out.shape[0] == 0:
        raise ConfigError(f"the {spec.split!r} split gives no full rows of {spec.context_size} tokens")
    return out


def _sae_config(spec: SAETrainSpec, d_in: int, d_sae: int):
    from sae_lens import (
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAEConfig,
        TopKTrainingSAEConfig,
    )

    common = dict(d_in=d_in, d_sae=d_sae, normalize_activations="expected_average_only_in")
    if spec.architecture == "topk":
        return TopKTrainingSAEConfig(k=spec.k, **common)
    if spec.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=spec.k, **common)
    return JumpReLUTrainingSAEConfig(l0_coefficient=spec.l0_coefficient, **common)


class _ProgressProvider:
    """Wraps SAE Lens's activation store to drive the workbench progress bar (and callback)."""

    def __init__(self, store, bar):
        self._store, self._bar = store, bar

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        batch = next(self._store)
        self._bar.update(int(batch.shape[0]))
        return batch

    def __getattr__(self, name: str):
        return getattr(self._store, name)


def _runner_config(model: HookedTransformer, corpus: Corpus, spec: SAETrainSpec, d_in: int, d_sae: int, output: Path):
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    steps = spec.n_steps
    decay = int(steps * spec.lr_decay_fraction)
    return LanguageModelSAERunnerConfig(
        sae=_sae_config(spec, d_in, d_sae),
        model_name=model_info(model).id, model_class_name="HookedTransformer", hook_name=spec.hook_name,
        dataset_path=corpus.id, is_dataset_tokenized=True, streaming=False, context_size=spec.context_size,
        prepend_bos=True, exclude_special_tokens=special_token_ids(model),
        training_tokens=spec.training_tokens, train_batch_size_tokens=spec.train_batch_tokens,
        store_batch_size_prompts=spec.store_batch_prompts, n_batches_in_buffer=spec.n_batches_in_buffer,
        n_batches_for_norm_estimate=spec.n_batches_for_norm_estimate,
        lr=spec.lr, lr_warm_up_steps=min(spec.lr_warm_up_steps, max(steps - decay - 1, 0)), lr_decay_steps=decay,
        dead_feature_window=spec.dead_feature_window, feature_sampling_window=max(2 * spec.dead_feature_window, 1),
        device=str(next(model.parameters()).device), dtype="float32", seed=spec.seed, model_from_pretrained_kwargs={},
        logger=LoggingConfig(log_to_wandb=False), checkpoint_path=None, output_path=str(output), verbose=False,
    )


def _hook_stop_layer(hook: str) -> int | None:
    """The `stop_at_layer` that still computes `hook` (None: run the whole model)."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    return int(m.group(1)) + 1 if m else None


@torch.no_grad()
def collect_activations(model: HookedTransformer, corpus: Corpus, hooks: list[str], spec: SAETrainSpec,
                        progress: bool = True) -> dict[str, torch.Tensor]:
    """Activations at `hooks` for `spec.activation_tokens` training-split tokens (one forward pass,
    stopped after the deepest hook), BOS / EOS / PAD positions dropped: {hook: [n, d_in]}."""
    n_tokens = spec.activation_tokens or spec.training_tokens
    cfg = StreamConfig(split=spec.split, max_tokens=n_tokens, seq_len=spec.context_size, batch_size=spec.store_batch_prompts,
                       prepend_bos=True, shuffle_docs=True, seed=spec.seed)
    batches = corpus_batches(model, corpus, cfg)
    stops = [_hook_stop_layer(h) for h in hooks]
    stop = None if None in stops else max(stops)  # type: ignore[type-var]
    dev = next(model.parameters()).device
    exclude = torch.tensor(special_token_ids(model), dtype=torch.long, device=dev)
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    with progress_bar(batches.n_positions, "collect SAE training activations", unit="tok", enabled=progress) as bar:
        for b in batches:
            tokens = b.tokens.to(dev)
            _, cache = model.run_with_cache(tokens, names_filter=list(hooks), stop_at_layer=stop)
            keep = b.valid.to(dev) & ~b.is_bos.to(dev) & ~torch.isin(tokens, exclude)
            for h in hooks:
                act = cache[h]
                out[h].append(act.reshape(*act.shape[:2], -1)[keep].float())
            bar.update(int(b.valid.sum()))
    acts = {h: torch.cat(v) for h, v in out.items()}
    if next(iter(acts.values())).shape[0] < spec.train_batch_tokens:
        raise ConfigError(f"the {spec.split!r} split gives fewer than one training batch ({spec.train_batch_tokens}) of activations")
    return acts


def _shuffled_passes(acts: torch.Tensor, batch: int, seed: int):
    """Batches of `batch` rows, drawn without replacement within each pass, pass after pass."""
    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=g).to(acts.device)
        for i in range(0, n - batch + 1, batch):
            yield acts[perm[i : i + batch]]


def _fit_in_memory(model: HookedTransformer, corpus: Corpus, spec: SAETrainSpec, acts: torch.Tensor, d_in: int, d_sae: int,
                   tmp: Path, progress: bool):
    """SAE Lens's SAETrainer on in-memory activations; saves SAE Lens's files into `tmp`."""
    from sae_lens import TrainingSAE, TrainingSAEConfig
    from sae_lens.constants import RUNNER_CFG_FILENAME, SPARSITY_FILENAME
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import save_file

    cfg = _runner_config(model, corpus, spec, d_in, d_sae, tmp)
    torch.manual_seed(spec.seed)
    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict())
    md = sae.cfg.metadata  # what SAE Lens's runner records before training
    md.dataset_path, md.hook_name, md.model_name, md.model_class_name = cfg.dataset_path, cfg.hook_name, cfg.model_name, cfg.model_class_name
    md.context_size, md.prepend_bos, md.exclude_special_tokens = cfg.context_size, cfg.prepend_bos, cfg.exclude_special_tokens
    md.model_from_pretrained_kwargs = cfg.model_from_pretrained_kwargs
    sae.to(cfg.device)
    total = spec.training_tokens + spec.n_batches_for_norm_estimate * spec.train_batch_tokens
    with progress_bar(total, f"train SAE {spec.hook_name} (in memory)", unit="tok", enabled=progress) as bar:
        provider = _ProgressProvider(_shuffled_passes(acts.to(cfg.device), spec.train_batch_tokens, spec.seed), bar)
        trainer = SAETrainer(cfg=cfg.to_sae_trainer_config(), sae=sae, data_provider=provider)
        sae = trainer.fit()
    tmp.mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(tmp))
    save_file({"sparsity": trainer.log_feature_sparsity}, tmp / SPARSITY_FILENAME)
    (tmp / RUNNER_CFG_FILENAME).write_text(json.dumps(cfg.to_dict()))


def _fit_streaming(model: HookedTransformer, corpus: Corpus, spec: SAETrainSpec, d_in: int, d_sae: int, tmp: Path,
                   progress: bool) -> None:
    """SAE Lens's LanguageModelSAETrainingRunner, streaming activations from tokenised rows."""
    from datasets import Dataset
    from sae_lens import LanguageModelSAETrainingRunner

    rows = training_rows(model, corpus, spec)
    dataset = Dataset.from_dict({"input_ids": rows.tolist()})
    cfg = _runner_config(model, corpus, spec, d_in, d_sae, tmp)
    torch.manual_seed(spec.seed)
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
    total = spec.training_tokens + spec.n_batches_for_norm_estimate * spec.train_batch_tokens
    with progress_bar(total, f"train SAE {spec.hook_name}", unit="tok", enabled=progress) as bar:
        runner.activations_store = _ProgressProvider(runner.activations_store, bar)
        runner.run()


def train_saes(
    model: HookedTransformer,
    corpus: Corpus,
    specs: list[SAETrainSpec],
    out_dirs: list[str | Path | None] | None = None,
    progress: bool = True,
    force: bool = False,
) -> list[Path]:
    """Train (or reuse) several SAEs on one model; returns their directories in `specs` order.

    Specs with `activation_tokens` that agree on the activation slice (tokens, context, split, seed)
    share one forward pass; the others stream through SAE Lens's runner one by one.
    """
    out_dirs = out_dirs or [None] * len(specs)
    if len(out_dirs) != len(specs):
        raise ConfigError(f"{len(specs)} specs but {len(out_dirs)} output directories")
    outs = [Path(o) if o is not None else trained_dir(model, corpus.id, s) for s, o in zip(specs, out_dirs)]
    for s in specs:
        s.validate()
    todo = [i for i, o in enumerate(outs) if force or not (is_sae_dir(o) and (o / RECIPE_FILE).exists())]
    groups: dict[tuple, list[int]] = {}
    for i in todo:
        s = specs[i]
        key = (s.activation_tokens, s.context_size, s.split, s.seed, s.store_batch_prompts) if s.activation_tokens else ("stream", i)
        groups.setdefault(key, []).append(i)
    for key, idx in groups.items():
        acts, collect_s = None, 0.0
        if key[0] != "stream":
            t0 = time.perf_counter()
            acts = collect_activations(model, corpus, sorted({specs[i].hook_name for i in idx}), specs[idx[0]], progress)
            collect_s = time.perf_counter() - t0
        for i in idx:
            _train_one(model, corpus, specs[i], outs[i], acts, collect_s / len(idx), progress)
    return outs


def _train_one(model: HookedTransformer, corpus: Corpus, spec: SAETrainSpec, out: Path, acts: dict[str, torch.Tensor] | None,
               collect_s: float, progress: bool) -> None:
    d_in, d_sae = resolved_d_sae(model, spec)
    if spec.architecture != "jumprelu" and spec.k >= d_sae:
        raise ConfigError(f"k ({spec.k}) must be smaller than d_sae ({d_sae})")
    info = model_info(model)
    device = str(next(model.parameters()).device)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    logging.getLogger("sae_lens").setLevel(logging.ERROR)  # its override warnings are expected here
    try:
        t0 = time.perf_counter()
        if acts is not None:
            _fit_in_memory(model, corpus, spec, acts[spec.hook_name], d_in, d_sae, tmp, progress)
        else:
            _fit_streaming(model, corpus, spec, d_in, d_sae, tmp, progress)
        train_s = time.perf_counter() - t0
        model.eval()
        sae = load_local(tmp, device=device)
        quality = evaluate_sae(model, sae, corpus, StreamConfig(split="validation", max_tokens=spec.eval_tokens,
                                                                seq_len=spec.context_size, batch_size=8), progress=progress)
        import sae_lens

        write_json(tmp / RECIPE_FILE, {
            "spec": dataclasses.asdict(spec), "d_in": d_in, "d_sae": d_sae, "model": info.to_dict(), "corpus": corpus.id,
            "train_seconds": train_s, "train_tokens_per_s": spec.training_tokens / train_s,
            "activation_seconds": collect_s, "distinct_train_tokens": None if acts is None else int(acts[spec.hook_name].shape[0]),
            "sae_lens": sae_lens.__version__, "quality": quality.to_dict(),
        })
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def train_sae(
    model: HookedTransformer,
    corpus: Corpus,
    spec: SAETrainSpec,
    out_dir: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
) -> Path:
    """Train (or reuse) an SAE for `model` at `spec.hook_name` on `corpus`; returns its directory.

    The directory holds SAE Lens's files (cfg.json, sae_weights.safetensors, sparsity, runner config)
    and `workbench_sae.json` (recipe, model, corpus, timings and held-out quality).
    """
    return train_saes(model, corpus, [spec], [out_dir], progress=progress, force=force)[0]
