"""Intervals and paired tests (erasebench.stats) against scipy and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from erasebench import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_bootstrap_interval_matches_a_hand_computed_percentile_bootstrap() -> None:
    x = np.random.default_rng(3).random(40)
    rng = np.random.default_rng(stats.SEED)  # the same draws, computed here by hand
    means = sorted(x[rng.integers(0, 40, size=(stats.RESAMPLES, 40))].mean(axis=1))
    low, high = stats.bootstrap_ci(x)
    assert low == pytest.approx(np.quantile(means, 0.025)) and high == pytest.approx(np.quantile(means, 0.975))
    # ... and scipy's percentile bootstrap (other draws) lands within a few thousandths of it.
    ref = scipy_stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", random_state=0)
    assert low == pytest.approx(ref.confidence_interval.low, abs=0.02)
    assert high == pytest.approx(ref.confidence_interval.high, abs=0.02)
    assert stats.bootstrap_ci(x, "sum")[0] == pytest.approx(40 * low)


def test_bootstrap_interval_of_constant_or_tiny_samples() -> None:
    assert stats.bootstrap_ci([1.0] * 10) == (1.0, 1.0)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5, float("nan")]))
    assert stats.bootstrap_ci([0, 1, 1, 0], seed=1) == stats.bootstrap_ci([0, 1, 1, 0], seed=1)


@pytest.mark.parametrize("values", [[0.2, 0.0, 0.567], [1.0, 2.0], [3.1, 2.9, 3.0, 3.3, 2.7]])
def test_t_interval_matches_scipy(values: list[float]) -> None:
    ref = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert stats.t_interval(values) == pytest.approx(ref, rel=1e-9)
    assert all(math.isnan(v) for v in stats.t_interval([1.0]))


@pytest.mark.parametrize(("only_a", "only_b", "both"), [(7, 0, 3), (5, 9, 10), (12, 11, 0), (0, 0, 5), (1, 30, 2)])
def test_exact_mcnemar_matches_scipys_binomial_test(only_a: int, only_b: int, both: int) -> None:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * 4
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * 4
    n = only_a + only_b
    expected = 1.0 if n == 0 else scipy_stats.binomtest(min(only_a, only_b), n, 0.5).pvalue
    assert stats.mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-12)


def test_paired_bootstrap_agrees_with_the_paired_t_test_on_normal_data() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(0, 1, 300)
    for shift in (0.0, 0.1, 0.2):
        b = a + rng.normal(shift, 1, 300)
        p = stats.paired_bootstrap_p(a, b)
        ref = scipy_stats.ttest_rel(a, b).pvalue
        assert p == pytest.approx(ref, abs=0.03), shift
    assert stats.paired_bootstrap_p(a, a) == 1.0


def test_paired_p_picks_the_test_by_the_data() -> None:
    assert stats.paired_p([0, 1, 1, 0], [1, 1, 0, 0])[1] == "exact McNemar"
    assert stats.paired_p([0.1, 0.5, 0.2], [0.3, 0.4, 0.2])[1] == "paired bootstrap"


def test_paired_tests_refuse_samples_of_different_lengths() -> None:
    # A single value would broadcast against the other sample; it is no pairing.
    with pytest.raises(ValueError, match="same length"):
        stats.paired_bootstrap_p([0.5], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same length"):
        stats.mcnemar_exact([1, 0], [1, 0, 1])
    assert stats.aggregate([1.0, 2.0, 3.0], "sum") == 6.0 and stats.aggregate([1.0, 2.0], "mean") == 1.5
