"""Paired uncertainty of one ablation difference over test cases (``paper.experiments --table``).

For per-case values ``a`` (TFS-Diff) and ``b`` (an ablation row) of the same cases, the differences are
``d_i = a_i - b_i`` and the statistic is their mean.

* Interval: the percentile bootstrap over cases. ``resamples`` times, n case indices are drawn with replacement
  (``numpy.random.default_rng(seed)``) and the mean of their differences taken; the interval is the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those means (numpy's default linear
  interpolation). Same inputs and seed, same interval.
* p-value: the two-sided paired sign-flip (permutation) test of "the differences are symmetric around 0". Each
  sign vector s in {-1, +1}^n gives the mean of ``s_i d_i``; p is the share of sign vectors whose absolute mean is at
  least the observed one. When 2^n <= ``resamples`` all 2^n vectors are enumerated (exact p); otherwise ``resamples``
  vectors are drawn (same generator seed) and p = (1 + hits) / (1 + resamples), which never underestimates p (Phipson
  and Smyth 2010). A tie is a flipped mean within 1e-9 x max |d_i| of the observed one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
_TIE = 1e-9


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over ``n`` paired cases, its bootstrap interval and its sign-flip p-value."""

    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    exact_p: bool  # True: all 2^n sign vectors enumerated


def bootstrap_interval(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diff`` ((n,) float, n >= 1); see the module docstring."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def sign_flip_p(diff: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, bool]:
    """Two-sided paired sign-flip p-value of the mean of ``diff`` ((n,) float, n >= 1), and whether it is exact."""
    n = diff.size
    exact = 2 ** n <= resamples
    if exact:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(resamples, n))
    observed = abs(float(diff.mean()))
    hits = int(np.count_nonzero(np.abs((signs * diff).mean(axis=1)) >= observed - _TIE * float(np.abs(diff).max())))
    return (hits / len(signs), True) if exact else ((1 + hits) / (1 + resamples), False)


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """The paired statistics of ``a - b`` (two (n,) arrays of the same cases, n >= 1, finite)."""
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"expected two non-empty (n,) arrays of the same cases, got shapes {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("paired values must be finite")
    diff = a.astype(np.float64) - b.astype(np.float64)
    low, high = bootstrap_interval(diff, resamples, seed, confidence)
    p_value, exact = sign_flip_p(diff, resamples, seed)
    return PairedDifference(int(diff.size), float(diff.mean()), low, high, p_value, exact)
