"""Invariants of the step/epoch-time model over random parameters (Pollux goodput_test style)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nasalloc.sim.speedup import EpochTimeModel, StepTimeModel, expected_max_normal

FACTS_MAX = {2: 0.564, 4: 1.029, 8: 1.424, 16: 1.766, 32: 2.070, 64: 2.344}


@pytest.mark.parametrize("k, value", sorted(FACTS_MAX.items()))
def test_expected_max_of_normals_matches_published_table(k, value):
    assert expected_max_normal(k) == pytest.approx(value, abs=1e-3)


@st.composite
def steps(draw):
    """Random but physical parameters: leaving the node never makes communication cheaper."""
    intra_bw = draw(st.floats(1e8, 1e12))
    intra_lat = draw(st.floats(0, 1e-3))
    return StepTimeModel(
        t_compute_s=draw(st.floats(1e-3, 2.0)),
        gamma=draw(st.floats(1.0, 10.0)),
        grad_bytes=draw(st.floats(0, 1e9)),
        intra_bandwidth_Bps=intra_bw,
        intra_latency_s=intra_lat,
        inter_bandwidth_Bps=intra_bw * draw(st.floats(0.01, 1.0)),
        inter_latency_s=intra_lat + draw(st.floats(0, 1e-2)),
        straggler_cv=draw(st.floats(0, 0.2)),
    )


def model(step, gpn=4, scaling="weak"):
    return EpochTimeModel(step=step, samples_per_epoch=100_000, batch_per_device=128, gpus_per_node=gpn,
                          scaling=scaling, global_batch=1024, sharing={2: 1.6, 4: 3.0})


@settings(max_examples=150, deadline=None)
@given(steps(), st.sampled_from([1, 2, 4, 8]))
def test_speedup_never_exceeds_k_and_per_device_throughput_falls(step, gpn):
    ks = [1, 2, 4, 8, 16, 32, 64]
    throughput = [k / step.step_time(k, gpn) for k in ks]  # samples/s per unit of per-device batch
    speedups = [x / throughput[0] for x in throughput]
    for k, s in zip(ks, speedups):
        assert s <= k * (1 + 1e-9)  # weak scaling: no super-linear speedup
    per_device = [s / k for k, s in zip(ks, speedups)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(per_device, per_device[1:]))


@settings(max_examples=100, deadline=None)
@given(steps())
def test_step_time_lies_between_max_and_sum_of_compute_and_network(step):
    for k in (2, 8):
        t_c, t_net = step.t_compute_s, step.network_time(k, 4)
        t = step.step_time(k, 4) / (1 + step.straggler_cv * expected_max_normal(k))
        assert max(t_c, t_net) * (1 - 1e-9) <= t <= (t_c + t_net) * (1 + 1e-9)


def test_no_communication_gives_linear_speedup_and_ring_formula_is_exact():
    m = model(StepTimeModel(t_compute_s=0.1))
    assert m.speedup(8) == pytest.approx(8 * m.steps_per_epoch(1) / (8 * m.steps_per_epoch(8)))  # ceil only
    step = StepTimeModel(t_compute_s=0.1, grad_bytes=1e8, intra_bandwidth_Bps=1e10, intra_latency_s=1e-5,
                         inter_bandwidth_Bps=1e9, inter_latency_s=1e-4)
    assert step.network_time(4, 4) == pytest.approx(2 * 3 / 4 * 1e8 / 1e10 + 2 * 3 * 1e-5)
    assert step.network_time(8, 4) == pytest.approx(2 * 7 / 8 * 1e8 / 1e9 + 2 * 7 * 1e-4)
    assert step.step_time(4, 4) == pytest.approx(0.1 + step.network_time(4, 4))  # gamma = 1: no overlap


def test_strong_scaling_shrinks_steps_per_device_not_steps():
    m = model(StepTimeModel(t_compute_s=0.08), scaling="strong")
    assert m.steps_per_epoch(1) == m.steps_per_epoch(8) == math.ceil(100_000 / 1024)
    assert m.epoch_time(8) == pytest.approx(m.epoch_time(1) / 8)


def test_sharing_slowdown_interpolates_and_extrapolates_proportionally():
    m = model(StepTimeModel(t_compute_s=0.1))
    assert m.epoch_time(0.5) == pytest.approx(1.6 * m.epoch_time(1))
    assert m.sharing_slowdown(3) == pytest.approx(2.3)
    assert m.sharing_slowdown(8) == pytest.approx(6.0)
