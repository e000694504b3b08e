"""Neural-collapse metrics from per-class statistics (pure functions, float64, bounded memory).

Formulas follow the final analysis code of Wu & Papyan, "Linguistic Collapse: Neural Collapse in
(Large) Language Models" (NeurIPS 2024; `analyze.py` of rhubarbwu/linguistic-collapse after its
retrofit onto the `neural_collapse` library):

- NC1 (CDNV, Galanti et al. with the distance raised to the 4th power, ``dist_exp=2``): the mean
  over class pairs c < c' of (s_c + s_c') / (2 ||mu_c - mu_c'||^4), s_c the mean squared distance of
  class c's features to mu_c;
- NC2 equinorm: log ||mu_c - mu_G|| per class, mu_G the *unweighted* mean of the class means; we
  report its coefficient of variation (std / mean) as the method note asks, next to mean and std;
- NC2 equiangularity: cosines between the normalised centred means over pairs (mean, std), as the
  paper's text and the method note define it (the final code's `interference_grid` takes unnormalised
  inner products instead), and the ETF error ||G/||G||_F - (I - 11^T/K)/sqrt(K-1)||_F of the Gram
  matrix G of the centred means (the code's `simplex_etf_error`);
- GNC2 hyperspherical uniformity: log(1 / ||u_c - u_c'||) over pairs of normalised centred means;
  mean and variance (the variance is the uniformity score);
- NC3 self-duality: cos(w_c, mu_c - mu_G) per class (mean, std, CoV = UNC3), and the dual error,
  the ETF error of the cross Gram W (M - mu_G)^T.

Pairwise statistics are over unordered pairs, reduced tile by tile (never K x K in memory); the
pair variances are population variances, as the paper's `symm_reduce`. Per-class spreads use the
unbiased std (`torch.std`), as the paper's `save_metrics`. Deviation, stated: pairs whose means
coincide to float64 precision (distance 0, which the paper's code turns into inf) are left out of
the CDNV and GNC2 averages and counted in `nc1_degenerate_pairs` / `gnc2_degenerate_pairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.progress import progress_bar

# A pair counts as degenerate when its squared distance is below this share of the squared norms.
DEGENERATE_REL = 1e-14


@dataclass
class Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.), float64."""

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        nb = values.numel()
        if nb == 0:
            return
        v = values.double()
        mb = float(v.mean())
        m2b = float(((v - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def var(self) -> float:
        """Population variance (as the paper's reduction over pairs)."""
        return self.m2 / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.var) if self.n else math.nan


def class_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """[K, d] means from per-class sums and counts (every count must be positive)."""
    return sums / counts.to(sums.dtype).unsqueeze(1)


def one_pass_variances(sq_norm_sums: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-class mean squared distance to the class mean: E||x||^2 - ||mu||^2 (clamped at 0)."""
    n = counts.to(sums.dtype)
    mu = sums / n.unsqueeze(1)
    return (sq_norm_sums / n - (mu * mu).sum(1)).clamp_min(0.0)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm (a zero row stays zero, with the paper's eps guard)."""
    return x / (x.norm(dim=1, keepdim=True) + torch.finfo(x.dtype).eps)


def _tiles(k: int, tile: int) -> list[tuple[int, int]]:
    return [(i, min(i + tile, k)) for i in range(0, k, tile)]


def pairwise_stats(centred: torch.Tensor, variances: torch.Tensor, tile_size: int = 1024, progress: bool = False) -> dict[str, float]:
    """NC1 CDNV, NC2 cosines and GNC2 log-inverse distances over all pairs c < c', tile by tile.

    centred: [K, d] class means minus mu_G (float64); variances: [K] mean squared distances.
    Memory is O(tile_size^2 + K d).
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size}")
    c = centred.double()
    v = variances.double()
    k = c.shape[0]
    sq = (c * c).sum(1)
    u = normalize_rows(c)
    cdnv, cos, logd = Moments(), Moments(), Moments()
    deg_cdnv = deg_unit = 0
    tiles = _tiles(k, tile_size)
    n_jobs = len(tiles) * (len(tiles) + 1) // 2
    bar = progress_bar(n_jobs, "nc pairwise tiles", unit="tile", enabled=progress and n_jobs > 4)
    try:
        for a, (i0, i1) in enumerate(tiles):
            for j0, j1 in tiles[a:]:
                ci, cj = c[i0:i1], c[j0:j1]
                d2 = (sq[i0:i1, None] + sq[None, j0:j1] - 2.0 * (ci @ cj.T)).clamp_min(0.0)
                cs = (u[i0:i1] @ u[j0:j1].T).clamp(-1.0, 1.0)
                if i0 == j0:
                    pair = torch.ones_like(d2, dtype=torch.bool).triu(1)
                else:
                    pair = torch.ones_like(d2, dtype=torch.bool)
                scale = sq[i0:i1, None] + sq[None, j0:j1]
                ok = pair & (d2 > DEGENERATE_REL * scale)
                deg_cdnv += int((pair & ~ok).sum())
                var_avg = (v[i0:i1, None] + v[None, j0:j1]) / 2.0
                cdnv.add((var_avg[ok] / d2[ok] ** 2))
                cos.add(cs[pair])
                ud2 = (2.0 - 2.0 * cs).clamp_min(0.0)
                uok = pair & (ud2 > 4.0 * DEGENERATE_REL)
                deg_unit += int((pair & ~uok).sum())
                logd.add(-0.5 * torch.log(ud2[uok]))
                bar.update(1)
    finally:
        bar.close()
    return {
        "nc1_cdnv": cdnv.mean if cdnv.n else math.nan,
        "nc1_degenerate_pairs": deg_cdnv,
        "nc2_cos_mean": cos.mean if cos.n else math.nan,
        "nc2_cos_std": cos.std,
        "gnc2_logdist_mean": logd.mean if logd.n else math.nan,
        "gnc2_uniformity": logd.var,
        "gnc2_degenerate_pairs": deg_unit,
        "n_pairs": int(cos.n),
    }


def etf_structure_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||S/||S||_F - (I - 11^T/K)/sqrt(K-1)||_F for S = b a^T, in closed form (no K x K matrix).

    Uses <S, I> = sum_c b_c.a_c, <S, 11^T> = (sum b).(sum a) and ||S||_F^2 = <b^T b, a^T a> (d x d).
    """
    a, b = a.double(), b.double()
    k = a.shape[0]
    if k < 2:
        return math.nan
    frob = math.sqrt(abs(float(((b.T @ b) * (a.T @ a)).sum())))
    if frob == 0:
        return math.nan
    trace = float((a * b).sum())
    total = float(b.sum(0) @ a.sum(0))
    inner_ideal = (trace - total / k) / math.sqrt(k - 1)
    return math.sqrt(max(0.0, 2.0 - 2.0 * inner_ideal / frob))


def etf_error_floor(k: int, d: int) -> float:
    """Smallest possible ETF (and dual) error of K centred means in d dimensions.

    With centred means the Gram G has 1^T G 1 = 0, so <G, E> = tr(G) / sqrt(K-1) for the ideal E, and
    ||G||_F >= tr(G) / sqrt(rank) with rank <= d: the error sqrt(2 - 2<G/||G||, E>) is at least
    sqrt(2 - 2 sqrt(d / (K-1))) whenever K - 1 > d. The same holds for the dual error: S = W (M - mu_G)^T
    also has 1^T S 1 = 0 and rank <= d.
    """
    if k - 1 <= d:
        return 0.0
    return math.sqrt(2.0 - 2.0 * math.sqrt(d / (k - 1)))


def norm_stats(centred: torch.Tensor) -> dict[str, float]:
    """NC2 equinorm: spread of log ||mu_c - mu_G|| (and of the plain norms, for reference)."""
    norms = centred.double().norm(dim=1)
    logn = norms.clamp_min(torch.finfo(torch.float64).tiny).log()
    out = {"nc2_logn_mean": float(logn.mean()), "nc2_logn_std": float(logn.std()) if len(logn) > 1 else math.nan,
           "nc2_norm_mean": float(norms.mean()), "nc2_norm_std": float(norms.std()) if len(norms) > 1 else math.nan}
    out["nc2_equinorm_cov"] = out["nc2_logn_std"] / abs(out["nc2_logn_mean"]) if out["nc2_logn_mean"] else math.nan
    out["nc2_norm_cov"] = out["nc2_norm_std"] / out["nc2_norm_mean"] if out["nc2_norm_mean"] else math.nan
    return out


def duality(classifier: torch.Tensor, centred: torch.Tensor) -> torch.Tensor:
    """Per-class cos(w_c, mu_c - mu_G) (the paper's `similarities(..., cos=True)`)."""
    w, c = classifier.double(), centred.double()
    return (normalize_rows(w) * normalize_rows(c)).sum(1)


def duality_stats(classifier: torch.Tensor, centred: torch.Tensor) -> dict[str, float]:
    cos = duality(classifier, centred)
    mean = float(cos.mean())
    std = float(cos.std()) if len(cos) > 1 else math.nan
    return {"nc3_duality_mean": mean, "nc3_duality_std": std, "unc3_cov": std / abs(mean) if mean else math.nan,
            "nc3_dual_error": etf_structure_error(centred, classifier)}


def collapse_metrics(means: torch.Tensor, variances: torch.Tensor, classifier: torch.Tensor, tile_size: int = 1024,
                     progress: bool = False) -> dict[str, float]:
    """Every NC1-NC3 metric of K classes: means [K, d], variances [K], classifier rows [K, d]."""
    k = means.shape[0]
    if k < 2:
        raise ValueError(f"neural-collapse metrics need at least 2 classes, got {k}")
    m = means.double()
    centred = m - m.mean(0)
    out: dict[str, float] = {"n_classes": k}
    out.update(pairwise_stats(centred, variances, tile_size, progress))
    out["nc2_cos_ideal"] = -1.0 / (k - 1)
    out["nc2_etf_error"] = etf_structure_error(centred, centred)
    out.update(norm_stats(centred))
    out.update(duality_stats(classifier, centred))
    return out


def ncc_predict(x: torch.Tensor, centres: torch.Tensor, col_masks: list[torch.Tensor], tile_size: int = 1024) -> torch.Tensor:
    """Nearest class centre for each row of x, once per column mask (nested class subsets).

    x: [n, d]; centres: [K, d]; col_masks: boolean [K] each. Returns [len(col_masks), n] indices into
    centres (-1 where a mask keeps no class). Scores x.mu - ||mu||^2/2 in column tiles: O(n * tile).
    """
    n, k = x.shape[0], centres.shape[0]
    half_sq = 0.5 * (centres * centres).sum(1)
    best = torch.full((len(col_masks), n), -math.inf, dtype=x.dtype, device=x.device)
    arg = torch.full((len(col_masks), n), -1, dtype=torch.long, device=x.device)
    for j0, j1 in _tiles(k, tile_size):
        score = x @ centres[j0:j1].T - half_sq[j0:j1]
        for t, mask in enumerate(col_masks):
            sub = mask[j0:j1]
            if not bool(sub.any()):
                continue
            s = score.masked_fill(~sub, -math.inf)
            val, idx = s.max(dim=1)
            better = val > best[t]
            best[t] = torch.where(better, val, best[t])
            arg[t] = torch.where(better, idx + j0, arg[t])
    return arg
