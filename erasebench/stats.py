"""Uncertainty: bootstrap confidence intervals, intervals over seeds and paired tests between methods.

Pure numpy (no scipy, no torch), so the runner and the report share one implementation; the tests check it
against scipy. Every function is deterministic for a given ``seed``.

* :func:`bootstrap_ci`: percentile bootstrap of a per-image statistic (mean or sum) of one run.
* :func:`t_interval`: Student-t interval of a mean over seeds (needs two or more).
* :func:`mcnemar_exact`: exact (binomial) McNemar test of two paired 0/1 outcomes (ACC, ASR, nude rate).
* :func:`paired_bootstrap_p`: paired bootstrap test of a mean difference (LPIPS, CLIP score, counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The defaults every row's ``ci_method`` names: a 95% percentile bootstrap over images, 1000 resamples, seed 0.
LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
#: The level of the paired tests behind the tables' "not significantly different from the best" marks.
ALPHA = 0.05
STATISTICS = ("mean", "sum")


def ci_method(resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED, over: str = "images") -> str:
    """The text a row records for how its interval was made, e.g. ``bootstrap 95% over images (B=1000, seed 0)``."""
    return f"bootstrap {level:.0%} over {over} (B={resamples}, seed {seed})"


def aggregate(samples: Sequence[float], statistic: str) -> float:
    """The value per-image samples give: their ``mean`` or their ``sum``."""
    return float(_statistic(np.asarray(samples, dtype=float), statistic))


def _statistic(x: np.ndarray, statistic: str, axis: int = -1) -> np.ndarray:
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, not {statistic!r}")
    return x.sum(axis=axis) if statistic == "sum" else x.mean(axis=axis)


def bootstrap_ci(samples: Sequence[float], statistic: str = "mean", level: float = LEVEL,
                 resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(samples)``: resample the images with replacement.

    Args:
        samples: One value per image (0/1 for a classifier hit, a distance, a count, ...).
        statistic: ``mean`` or ``sum`` (counts of detections add up over a split's images).
        level: Coverage, e.g. 0.95.
        resamples: Bootstrap resamples.
        seed: Seed of the resampling (the same samples and seed give the same interval).

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than two samples or a non-finite sample.
    """
    x = np.asarray(samples, dtype=float)
    if len(x) < 2 or not np.isfinite(x).all():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = _statistic(x[rng.integers(0, len(x), size=(resamples, len(x)))], statistic)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def _t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t by bisection on its CDF (regularised incomplete beta via a continued fraction)."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _t_cdf(mid, dof) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _t_cdf(t: float, dof: int) -> float:
    x = dof / (dof + t * t)
    tail = 0.5 * _betainc(dof / 2, 0.5, x)
    return 1 - tail if t >= 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    # Numerical Recipes' continued fraction (Lentz), with the symmetry that keeps it convergent.
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > 1e-300 else 1e-300)
    f = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > 1e-300 else 1e-300)
            c = 1 + num / c if abs(1 + num / c) > 1e-300 else 1e-300
            f *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return front * f / a


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (one per seed): mean ± t * std / sqrt(n).

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than two values.
    """
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = _t_quantile(1 - (1 - level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def _paired(a: Sequence[float], b: Sequence[float], minimum: int) -> tuple[np.ndarray, np.ndarray]:
    """Two samples as float arrays, checked to pair up: the same length, at least ``minimum``.

    Raises:
        ValueError: They do not (a single value would otherwise broadcast against the other sample).
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or len(x) < minimum:
        raise ValueError(f"paired samples must have the same length, at least {minimum} (got {len(x)} and {len(y)})")
    return x, y


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided exact McNemar p-value of paired binary outcomes (a binomial test on the discordant pairs).

    Args:
        a: 0/1 per image for one method.
        b: 0/1 per image for the other, on the same prompts and seeds.

    Returns:
        The p-value (1.0 when no pair is discordant).
    """
    x, y = (v.astype(bool) for v in _paired(a, b, minimum=0))
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    cdf = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * cdf)


def paired_bootstrap_p(a: Sequence[float], b: Sequence[float], resamples: int = 10 * RESAMPLES,
                       seed: int = SEED) -> float:
    """Two-sided paired bootstrap p-value for ``mean(a) == mean(b)``.

    The per-pair differences are centred (the null hypothesis) and resampled; the p-value is the share of
    resampled mean differences at least as far from zero as the observed one, with the +1 correction that
    keeps it above zero.

    Returns:
        The p-value (1.0 when every difference is zero).
    """
    x, y = _paired(a, b, minimum=2)
    d = x - y
    observed = abs(d.mean())
    if not np.any(d != d[0]) and observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    centred = d - d.mean()
    draws = np.abs(centred[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1))
    return float((1 + (draws >= observed - 1e-12).sum()) / (resamples + 1))


def is_binary(values: Sequence[float]) -> bool:
    """Whether every value is 0 or 1 (then :func:`mcnemar_exact` is the paired test)."""
    x = np.asarray(values, dtype=float)
    return bool(len(x)) and bool(np.isin(x, (0.0, 1.0)).all())


def paired_p(a: Sequence[float], b: Sequence[float], seed: int = SEED) -> tuple[float, str]:
    """The paired test that fits the data: exact McNemar for 0/1 outcomes, else a paired bootstrap.

    Returns:
        ``(p, test name)``.
    """
    if is_binary(a) and is_binary(b):
        return mcnemar_exact(a, b), "exact McNemar"
    return paired_bootstrap_p(a, b, seed=seed), "paired bootstrap"
