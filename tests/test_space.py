"""SearchSpace: sampling, the unit-cube mapping BOHB relies on, and config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasalloc.sim.errors import UserError
from nasalloc.sim.space import SearchSpace

SPEC = {
    "lr": {"type": "float", "low": 1.0e-4, "high": 0.1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "width": {"type": "int", "low": 16, "high": 256, "log": True},
    "depth": {"type": "int", "low": 2, "high": 5},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
}


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_config(SPEC)


def test_samples_are_in_range_and_typed(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    samples = [space.sample(rng) for _ in range(2000)]
    assert list(samples[0]) == space.names == list(SPEC)
    for c in samples:
        assert 1e-4 <= c["lr"] <= 0.1
        assert 0.0 <= c["dropout"] <= 0.5
        assert isinstance(c["width"], int) and 16 <= c["width"] <= 256
        assert isinstance(c["depth"], int) and 2 <= c["depth"] <= 5
        assert c["optimizer"] in ("sgd", "adam")
    # log scale: the median lr is near the geometric mean, far below the arithmetic one
    median = float(np.median([c["lr"] for c in samples]))
    assert 0.5 * math.sqrt(1e-5) < median < 2 * math.sqrt(1e-5)
    # every integer and every choice turns up with about equal share
    depths = np.bincount([c["depth"] for c in samples], minlength=6)[2:]
    assert depths.min() > 0.8 * 500 and depths.max() < 1.2 * 500
    assert {c["optimizer"] for c in samples} == {"sgd", "adam"}
    assert {16, 256} <= {c["width"] for c in samples}


def test_sampling_uses_only_the_passed_generator(space: SearchSpace) -> None:
    a = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    np.random.seed(1)  # the global state must not matter
    b = [space.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    assert space.sample(np.random.default_rng(8)) != a[0]


def test_unit_round_trip(space: SearchSpace) -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        c = space.sample(rng)
        u = space.to_unit(c)
        assert u.shape == (len(space),)
        assert np.all((0 <= u[:4]) & (u[:4] <= 1))
        assert u[4] in (0.0, 1.0)  # categorical: the choice index
        back = space.from_unit(u)
        assert back["width"] == c["width"] and back["depth"] == c["depth"] and back["optimizer"] == c["optimizer"]
        assert back["lr"] == pytest.approx(c["lr"], rel=1e-9)
        assert back["dropout"] == pytest.approx(c["dropout"], abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(u=st.lists(st.floats(-0.5, 1.5), min_size=5, max_size=5))
def test_from_unit_always_gives_a_valid_config(u: list[float]) -> None:
    space = SearchSpace.from_config(SPEC)
    c = space.from_unit(np.array(u))
    assert 1e-4 * (1 - 1e-9) <= c["lr"] <= 0.1 * (1 + 1e-9)
    assert 0.0 <= c["dropout"] <= 0.5
    assert 16 <= c["width"] <= 256 and 2 <= c["depth"] <= 5
    assert c["optimizer"] in ("sgd", "adam")
    # and maps back into the unit cube
    v = space.to_unit(c)
    assert np.all((-1e-9 <= v[:4]) & (v[:4] <= 1 + 1e-9))


def test_integer_cells_have_equal_width() -> None:
    space = SearchSpace.from_config({"k": {"type": "int", "low": 1, "high": 4}})
    # each integer owns a quarter of [0, 1]
    assert [space.from_unit(np.array([u]))["k"] for u in (0.0, 0.24, 0.26, 0.49, 0.51, 0.74, 0.76, 1.0)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert space.to_unit({"k": 1})[0] == pytest.approx(0.125)


def test_degenerate_ranges() -> None:
    space = SearchSpace.from_config(
        {"a": {"type": "float", "low": 2.0, "high": 2.0}, "b": {"type": "categorical", "choices": ["only"]}}
    )
    c = space.sample(np.random.default_rng(0))
    assert c == {"a": 2.0, "b": "only"}
    assert space.to_unit(c).tolist() == [0.5, 0.0]


@pytest.mark.parametrize(
    "node, start",
    [
        (None, "space: the search space is empty"),
        ({}, "space: the search space is empty"),
        ({"lr": 0.1}, "space.lr: expected"),
        ({"lr": {"type": "normal"}}, "space.lr.type='normal'"),
        ({"lr": {"type": "float", "low": 1}}, "space.lr: needs numeric low and high"),
        ({"lr": {"type": "float", "low": "a", "high": 1}}, "space.lr: needs numeric low and high"),
        ({"lr": {"type": "float", "low": 1, "high": 0}}, "space.lr: low=1.0 must not exceed high=0.0"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "space.lr.low=0.0: a log-scaled range must be positive"),
        ({"n": {"type": "int", "low": 0.5, "high": 3}}, "space.n: an int parameter needs integer low and high"),
        ({"o": {"type": "categorical", "choices": []}}, "space.o.choices: must be a non-empty list"),
        ({"o": {"type": "categorical", "choices": ["a"], "low": 0}}, "space.o.low: unknown for a categorical parameter"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "step": 0.1}}, "space.lr.step: unknown for a float parameter"),
    ],
)
def test_bad_specs(node, start: str) -> None:
    with pytest.raises(UserError) as err:
        SearchSpace.from_config(node)
    assert str(err.value).startswith(start), str(err.value)
    assert "\n" not in str(err.value)
