import math

import pytest

from nasalloc.sim.stats import mean_ci, paired_indistinguishable


def test_mean_ci_matches_the_t_interval_by_hand():
    e = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sd 1.2910, sem 0.6455, t(0.975, 3) = 3.1824
    assert e.mean == 2.5
    assert e.half_width == pytest.approx(3.182446 * 0.645497, rel=1e-5)


def test_interval_narrows_with_more_seeds():
    few = mean_ci([1.0, 3.0, 2.0, 2.5])
    many = mean_ci([1.0, 3.0, 2.0, 2.5] * 5)
    assert many.half_width < few.half_width


def test_missing_values_make_the_mean_infinite():
    e = mean_ci([1.0, None, 2.0])
    assert math.isinf(e.mean) and e.n == 2 and e.total == 3


def test_paired_test_sees_a_small_consistent_difference():
    a = [10.0, 20.0, 30.0, 40.0, 50.0]
    b = [x + 0.5 + 0.01 * i for i, x in enumerate(a)]
    assert not paired_indistinguishable(a, b)  # unpaired intervals would overlap widely
    assert paired_indistinguishable(a, [x + (0.5 if i % 2 else -0.5) for i, x in enumerate(a)])
    assert paired_indistinguishable(a, list(a))
    assert not paired_indistinguishable([1.0, None], [1.0, 2.0])
