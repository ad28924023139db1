"""Intervals and paired tests over seeds (or users), in plain numpy: a Student-t 95% interval
for a mean and a two-sided Wilcoxon signed-rank test (exact up to 50 pairs, normal beyond)."""

from __future__ import annotations

import math

import numpy as np

# 0.975 quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)
_Z975 = 1.959964
EXACT_UP_TO = 50


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t (a table to 30 degrees of freedom, Cornish-Fisher beyond)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); the half-width is NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return (float(x.mean()) if len(x) else math.nan), math.nan
    return float(x.mean()), t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))


def wilcoxon(a, b) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired samples a, b (zero
    differences dropped; tied magnitudes get their average rank). NaN without a nonzero pair."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return math.nan
    ranks = _average_ranks(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    if n <= EXACT_UP_TO:
        return _exact_p(ranks, w_plus)
    _, counts = np.unique(np.abs(d), return_counts=True)
    mean = n * (n + 1) / 4
    var = n * (n + 1) * (2 * n + 1) / 24 - float((counts**3 - counts).sum()) / 48
    z = max(abs(w_plus - mean) - 0.5, 0.0) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2)))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _exact_p(ranks: np.ndarray, w_plus: float) -> float:
    """P(W+ as or more extreme) under the null of random signs, by counting sign patterns
    (ranks doubled so that average ranks are integers)."""
    doubled = np.rint(2 * ranks).astype(int)
    counts = np.zeros(int(doubled.sum()) + 1)
    counts[0] = 1
    for r in doubled:
        counts[r:] = counts[r:] + counts[:-r]
    probs = counts / counts.sum()
    w = int(round(2 * w_plus))
    return min(1.0, 2 * min(probs[: w + 1].sum(), probs[w:].sum()))
