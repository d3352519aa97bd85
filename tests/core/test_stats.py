"""Comparison statistics on synthetic numbers with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from at2po.core.stats import bootstrap_ci, curve_band, paired_difference_ci


def test_constant_difference_has_a_degenerate_interval() -> None:
    a = {s: 0.5 + 0.1 * s for s in range(5)}
    b = {s: a[s] - 0.04 for s in range(5)}
    ci = paired_difference_ci(a, b)
    assert ci.mean == pytest.approx(0.04) and ci.low == pytest.approx(0.04) and ci.high == pytest.approx(0.04)
    assert ci.n == 5 and ci.excludes_zero()


def test_pairing_removes_the_shared_seed_effect() -> None:
    """Seeds differ a lot (warm-start luck), the methods differ by a small constant plus noise: the paired interval
    sees the small difference, an unpaired comparison of the two means could not."""
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0, 0.2, 8)
    a = {s: 0.5 + seed_effect[s] + 0.03 + rng.normal(0, 0.005) for s in range(8)}
    b = {s: 0.5 + seed_effect[s] + rng.normal(0, 0.005) for s in range(8)}
    paired = paired_difference_ci(a, b)
    assert paired.excludes_zero() and 0.02 < paired.mean < 0.04
    unpaired_a, unpaired_b = bootstrap_ci(list(a.values())), bootstrap_ci(list(b.values()))
    assert unpaired_a.low < unpaired_b.high  # the two means' intervals overlap


def test_only_common_seeds_are_paired_and_nan_is_dropped() -> None:
    ci = paired_difference_ci({0: 1.0, 1: 2.0, 2: 3.0}, {1: 1.0, 2: 1.0, 3: 9.0})
    assert ci.n == 2 and ci.mean == pytest.approx(1.5)
    assert bootstrap_ci([1.0, float("nan"), 3.0]).n == 2
    assert np.isnan(bootstrap_ci([]).mean)


def test_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    trials = 300
    for t in range(trials):
        x = rng.normal(0.3, 1.0, 40)
        ci = bootstrap_ci(x, n_boot=2000, seed=t)
        hits += ci.low <= 0.3 <= ci.high
    assert 0.90 <= hits / trials <= 0.98  # percentile bootstrap, n = 40: close to nominal


def test_interval_width_matches_the_normal_theory() -> None:
    x = np.random.default_rng(2).normal(0, 1, 400)
    ci = bootstrap_ci(x, n_boot=20_000)
    expected = 2 * 1.96 * x.std(ddof=1) / np.sqrt(x.size)
    assert ci.high - ci.low == pytest.approx(expected, rel=0.06)


def test_curve_band() -> None:
    curves = [np.array([0.0, 1.0, 2.0]), np.array([2.0, 1.0, 0.0])]
    mean, lo, hi = curve_band(curves)
    np.testing.assert_allclose(mean, [1.0, 1.0, 1.0])
    assert hi[1] == lo[1] == 1.0 and hi[0] > 1.0 > lo[0]
