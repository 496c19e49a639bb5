"""Allowed allocations and placement."""

from __future__ import annotations

import pytest

from nasalloc.sim.cluster import ClusterSpec, DevicePool, allowed_allocations, is_allowed, parse_allocation
from nasalloc.sim.config import to_typed
from nasalloc.sim.errors import UserError


def test_allowed_allocations_on_juwels_like_clusters():
    c = ClusterSpec("j", 16, 4)
    assert allowed_allocations(c, min_k=0.25) == [0.25, 0.5, 1, 2, 4, 8, 16]
    assert allowed_allocations(ClusterSpec("j", 64, 4), min_k=1) == [1, 2, 4, 8, 16, 32, 64]
    assert allowed_allocations(ClusterSpec("j", 12, 4), min_k=1) == [1, 2, 4, 12]  # 8 does not divide 12
    assert allowed_allocations(ClusterSpec("s", 2, 4), min_k=0.5) == [0.5, 1, 2]  # smaller than a node


@pytest.mark.parametrize("k, ok", [(1 / 3, True), (0.3, False), (3, False), (6, False), (12, False), (8, True), (16, True), (0, False), (-1, False)])
def test_is_allowed(k, ok):
    assert is_allowed(ClusterSpec("j", 16, 4), k) is ok


def test_parse_allocation_forms_and_errors():
    c = ClusterSpec("j", 16, 4)
    assert parse_allocation(1, c).schedule == (1.0,)
    assert parse_allocation("1/4", c).schedule == (0.25,)
    assert str(parse_allocation([0.5, 1, 2, 4], c)) == "[1/2,1,2,4]"
    assert parse_allocation([1, 2, 4], c).label == [1, 2, 4]
    with pytest.raises(UserError, match=r"gpus_per_trial=3: not allowed on 16 GPUs \(4 per node\); allowed: 1/m .* 1, 2, 4, 8, 16"):
        parse_allocation(3, c)
    with pytest.raises(UserError, match="gpus_per_trial=abc: not a number"):
        parse_allocation("abc", c)
    with pytest.raises(UserError, match=r"gpus_per_trial=\[1, 32\]: 32 is not allowed"):
        parse_allocation([1, 32], c)


def test_cluster_spec_validation():
    with pytest.raises(UserError, match="cluster.gpus=6: must be a multiple of gpus_per_node=4"):
        to_typed(ClusterSpec, {"name": "c", "gpus": 6, "gpus_per_node": 4}, "cluster")


def test_placement_best_fit_and_whole_nodes():
    pool = DevicePool(ClusterSpec("j", 16, 4), (0.5, 1, 2, 8))
    a = pool.place(0.5)
    b = pool.place(0.5)
    assert a == b == (0,)  # the partly used device fills first
    assert pool.place(2) == (1, 2)  # best fit: node 0 (3 whole devices) before the untouched nodes
    assert pool.place(8) == tuple(range(4, 12))  # the two lowest whole nodes
    assert pool.place(8) is None  # one whole node left
    pool.release(tuple(range(4, 12)), 8)
    assert pool.place(8) == tuple(range(4, 12))
    assert pool.free_units == pool.L * 16 - pool.units(0.5) * 2 - pool.units(2) - pool.units(8)


def test_fragmentation_blocks_a_node_sized_request():
    pool = DevicePool(ClusterSpec("j", 8, 4), (1, 4))
    assert pool.place(1) == (0,)
    assert pool.place(1) == (1,)  # best fit keeps node 1 whole
    assert pool.place(4) == (4, 5, 6, 7)
    assert pool.place(4) is None  # 2 free devices in node 0 cannot take a 4-GPU trial
