"""Statistics for method comparisons: means with bootstrap confidence intervals, paired by seed.

Runs of two methods that share a seed share the warm start and the prompt order, so their difference is compared
seed by seed (a paired design): with d_s = a_s − b_s, the estimate is mean_s d_s and the interval comes from
resampling seeds with replacement (percentile bootstrap). Vectorised: one ``[n_boot, n]`` index draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """An estimate with its (1 − alpha) bootstrap interval and the number of seeds it rests on."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def bootstrap_ci(
    values: np.ndarray | list[float], alpha: float = 0.05, n_boot: int = 10_000, seed: int = 0
) -> Interval:
    """Mean of ``values`` [n] and its percentile-bootstrap (1 − alpha) interval (NaNs dropped)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)  # [n_boot]
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(lo), float(hi), int(x.size))


def paired_difference_ci(
    a: dict[int, float], b: dict[int, float], alpha: float = 0.05, n_boot: int = 10_000, seed: int = 0
) -> Interval:
    """mean_s (a_s − b_s) over the seeds both have (``{seed: value}``), with a paired bootstrap interval."""
    common = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in common]
    return bootstrap_ci(d, alpha=alpha, n_boot=n_boot, seed=seed)


def curve_band(curves: list[np.ndarray], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise mean and normal-approximation (1 − alpha) band of equally long curves ``[seeds][points]``."""
    from statistics import NormalDist

    y = np.asarray(curves, dtype=np.float64)  # [S, P]
    mean = np.nanmean(y, axis=0)
    n = np.sum(np.isfinite(y), axis=0).clip(min=1)
    sd = np.nanstd(y, axis=0, ddof=1) if y.shape[0] > 1 else np.zeros_like(mean)
    half = NormalDist().inv_cdf(1 - alpha / 2) * sd / np.sqrt(n)
    return mean, mean - half, mean + half


__all__ = ["Interval", "bootstrap_ci", "curve_band", "paired_difference_ci"]
