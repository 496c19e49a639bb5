"""`sim.formatting`: every duration and allocation label users read. Expected strings are
written by hand (the arithmetic in the comments), not copied from the code's output."""

from fractions import Fraction

import numpy as np
import pytest

from nasalloc.sim.formatting import duration_unit, format_allocation, format_duration, format_in_unit


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0.0 s"),
        (46, "46.0 s"),
        (119.94, "119.9 s"),  # just under 2 min: still seconds
        (120, "2.0 min"),
        (150, "2.5 min"),
        (1506, "25.1 min"),  # 1506 / 60 = 25.1
        (7199, "120.0 min"),  # 119.98 min, rounded; one second under 2 h
        (7200, "2.00 h"),
        (3600 * 2.8, "2.80 h"),  # 10080 s
        (3600 * 7.8, "7.80 h"),
        (90000, "25.00 h"),
    ],
)
def test_format_duration_chooses_the_unit_by_magnitude(seconds, text):
    assert format_duration(seconds) == text


def test_a_column_shares_one_unit():
    assert duration_unit(5.0) == (1.0, "s")
    assert duration_unit(600.0) == (60.0, "min")
    assert duration_unit(3 * 3600.0) == (3600.0, "h")
    # a column in hours shows a 25-minute interval as 0.42 h (1506 / 3600 = 0.418)
    assert format_in_unit(1506, "h") == "0.42"
    assert format_in_unit(1506, "min") == "25.1"
    assert format_in_unit(46, "s") == "46.0"


@pytest.mark.parametrize(
    "k, text",
    [
        (1, "1"),
        (8, "8"),
        (8.0, "8"),
        (0.5, "1/2"),
        (0.25, "1/4"),
        (1 / 3, "1/3"),
        (np.float64(0.5), "1/2"),
        (Fraction(1, 4), "1/4"),
        ("1/4", "1/4"),
        (" 0.5 ", "1/2"),
        ("2", "2"),
        ([1, 2, 4], "[1,2,4]"),
        ([0.25, 0.5, 1, 2], "[1/4,1/2,1,2]"),
        (("1/2", 1), "[1/2,1]"),
        ([4], "[4]"),
        ("elastic", "elastic"),  # the policy's label, as a run's summary and validate show it
    ],
)
def test_format_allocation_writes_what_gpus_per_trial_accepts(k, text):
    assert format_allocation(k) == text


def test_the_simulators_allocation_labels_are_these():
    from nasalloc.sim.cluster import ClusterSpec, parse_allocation

    cluster = ClusterSpec(name="t", gpus=8, gpus_per_node=4)
    assert str(parse_allocation("1/4", cluster)) == "1/4"
    assert str(parse_allocation(4, cluster)) == "4"
    assert str(parse_allocation([0.25, 0.5, 1, 2], cluster)) == "[1/4,1/2,1,2]"


@pytest.mark.parametrize(
    "value, half, text",
    [
        (998.4, 144.2, "998 ±144"),  # three significant digits: none after the point
        (97.5, 16.04, "97.5 ±16.0"),  # one decimal, the interval at the same place
        (0.2134, 0.0372, "0.213 ±0.037"),
        (0.00696, 1.11e-05, "0.00696 ±0.00001"),  # never exponent notation (the 1.11e-05)
        (6.96, 0.0111, "6.96 ±0.01"),
        (12345.6, 789.1, "12,346 ±789"),  # more integer digits than three: all of them, separated
        (0.0, 0.0, "0 ±0"),
        (3.14159, None, "3.14"),
    ],
)
def test_format_significant_writes_mean_and_interval_alike(value, half, text):
    from nasalloc.sim.formatting import format_significant

    assert format_significant(value, half) == text


def test_a_column_of_small_numbers_shares_one_scale():
    from nasalloc.sim.formatting import number_scale

    # 0.00696 is under 0.1: x1000 brings it to 6.96 (and 0.213 to 213)
    assert number_scale([0.00696, 0.213]) == (0.001, "×0.001")
    assert number_scale([0.0387, 0.225]) == (0.001, "×0.001")  # 38.7 and 225
    assert number_scale([0.1, 3.0]) == (1.0, "")  # 0.100 needs no scale
    assert number_scale([2e-7, 1.0]) == (1e-9, "×1e-9")  # 2e-7 / 1e-9 = 200
    assert number_scale([0.0, 998.0]) == (1.0, "")  # a zero (free GPUs) does not pick the scale
    assert number_scale([]) == (1.0, "")
