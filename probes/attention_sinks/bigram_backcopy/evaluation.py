"""Risks of a model on the task: backcopy and bigram cross-entropy, paired with the oracle."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.attention_sinks.bigram_backcopy.task import SEQ_LEN, BBTask


def paired_gap(model_risk: float, oracle_risk: float) -> float:
    """Relative excess of a model's bigram risk over the oracle risk on the same positions."""
    return (model_risk - oracle_risk) / oracle_risk


@torch.inference_mode()
def bb_risks(model: HookedTransformer, task: BBTask, n_seqs: int = 256, seed: int = 10_000, batch_size: int = 64,
             seq_len: int = SEQ_LEN) -> dict[str, float]:
    """Backcopy and bigram risks (pooled over positions) on a fixed evaluation set, with the exact
    population optimum, the oracle risk (the true transition matrix's cross-entropy on the same
    bigram positions) and the paired gap (bigram_risk - oracle) / oracle."""
    data = task.sample(n_seqs, seq_len, seed)
    device = next(model.parameters()).device
    sums = {"backcopy": 0.0, "bigram": 0.0, "all": 0.0}
    counts = dict.fromkeys(sums, 0)
    for i in range(0, n_seqs, batch_size):
        tokens = data[i : i + batch_size].to(device)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = model(inputs, return_type="logits")
        per = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").double()
        backcopy, bigram = task.position_masks(inputs)
        for k, m in (("backcopy", backcopy), ("bigram", bigram), ("all", torch.ones_like(backcopy))):
            sums[k] += float(per[m].sum())
            counts[k] += int(m.sum())
    bigram_risk = sums["bigram"] / max(counts["bigram"], 1)
    oracle = task.oracle_bigram_risk(data)
    return {
        "backcopy_risk": sums["backcopy"] / max(counts["backcopy"], 1),
        "bigram_risk": bigram_risk,
        "loss": sums["all"] / max(counts["all"], 1),
        "bigram_optimum": task.bigram_optimum(seq_len),
        "bigram_oracle_risk": oracle,
        "bigram_paired_gap": paired_gap(bigram_risk, oracle),
    }
