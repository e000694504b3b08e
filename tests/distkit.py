"""Sharded-run cases for tests: every streaming accumulator (and the per-head loops) on a tiny
model and a small slice, run once in one process and once per rank under torchrun.

`python tests/distkit.py OUT [CASE ...]` writes `OUT/<case>.single.safetensors`; under torchrun
each rank writes `OUT/<case>.rank<r>of<N>.safetensors` (its state after the merge). With
FAULTKIT_* set, the forward pass is slowed and logged (tests/faultkit.py) so a test can kill a
rank mid-stream; `OUT` then also receives `stream.<r>.safetensors` checkpoints through the store.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

N_DOCS = 14  # with the settings below: 37 batches, so 2 ranks split them unevenly (19 + 18)
SEQ_LEN, BATCH = 32, 4


def setup():
    import torch

    torch.set_num_threads(1)  # the same per-batch arithmetic in every process
    from workbench.corpora import (
        ChunkSpec,
        Corpus,
        Document,
        TokenBatches,
        tokenize_corpus,
    )
    from workbench.models import load_model

    model = load_model("tiny", device="cpu")
    words = "the jury said that an election was conducted in a manner that deserves praise and thanks".split()
    docs = [Document(f"d{i}", " ".join(words[(i * 5 + j * j) % len(words)] for j in range(60)), genre="g")
            for i in range(N_DOCS)]
    tc = tokenize_corpus(Corpus("dist", "1", docs), model.tokenizer, separator_id=model.tokenizer.eos_token_id)
    max_tokens = int(os.environ["DISTKIT_MAX_TOKENS"]) if os.environ.get("DISTKIT_MAX_TOKENS") else None
    batches = TokenBatches(tc, ChunkSpec(seq_len=SEQ_LEN, batch_size=BATCH, max_tokens=max_tokens), bos_id=model.tokenizer.bos_token_id)
    return model, batches


def _sae(model, hook="blocks.0.hook_resid_post", seed=0):
    from sae_standins import random_topk_sae

    return random_topk_sae(hook=hook, d_in=model.cfg.d_model, d_sae=48, k=5, seed=seed)


def _is_function(model):
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.rand(model.cfg.d_vocab, generator=g) < 0.3


def case_states(name: str, model, batches) -> dict:
    """The named case's final state (tensors), computed through `stream` (sharded when in a group)."""
    import torch

    from workbench.activations import stream

    def streamed(acc, fwd_hooks=()):
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            stream(model, batches, acc, progress=False)
        return acc.state_dict()

    if name == "residual_norms":
        from probes.residual_norms import ResidualNormsAccumulator

        return streamed(ResidualNormsAccumulator(model, lens_positions=8))
    if name == "head_survey":
        from probes.attention_sinks.heads import HeadSurveyAccumulator

        acc = HeadSurveyAccumulator(model, SEQ_LEN, 2.0, 8)
        return streamed(acc, acc.sink_hooks.hooks())
    if name == "bipartite":
        from probes.function_tokens.probe import BipartiteAccumulator

        rows = torch.unique(torch.cat([b.tokens[b.valid] for b in batches]))
        acc = BipartiteAccumulator({"a": _sae(model)}, rows, model.cfg.d_vocab, rows[:6], exclude=[], top_contexts=3,
                                   before=3, after=1)
        return streamed(acc)
    if name == "loss_split":
        from probes.function_tokens.loss import LossDecompositionAccumulator

        return streamed(LossDecompositionAccumulator(_is_function(model), exclude=[]))
    if name in ("class_stats", "centred", "heldout"):
        from probes.linguistic_collapse import probe as lc

        stats = lc.ClassStatsAccumulator(model)
        st = streamed(stats)
        if name == "class_stats":
            return st
        means = stats.sums / stats.counts.clamp(min=1)[:, None]
        if name == "centred":
            return streamed(lc.CentredVarianceAccumulator(model, means))
        return streamed(lc.HeldoutAccumulator(model, stats.counts, means, thresholds=[1, 3], main=1, tile_size=7))
    if name == "surprisal":
        from probes.bigram_subnetworks.metrics import SurprisalAccumulator

        return streamed(SurprisalAccumulator())
    if name == "ridge":
        from probes.bigram_subnetworks.metrics import RidgeStatsAccumulator

        return streamed(RidgeStatsAccumulator(model))
    if name == "sae_quality":
        from workbench.saes.quality import SAEQualityAccumulator

        return streamed(SAEQualityAccumulator(model, _sae(model, "blocks.1.hook_resid_pre", seed=2), exclude_ids=[]))
    if name == "function_sink":
        from probes.cross_analysis.token_kind import FunctionSinkAccumulator

        acc = FunctionSinkAccumulator(model, _is_function(model), {"L0": _sae(model)})
        return streamed(acc, acc.hooks())
    if name == "head_ablation":
        from probes.attention_sinks.heads import head_ablation, spread_chunks

        out = head_ablation(model, spread_chunks(batches, 6), "ablation", progress=False)
        return {"ablated": out.ablated, "delta_se": out.delta_se, "clean": torch.tensor(out.clean, dtype=torch.float64)}
    if name == "head_patching":
        from probes.sae_circuits.baselines import head_patching
        from probes.sae_circuits.tasks.contrast import ContrastPrompts

        g = torch.Generator().manual_seed(3)
        pos = torch.randint(1, 200, (10, 7), generator=g).tolist()
        neg = [[p[0], (p[1] + 1) % 200 or 1, *p[2:]] for p in pos]
        right = [[int(x)] for x in torch.randint(1, 200, (10,), generator=g)]
        wrong = [[int(x)] for x in torch.randint(1, 200, (10,), generator=g)]
        out = head_patching(model, ContrastPrompts("rand", pos, neg, right, wrong), "patching", batch_size=4, progress=False)
        return {"effect": out.effect, "pos": out.positive_metric, "neg": out.negative_metric}
    if name == "merge_rules":  # synthetic per-rank states through every rule; the reference merge rides along
        from workbench.distributed import merge_states, reduce_states, world

        def state_of(r: int) -> dict:
            return {"bits": torch.tensor([1 << r, 1 << (r + 3), 5], dtype=torch.int64),
                    "flags": torch.tensor([r == 0, r == 1, False]), "hi": torch.tensor([float(r), -float(r)]),
                    "lo": torch.tensor([float(r), -float(r)]), "n": torch.tensor([r + 1], dtype=torch.int64),
                    "head": torch.tensor([10.0 + r])}

        rules = {"bits": "or", "flags": "or", "hi": "max", "lo": "min", "n": "sum", "head": "first"}
        w = world()
        got = reduce_states(state_of(w.rank), rules)
        ref = merge_states([state_of(r) for r in range(w.size)], rules)
        return {**{f"got/{k}": v for k, v in got.items()}, **{f"ref/{k}": v for k, v in ref.items()}}
    if name == "once_on_rank0":  # a part trained inside a sharded run: rank 0 trains, every rank gets its result
        import pandas as pd

        from probes.bigram_subnetworks.mask_training import (
            MaskRun,
            pack_mask_run,
            unpack_mask_run,
        )
        from workbench.distributed import once_on_rank0, world

        ran = []

        def compute():
            ran.append(world().rank)
            g = torch.Generator().manual_seed(100 + world().rank)  # what a rank would get if it trained on its own
            return MaskRun("m", {"blocks.0.attn.W_Q": torch.rand(3, 4, generator=g) > 0.5},
                           pd.DataFrame({"step": [1, 2], "ce": [1.0, 0.5]}), 2, "rule", 1.5, 0.1)

        run = once_on_rank0(compute, pack_mask_run, unpack_mask_run)
        return {"mask": run.masks["blocks.0.attn.W_Q"], "ran_here": torch.tensor([len(ran)]),
                "steps": torch.tensor([run.steps]), "ce": torch.tensor(run.log["ce"].tolist(), dtype=torch.float64)}
    if name == "sae_features":
        from probes.sae_features.probe import FeatureAccumulator

        acc = FeatureAccumulator(_sae(model, "blocks.1.hook_resid_post", seed=4), model.cfg.d_vocab, exclude=[], m=3,
                                 before=3, after=1, bins=10)
        return streamed(acc)
    raise SystemExit(f"unknown case {name!r}")


CASES = ["residual_norms", "head_survey", "bipartite", "loss_split", "class_stats", "centred", "heldout", "surprisal",
         "ridge", "sae_quality", "function_sink", "head_ablation", "head_patching", "sae_features", "merge_rules",
         "once_on_rank0"]


def main(out: str, names: list[str]) -> None:
    from safetensors.torch import save_file

    from workbench.launch import rank_session

    with rank_session() as w:
        model, batches = setup()
        for name in names or CASES:
            state = {k: v.detach().cpu().contiguous().clone() for k, v in case_states(name, model, batches).items()}
            tag = f"rank{w.rank}of{w.size}" if w.sharded else "single"
            save_file(state, os.path.join(out, f"{name}.{tag}.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
