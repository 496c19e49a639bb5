"""Statistics for comparing allocations over seeds: means, 95% intervals, paired tests.

Every allocation of a sweep is simulated with the same seeds, so seed i of allocation A and
seed i of allocation B searched the same configurations with the same learning curves: a
*paired* comparison (t-test on per-seed differences) is the right test and far sharper than
comparing two unpaired intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Estimate:
    """Mean with a two-sided confidence interval; `n` finite values out of `total`."""

    mean: float
    low: float
    high: float
    n: int
    total: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0

    def to_dict(self) -> dict[str, float | int | None]:
        def clean(x: float) -> float | None:
            return None if not math.isfinite(x) else x

        return {"mean": clean(self.mean), "ci_low": clean(self.low), "ci_high": clean(self.high),
                "n": self.n, "of": self.total}


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> Estimate:
    """Student-t interval of the mean. Missing/infinite values (a target never reached) make
    the mean infinite: an allocation that sometimes never gets there is not "fast on average"."""
    total = len(values)
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if total == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    if len(finite) < total:
        return Estimate(math.inf, math.inf, math.inf, len(finite), total)
    mean = float(finite.mean())
    if len(finite) < 2:
        return Estimate(mean, -math.inf, math.inf, len(finite), total)
    sem = float(finite.std(ddof=1)) / math.sqrt(len(finite))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, len(finite) - 1)) * sem
    return Estimate(mean, mean - half, mean + half, len(finite), total)


def paired_indistinguishable(a: Sequence[float | None], b: Sequence[float | None], alpha: float = 0.05) -> bool:
    """True when the paired t-test cannot tell the per-seed values of `a` and `b` apart.

    Pairs where either side is missing/infinite are compared by that alone: if only one
    side ever misses, they are distinguishable.
    """
    pairs = [(x, y) for x, y in zip(a, b)]
    fin = [(x, y) for x, y in pairs if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(fin) < len(pairs):
        missing_a = sum(1 for x, _ in pairs if x is None or not math.isfinite(x))
        missing_b = sum(1 for _, y in pairs if y is None or not math.isfinite(y))
        if missing_a != missing_b:
            return False
    if len(fin) < 2:
        return True
    diff = np.array([x - y for x, y in fin], dtype=float)
    if np.allclose(diff, 0.0, atol=1e-12 * max(1.0, float(np.abs([x for x, _ in fin]).max()))):
        return True
    if float(diff.std(ddof=1)) == 0.0:
        return False  # a constant non-zero difference is as distinguishable as it gets
    p_value = float(stats.ttest_1samp(diff, 0.0).pvalue)
    return p_value > alpha
