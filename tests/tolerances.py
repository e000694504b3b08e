"""Tolerances derived from the computation, not constants one CPU's kernels happen to meet.

A float sum of n terms of size up to M carries a rounding error of at most about n * eps * M
(the usual a-priori bound; pairwise and vectorised sums do better). BLAS kernels differ between
CPUs (AVX2 against AVX-512, MKL against OpenBLAS) in the order they add, so a test may assume the
bound and nothing tighter. `safety` covers the few extra operations around the sum.
"""

from __future__ import annotations

import torch

EPS64 = float(torch.finfo(torch.float64).eps)  # 2.2e-16
EPS32 = float(torch.finfo(torch.float32).eps)  # 1.2e-7


def rounding(magnitude: float, n_terms: int = 1, eps: float = EPS64, safety: float = 16.0) -> float:
    """An upper bound on the rounding error of summing `n_terms` terms of size up to `magnitude`."""
    return safety * max(n_terms, 1) * eps * abs(magnitude)
