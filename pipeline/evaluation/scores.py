"""Distances and accuracies with percentile-bootstrap 95% intervals.

Every score is a statistic of one or two sets of items (images, clips); its interval comes
from recomputing it on ``resamples`` draws of each set with replacement. Distances are
computed from Gram matrices, so a resample costs O(n^2) rather than a 2048-d covariance:

* Frechet distance, exactly: ``tr sqrt(S_a S_b)`` is the sum of the singular values of
  ``A_c B_c^T / sqrt((n_a - 1)(n_b - 1))`` (centred rows), whose nonzero spectrum is that of
  ``S_a S_b``. The same number as clean-fid's ``frechet_distance`` (``scipy.linalg.sqrtm``),
  without its 2048 x 2048 square root. FD is biased upwards at small n: compare FIDs of sets of
  one size only, and read KID where sizes differ.
* KID: the unbiased MMD^2 with clean-fid's cubic kernel ``(x.y / d + 1)^3`` over all pairs at
  once: what clean-fid's 100 random subsets estimate, without their draw. In a bootstrap
  resample an item drawn twice pairs with itself, which biases the resampled values slightly.

Intervals are percentile intervals recentred on the estimate (see :func:`_score`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True)
class Score:
    value: float
    low: float
    high: float

    def interval(self) -> dict:
        return {"low": self.low, "high": self.high}


def _score(value: float, draws: np.ndarray) -> Score:
    """The percentile interval of the resampled values, moved by their mean's distance from
    ``value``: a resample repeats items, which alone raises a Frechet distance (it sees fewer
    distinct items), so the raw percentiles of FD can miss the estimate they surround."""
    draws = draws[np.isfinite(draws)]
    if not len(draws) or not math.isfinite(value):
        return Score(value, math.nan, math.nan)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail]) - (draws.mean() - value)
    return Score(float(value), float(low), float(high))


def _draws(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    return rng.integers(0, n, size=(resamples, n))


def _centred(gram: np.ndarray) -> np.ndarray:
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def _frechet_from_grams(gaa: np.ndarray, gbb: np.ndarray, gab: np.ndarray) -> float:
    na, nb = len(gaa), len(gbb)
    if na < 2 or nb < 2:
        return math.nan
    mean_gap = gaa.mean() + gbb.mean() - 2 * gab.mean()
    trace_a = (np.trace(gaa) - na * gaa.mean()) / (na - 1)
    trace_b = (np.trace(gbb) - nb * gbb.mean()) / (nb - 1)
    cross = (gab - gab.mean(axis=0, keepdims=True) - gab.mean(axis=1, keepdims=True) + gab.mean())
    cross /= math.sqrt((na - 1) * (nb - 1))
    small = cross.T @ cross if na >= nb else cross @ cross.T
    root_trace = np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum()
    return float(mean_gap + trace_a + trace_b - 2 * root_trace)


def _kid_from_kernels(kaa: np.ndarray, kbb: np.ndarray, kab: np.ndarray) -> float:
    na, nb = len(kaa), len(kbb)
    if na < 2 or nb < 2:
        return math.nan
    within_a = (kaa.sum() - np.trace(kaa)) / (na * (na - 1))
    within_b = (kbb.sum() - np.trace(kbb)) / (nb * (nb - 1))
    return float(within_a + within_b - 2 * kab.mean())


def _two_sample(a: np.ndarray, b: np.ndarray, statistic, kernel, resamples: int, seed: int) -> Score:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    gaa, gbb, gab = (kernel(x @ y.T) for x, y in ((a, a), (b, b), (a, b)))
    value = statistic(gaa, gbb, gab)
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(gaa[np.ix_(i, i)], gbb[np.ix_(j, j)], gab[np.ix_(i, j)])
                      for i, j in zip(_draws(rng, len(a), resamples), _draws(rng, len(b), resamples))])
    return _score(value, draws)


def frechet(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> Score:
    """Frechet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    return _two_sample(a, b, _frechet_from_grams, lambda gram: gram, resamples, seed)


def kernel_distance(a: np.ndarray, b: np.ndarray, resamples: int, seed: int) -> Score:
    """KID (unbiased MMD^2, cubic polynomial kernel), as clean-fid defines it."""
    dims = np.shape(a)[1]
    return _two_sample(a, b, _kid_from_kernels, lambda gram: (gram / dims + 1) ** 3, resamples, seed)


def mean_score(values: np.ndarray, resamples: int, seed: int) -> Score:
    """The mean of per-item values (hits for an accuracy, errors in dB), NaNs left out."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if not len(values):
        return Score(math.nan, math.nan, math.nan)
    draws = values[_draws(np.random.default_rng(seed), len(values), resamples)].mean(axis=1)
    return _score(float(values.mean()), draws)


def ratio_score(numerators: list[np.ndarray], denominators: list[np.ndarray], resamples: int, seed: int) -> Score:
    """``mean(concat numerators) / mean(concat denominators)``, items resampled as wholes (a long
    clip's seams and its other frames stay together)."""
    def ratio(items):
        return float(np.concatenate([numerators[k] for k in items]).mean()
                     / np.concatenate([denominators[k] for k in items]).mean())
    items = np.arange(len(numerators))
    draws = np.array([ratio(i) for i in _draws(np.random.default_rng(seed), len(items), resamples)])
    return _score(ratio(items), draws)
