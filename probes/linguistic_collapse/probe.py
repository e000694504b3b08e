"""Linguistic collapse: neural-collapse geometry of the top-layer features, next tokens as classes.

After Wu & Papyan, "Linguistic Collapse: Neural Collapse in (Large) Language Models" (NeurIPS 2024).
Feature x = the final normalised residual with the final norm's gain (and bias) applied, i.e. the
exact input of the unembedding (`ln_final.hook_normalized * w + b`, raw numerics; features @ W_U +
b_U equal the model's logits). The class of x is the next token. Padding, the position after the
last token and (with `skip_bos`) positions whose input is the prepended BOS are skipped.

Passes over the corpus, each streamed with float64 accumulators and resumable inside a stored run:
1. the `split` slice: per-class counts, sums of x and sums of ||x||^2 (one-pass variances);
2. optional (`variance="two-pass"`): the same slice again, sums of ||x - mu_c||^2;
3. the `heldout_split` slice: NC4 (nearest-class-centre decision against the model's argmax),
   validation loss and top-1 accuracy.
Memory is O(d_vocab * d_model), never O(tokens * d_model). Metric formulas and the version of the
paper's code they follow are in `probes.linguistic_collapse.metrics`.

Deviations from the paper, stated: NCC uses only the class means kept by `min_count` (the paper's
code also lets never-seen classes, whose "mean" is the zero vector, win); the linear decision is the
model's own argmax over the full vocabulary, unembedding bias included (the paper's GPT-Neo has no
bias; SmolLM2 has none either); `nc4_mismatch_kept` restricts that argmax to the kept classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer

from probes.linguistic_collapse import metrics as ncm
from workbench import hooks
from workbench.active_run import scratch_dir
from workbench.config import StreamConfig, setting
from workbench.corpora.base import Corpus
from workbench.corpora.tokenized import TokenBatch
from workbench.errors import ConfigError
from workbench.probe_api import ProbeSpec, register
from workbench.results import Result
from workbench.slices import stream_corpus
from workbench.statefile import load_state, save_state

FORMULAS = "Wu & Papyan 2024, final analyze.py of rhubarbwu/linguistic-collapse (neural_collapse library); CDNV dist_exp=2"
DISJOINT = {("train", "validation"), ("validation", "train")}


@dataclass
class LinguisticCollapseConfig(StreamConfig):
    """Slices and metric settings. `split`/`max_tokens` set the class-mean slice (the paper's train set)."""

    split: str = "train"
    max_tokens: int | None = 50_000
    heldout_split: str = setting("validation", text=True, why="NC4 and validation loss; must not overlap `split`")
    heldout_max_tokens: int | None = setting(10_000, min=1, max=10_000_000, why="a dashboard run streams at most 10M tokens")
    # keep classes with at least this many samples: 2 by default, because a singleton class has zero
    # variance by construction and would pull CDNV toward 0 (the paper keeps >= 1, but its TinyStories
    # classes all have many samples); the sensitivity table reports 1 too
    min_count: int = setting(2, min=1, max=1_000_000, why="samples per class")
    sensitivity_min_counts: list[int] = setting(default_factory=lambda: [1, 2, 5, 10, 25], min=1, max=1_000_000, max_items=16,
                                                why="one metric pass per threshold")
    variance: Literal["one-pass", "two-pass"] = "one-pass"
    tile_size: int = setting(1024, min=16, max=16_384, why="a tile x tile block must fit in memory")  # pairwise tiles are tile_size x tile_size
    skip_bos: bool = True  # skip positions whose input token is the prepended BOS
    top_classes: int = setting(48, min=2, max=10_000, why="classes in the geometry views")  # most frequent classes kept for the geometry views

    def validate(self) -> None:
        super().validate()
        if self.min_count < 1:
            raise ConfigError(f"min_count must be at least 1, got {self.min_count}")
        if any(m < 1 for m in self.sensitivity_min_counts):
            raise ConfigError(f"sensitivity_min_counts must all be >= 1, got {self.sensitivity_min_counts}")
        if (self.split, self.heldout_split) not in DISJOINT:
            raise ConfigError(
                f"split={self.split!r} and heldout_split={self.heldout_split!r} overlap; NC4 needs held-out tokens: "
                "use split='train', heldout_split='validation' (or the reverse)"
            )
        if self.heldout_max_tokens is not None and self.heldout_max_tokens <= 0:
            raise ConfigError(f"heldout_max_tokens must be positive, got {self.heldout_max_tokens}")
        if self.tile_size < 1:
            raise ConfigError(f"tile_size must be positive, got {self.tile_size}")
        if self.top_classes < 2:
            raise ConfigError(f"top_classes must be at least 2, got {self.top_classes}")

    def thresholds(self) -> list[int]:
        return sorted(set(self.sensitivity_min_counts) | {self.min_count})

    def heldout_stream(self) -> StreamConfig:
        base = {f.name: getattr(self, f.name) for f in dataclasses.fields(StreamConfig)}
        return StreamConfig(**{**base, "split": self.heldout_split, "max_tokens": self.heldout_max_tokens})


@dataclass
class LinguisticCollapseResult(Result):
    metrics: dict = field(default_factory=dict)  # every metric at `min_count`
    classes: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per kept class
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per min_count threshold
    geometry: dict = field(default_factory=dict)  # tensors for the most frequent classes

    def summary(self) -> dict:
        m = self.metrics
        keys = ["n_classes", "nc1_cdnv", "nc2_equinorm_cov", "nc2_cos_mean", "gnc2_uniformity", "nc3_duality_mean",
                "nc3_dual_error", "nc4_mismatch", "heldout_loss"]
        return {k: (round(m[k], 6) if isinstance(m.get(k), float) else m.get(k)) for k in keys if k in m}


# ----- features and labels -----

def feature_site(model: HookedTransformer) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    """(hook name, gain, bias) such that gain * hook + bias is the unembedding's input."""
    norm = model.cfg.normalization_type
    if norm in ("LNPre", "RMSPre"):
        raise ConfigError("linguistic collapse is defined on raw numerics (the final norm's gain unfolded); "
                          "load the model with numerics='raw'")
    if norm is None:
        return hooks.resid_post(model.cfg.n_layers - 1), None, None
    return hooks.FINAL_NORM, model.ln_final.w.detach(), getattr(model.ln_final, "b", None)


def features_and_labels(batch: TokenBatch, act: torch.Tensor, gain, bias, skip_bos: bool):
    """(x [n, d] float32, y [n], mask [B, T-1]) over positions with a valid next token."""
    mask = batch.valid[:, :-1] & batch.valid[:, 1:]
    if skip_bos:
        mask &= ~batch.is_bos[:, :-1]
    feats = act[:, :-1]
    if gain is not None:
        feats = feats * gain
    if bias is not None:
        feats = feats + bias.detach()
    return feats[mask], batch.tokens[:, 1:][mask], mask


class _Base:
    def __init__(self, model: HookedTransformer, skip_bos: bool):
        self.site, self.gain, self.bias = feature_site(model)
        self.hook_names = [self.site]
        self.skip_bos = skip_bos
        self.d_vocab, self.d_model = model.cfg.d_vocab, model.cfg.d_model
        self.device = next(model.parameters()).device

    def _xy(self, batch: TokenBatch, acts: dict[str, torch.Tensor]):
        return features_and_labels(batch, acts[self.site], self.gain, self.bias, self.skip_bos)


class ClassStatsAccumulator(_Base):
    """Pass 1: per-class count, sum of x and sum of ||x||^2, float64, over the whole vocabulary."""

    needs_logits = False

    def __init__(self, model: HookedTransformer, skip_bos: bool = True):
        super().__init__(model, skip_bos)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)  # noqa: E731
        self.counts, self.sums, self.sq = z(self.d_vocab), z(self.d_vocab, self.d_model), z(self.d_vocab)

    def identity(self) -> str:
        return f"stats|{self.site}|bos{int(self.skip_bos)}"

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.double()
        self.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        self.sums.index_add_(0, y, x)
        self.sq.index_add_(0, y, (x * x).sum(1))

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        x, y, _ = self._xy(batch, acts)
        self.add(x, y)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Only the seen rows: a checkpoint is O(seen classes * d), not O(vocab * d)."""
        seen = self.counts.nonzero().squeeze(1)
        return {"ids": seen, "counts": self.counts[seen], "sums": self.sums[seen], "sq": self.sq[seen]}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ids = state["ids"].to(self.device).long()
        for name in ("counts", "sums", "sq"):
            getattr(self, name).zero_()
            getattr(self, name)[ids] = state[name].to(self.device, torch.float64)

    @staticmethod
    def merge_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Sparse states of several ranks: the union of their seen classes, rows summed."""
        ids = torch.unique(torch.cat([s["ids"].long() for s in states]))  # sorted, as `state_dict` writes them
        out = {"ids": ids, "counts": torch.zeros(len(ids), dtype=torch.float64),
               "sums": torch.zeros(len(ids), states[0]["sums"].shape[1], dtype=torch.float64),
               "sq": torch.zeros(len(ids), dtype=torch.float64)}
        for s in states:
            rows = torch.searchsorted(ids, s["ids"].long())
            for name in ("counts", "sums", "sq"):
                out[name].index_add_(0, rows, s[name].double())
        return out


class CentredVarianceAccumulator(_Base):
    """Pass 2 (two-pass variances): per-class sum of ||x - mu_c||^2 given the pass-1 means."""

    needs_logits = False

    def __init__(self, model: HookedTransformer, means: torch.Tensor, skip_bos: bool = True):
        super().__init__(model, skip_bos)
        self.means = means.to(self.device, torch.float64)  # [d_vocab, d]; unseen rows are unused
        self.dev = torch.zeros(self.d_vocab, dtype=torch.float64, device=self.device)
        self._hash = hashlib.sha1(self.means.cpu().numpy().tobytes()).hexdigest()[:12]

    def identity(self) -> str:
        return f"centred|{self.site}|bos{int(self.skip_bos)}|{self._hash}"

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        diff = x.double() - self.means[y]
        self.dev.index_add_(0, y, (diff * diff).sum(1))

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        x, y, _ = self._xy(batch, acts)
        self.add(x, y)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"dev": self.dev}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.dev = state["dev"].to(self.device, torch.float64).clone()


class HeldoutAccumulator(_Base):
    """Pass 3: NC4 decisions per min_count threshold, plus loss and accuracy, on held-out tokens.

    NCC: the nearest class mean among classes with pass-1 count >= threshold. Linear: the model's
    argmax over the vocabulary (and, for `mismatch_kept`, over the kept classes only). A position
    counts for a threshold when its label was kept at that threshold.
    """

    needs_logits = True

    def __init__(self, model: HookedTransformer, counts: torch.Tensor, means: torch.Tensor, thresholds: list[int],
                 main: int, skip_bos: bool = True, tile_size: int = 1024):
        super().__init__(model, skip_bos)
        counts = counts.to(self.device, torch.float64)
        self.counts_vocab = counts
        self.ids = counts.nonzero().squeeze(1)  # seen classes, vocab ids
        mu = means.to(self.device, torch.float64)[self.ids]
        self.centre = mu.mean(0)  # shift for conditioning only; distances are unchanged
        self.centres = (mu - self.centre).float()
        self.thresholds, self.main, self.tile_size = list(thresholds), main, tile_size
        seen_counts = counts[self.ids]
        self.col_masks = [seen_counts >= t for t in self.thresholds]
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=self.device)  # noqa: E731
        nt = len(self.thresholds)
        self.state = {"positions": z(nt), "mismatch": z(nt), "mismatch_kept": z(nt), "class_count": z(self.d_vocab),
                      "class_miss": z(self.d_vocab), "ce_sum": z(1), "n_all": z(1), "correct": z(1)}
        blob = torch.cat([counts.cpu(), means.double().cpu()[self.ids.cpu()].flatten()]).numpy().tobytes()
        self._hash = hashlib.sha1(blob).hexdigest()[:12]

    def identity(self) -> str:
        return f"heldout|{self.site}|bos{int(self.skip_bos)}|{self.thresholds}|{self.main}|{self._hash}"

    def add(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> None:
        s = self.state
        logits = logits.float()
        s["ce_sum"] += F.cross_entropy(logits, y, reduction="sum").double()
        s["n_all"] += y.numel()
        lin = logits.argmax(-1)
        s["correct"] += (lin == y).sum()
        ncc = ncm.ncc_predict(x.float() - self.centre.float(), self.centres, self.col_masks, self.tile_size)
        label_counts = self.counts_vocab[y]
        seen_logits = logits[:, self.ids]  # [n, K seen]: the kept-only argmax never needs the whole vocabulary
        for t, m in enumerate(self.thresholds):
            ok = label_counts >= m
            ncc_vocab = self.ids[ncc[t].clamp_min(0)]
            lin_kept = self.ids[seen_logits.masked_fill(~self.col_masks[t], -math.inf).argmax(-1)]
            miss = (ncc_vocab != lin) & ok
            s["positions"][t] += ok.sum()
            s["mismatch"][t] += miss.sum()
            s["mismatch_kept"][t] += ((ncc_vocab != lin_kept) & ok).sum()
            if m == self.main:
                s["class_count"].index_add_(0, y[ok], torch.ones(int(ok.sum()), dtype=torch.float64, device=self.device))
                s["class_miss"].index_add_(0, y, miss.double())

    def update(self, batch: TokenBatch, acts: dict[str, torch.Tensor], logits: torch.Tensor | None) -> None:
        x, y, mask = self._xy(batch, acts)
        self.add(x, y, logits[:, :-1][mask])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.to(self.device, torch.float64).clone() for k, v in state.items()}


# ----- passes (each resumable, and skipped on resume once complete) -----

def _pass(model: HookedTransformer, corpus: Corpus, cfg: StreamConfig, acc, name: str) -> dict:
    """Stream one pass; inside a stored run a finished pass is saved and not redone on resume."""
    done_dir = scratch_dir(f"lc-pass-{name}")
    done = done_dir / "done.safetensors" if done_dir is not None else None
    saved = load_state(done, device=str(acc.device), expect={"identity": acc.identity()}) if done is not None else None
    if saved is not None:
        acc.load_state_dict(saved[0])
        return saved[1]["slice"]
    _, info = stream_corpus(model, corpus, cfg, acc, desc=f"linguistic-collapse-{name}")
    if done is not None:
        save_state(done, acc.state_dict(), {"identity": acc.identity(), "slice": info})
    return info


# ----- metrics from the accumulated state -----

def classifier_rows(model: HookedTransformer, ids: torch.Tensor) -> torch.Tensor:
    """Unembedding vectors w_c (rows of W_U^T) of the given classes, float64."""
    return model.W_U.detach()[:, ids.to(model.W_U.device)].T.double()


def heldout_metrics(held: HeldoutAccumulator, t: int, kept_ids: torch.Tensor) -> dict[str, float]:
    s = held.state
    pos = float(s["positions"][t])
    out = {"nc4_positions": int(pos), "nc4_mismatch": float(s["mismatch"][t]) / pos if pos else math.nan,
           "nc4_mismatch_kept": float(s["mismatch_kept"][t]) / pos if pos else math.nan}
    if held.thresholds[t] == held.main:
        cnt, miss = s["class_count"][kept_ids], s["class_miss"][kept_ids]
        has = cnt > 0
        out["nc4_class_avg_mismatch"] = float((miss[has] / cnt[has]).mean()) if bool(has.any()) else math.nan
    return out


def _geometry(ids: torch.Tensor, counts: torch.Tensor, centred: torch.Tensor, w: torch.Tensor, top: int) -> dict[str, torch.Tensor]:
    """Cosines and a 2-D PCA projection of the most frequent classes' centred means (and their w_c)."""
    from sklearn.decomposition import PCA

    order = torch.argsort(counts, descending=True, stable=True)[: min(top, len(ids))]
    u = ncm.normalize_rows(centred[order])
    wn = ncm.normalize_rows(w[order])
    pca = PCA(n_components=2, random_state=0).fit(u.cpu().numpy())
    to = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return {"ids": ids[order].cpu(), "cos": (u @ u.T).cpu(), "proj_means": to(pca.transform(u.cpu().numpy())),
            "proj_w": to(pca.transform(wn.cpu().numpy())), "explained": to(pca.explained_variance_ratio_)}


def _token_strings(model: HookedTransformer, ids: list[int]) -> list[str]:
    tok = model.tokenizer
    if tok is None:
        return [str(i) for i in ids]
    return tok.batch_decode([[i] for i in ids])


def run(model: HookedTransformer, corpus: Corpus, config: LinguisticCollapseConfig) -> LinguisticCollapseResult:
    config.validate()
    stats = ClassStatsAccumulator(model, config.skip_bos)
    train_slice = _pass(model, corpus, config, stats, "means")
    counts_all = stats.counts
    seen = counts_all.nonzero().squeeze(1)
    means_vocab = torch.zeros_like(stats.sums)
    means_vocab[seen] = ncm.class_means(stats.sums[seen], counts_all[seen])
    if config.variance == "two-pass":
        cv = CentredVarianceAccumulator(model, means_vocab, config.skip_bos)
        _pass(model, corpus, config, cv, "variances")
        var_vocab = torch.zeros_like(counts_all)
        var_vocab[seen] = cv.dev[seen] / counts_all[seen]
    else:
        var_vocab = torch.zeros_like(counts_all)
        var_vocab[seen] = ncm.one_pass_variances(stats.sq[seen], stats.sums[seen], counts_all[seen])

    thresholds = config.thresholds()
    kept_main = (counts_all >= config.min_count).nonzero().squeeze(1)
    if len(kept_main) < 2:
        raise ConfigError(f"only {len(kept_main)} class(es) have >= {config.min_count} samples in this slice; "
                          "lower min_count or raise max_tokens")
    held = HeldoutAccumulator(model, counts_all, means_vocab, thresholds, config.min_count, config.skip_bos, config.tile_size)
    heldout_slice = _pass(model, corpus, config.heldout_stream(), held, "heldout")

    n_positions = float(counts_all.sum())
    hs = held.state
    common = {"n_tokens": int(n_positions), "n_classes_seen": int(len(seen)), "d_model": model.cfg.d_model,
              "heldout_positions": int(hs["n_all"]), "heldout_loss": float(hs["ce_sum"] / hs["n_all"].clamp_min(1)),
              "heldout_top1": float(hs["correct"] / hs["n_all"].clamp_min(1))}
    rows, main_metrics = [], {}
    for t, m in enumerate(thresholds):
        ids = (counts_all >= m).nonzero().squeeze(1)
        row: dict = {"min_count": m, "n_classes": int(len(ids)), "coverage": float(counts_all[ids].sum()) / n_positions}
        if len(ids) >= 2:
            row.update(ncm.collapse_metrics(means_vocab[ids], var_vocab[ids], classifier_rows(model, ids),
                                            config.tile_size, progress=True))
            row.update(heldout_metrics(held, t, ids))
        rows.append(row)
        if m == config.min_count:
            main_metrics = {**common, **row, "min_count": m}

    ids = kept_main
    means_k = means_vocab[ids]
    centred = means_k - means_k.mean(0)
    w = classifier_rows(model, ids)
    cnt = hs["class_count"][ids]
    classes = pd.DataFrame({
        "token_id": ids.cpu().numpy(),
        "token": _token_strings(model, ids.tolist()),
        "count": counts_all[ids].cpu().numpy(),
        "variance": var_vocab[ids].cpu().numpy(),
        "norm": centred.norm(dim=1).cpu().numpy(),
        "self_duality": ncm.duality(w, centred).cpu().numpy(),
        "heldout_count": cnt.cpu().numpy(),
        "heldout_mismatch": torch.where(cnt > 0, hs["class_miss"][ids] / cnt.clamp_min(1), torch.nan).cpu().numpy(),
    })
    geometry = _geometry(ids, counts_all[ids], centred, w, config.top_classes)
    meta = {"slice": train_slice, "heldout_slice": heldout_slice, "feature_site": stats.site,
            "gain_applied": stats.gain is not None, "formulas": FORMULAS, "thresholds": thresholds}
    return LinguisticCollapseResult(meta=meta, metrics=main_metrics, classes=classes, sensitivity=pd.DataFrame(rows),
                                    geometry=geometry)


def cost(config: LinguisticCollapseConfig, model_cfg) -> float | None:
    """Forward token-passes: the class-mean slice (twice with two-pass variances) and the held-out slice."""
    if config.max_tokens is None or config.heldout_max_tokens is None:
        return None
    return config.max_tokens * (2 if config.variance == "two-pass" else 1) + config.heldout_max_tokens


SPEC = register(ProbeSpec(
    name="linguistic-collapse",
    description="Neural collapse (NC1-NC4) of the final-norm features with next tokens as classes, streamed in float64.",
    config_cls=LinguisticCollapseConfig,
    result_cls=LinguisticCollapseResult,
    run=run,
    cost=cost,
))
