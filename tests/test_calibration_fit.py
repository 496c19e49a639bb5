"""Fitting the step-time model: recovery from synthetic timings, pinning, baselines, bootstrap.

Synthetic timings come from the model itself: k ranks each draw a step time
T_det(k) * (1 + cv * N(0, 1)) and a synchronous step waits for the slowest, so the
straggler term and the cv measured at k = 1 are those of the model.
"""

import dataclasses

import numpy as np
import pytest

from nasalloc.calibration.analysis import analyse
from nasalloc.calibration.fit import (
    FitSettings,
    StepData,
    bootstrap_step_fits,
    compare_models,
    fit_baseline,
    fit_startup,
    fit_startup_across_nodes,
    fit_step_time,
    plan_parameters,
    predict_amdahl,
    predict_step_time,
    robust_cv,
)
from nasalloc.calibration.measurements import Measurements
from nasalloc.sim.speedup import StepTimeModel

TRUE = StepTimeModel(t_compute_s=0.05, gamma=1.0, grad_bytes=1e8, intra_bandwidth_Bps=5e9, intra_latency_s=1e-4,
                     inter_bandwidth_Bps=1e9, inter_latency_s=5e-4, straggler_cv=0.02)


def synthetic(model, ks, gpn, n=400, seed=1, batch_fraction=None):
    rng = np.random.default_rng(seed)
    out = {}
    for k in ks:
        bf = 1.0 if batch_fraction is None else batch_fraction[k]
        base = predict_step_time(dataclasses.replace(model, straggler_cv=0.0), [k], gpn, bf)[0]
        out[k] = base * (1 + model.straggler_cv * rng.standard_normal((n, k)).max(axis=1))
    return out


def test_vectorised_predict_equals_the_simulators_scalar_model():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = StepTimeModel(t_compute_s=rng.uniform(1e-3, 1), gamma=rng.uniform(1, 10), grad_bytes=rng.uniform(0, 1e9),
                          intra_bandwidth_Bps=10 ** rng.uniform(8, 12), intra_latency_s=rng.uniform(0, 1e-3),
                          inter_bandwidth_Bps=10 ** rng.uniform(8, 11), inter_latency_s=rng.uniform(0, 1e-2),
                          straggler_cv=rng.uniform(0, 0.2))
        ks = np.array([1, 2, 3, 4, 8, 16, 64])
        bf = rng.uniform(0.1, 1, size=len(ks))
        vec = predict_step_time(m, ks, 4, bf)
        scalar = [m.step_time(int(k), 4, b) for k, b in zip(ks, bf)]
        np.testing.assert_allclose(vec, scalar, rtol=1e-12)


def test_recovers_known_parameters_from_noisy_timings_within_tolerances():
    # intra k = 2, 4, 8 fix B_intra and alpha_intra; k = 16, 32 the inter-node pair; g given.
    samples = synthetic(TRUE, [1, 2, 4, 8, 16, 32], gpn=8)
    cv = robust_cv(samples[1])
    assert cv == pytest.approx(TRUE.straggler_cv, rel=0.15)
    fit = fit_step_time(StepData.from_samples(samples, {}),
                        FitSettings(gpus_per_node=8, grad_bytes=1e8, backend="cuda", given={"gamma": 1.0}), straggler_cv=cv)
    assert fit.success
    assert set(fit.fitted) == {"t_compute_s", "intra_bandwidth_Bps", "intra_latency_s", "inter_bandwidth_Bps", "inter_latency_s"}
    got = fit.model
    assert got.t_compute_s == pytest.approx(TRUE.t_compute_s, rel=0.01)
    assert got.intra_bandwidth_Bps == pytest.approx(TRUE.intra_bandwidth_Bps, rel=0.05)
    assert got.intra_latency_s == pytest.approx(TRUE.intra_latency_s, rel=0.25)
    assert got.inter_bandwidth_Bps == pytest.approx(TRUE.inter_bandwidth_Bps, rel=0.05)
    assert got.inter_latency_s == pytest.approx(TRUE.inter_latency_s, rel=0.25)
    assert fit.assumed["gamma"].source == "user"


def test_recovers_the_overlap_exponent_when_four_intra_node_k_are_measured():
    true = dataclasses.replace(TRUE, gamma=3.0, intra_bandwidth_Bps=3e9)
    samples = synthetic(true, [1, 2, 4, 8, 16], gpn=16)
    fit = fit_step_time(StepData.from_samples(samples, {}), FitSettings(gpus_per_node=16, grad_bytes=1e8, backend="cuda"),
                        straggler_cv=robust_cv(samples[1]))
    assert fit.success and "gamma" in fit.fitted
    assert fit.model.gamma == pytest.approx(3.0, rel=0.2)
    assert fit.model.intra_bandwidth_Bps == pytest.approx(3e9, rel=0.1)
    ks = np.array([1, 2, 4, 8, 16])
    np.testing.assert_allclose(fit.predict(ks, 16), predict_step_time(true, ks, 16), rtol=0.01)


def test_strong_scaling_batch_fraction_is_part_of_the_fit():
    bf = {1: 1.0, 2: 0.5, 4: 0.25}
    true = dataclasses.replace(TRUE, straggler_cv=0.0)
    samples = synthetic(true, [1, 2, 4], gpn=4, batch_fraction=bf)
    fit = fit_step_time(StepData.from_samples(samples, bf), FitSettings(gpus_per_node=4, grad_bytes=1e8, backend="cuda",
                                                                         given={"gamma": 1.0}))
    assert fit.model.t_compute_s == pytest.approx(0.05, rel=1e-6)
    assert fit.model.intra_bandwidth_Bps == pytest.approx(5e9, rel=1e-4)


def test_two_k_pin_everything_but_bandwidth_and_say_so():
    free, pinned = plan_parameters([1, 2], FitSettings(gpus_per_node=2, backend="cpu"))
    assert free == ["t_compute_s", "intra_bandwidth_Bps"]
    assert set(pinned) == {"intra_latency_s", "gamma", "inter_bandwidth_Bps", "inter_latency_s"}
    assert all(a.source == "default" and a.reason for a in pinned.values())
    assert "no k > gpus_per_node=2" in pinned["inter_bandwidth_Bps"].reason
    # a user value (nccl-tests) is used, reported as the user's, and frees nothing it should not
    free, pinned = plan_parameters([1, 2], FitSettings(gpus_per_node=2, backend="cuda", given={"intra_bandwidth_Bps": 9e10}))
    assert free == ["t_compute_s", "intra_latency_s"]
    assert pinned["intra_bandwidth_Bps"].source == "user" and pinned["intra_bandwidth_Bps"].value == 9e10
    free, pinned = plan_parameters([1], FitSettings(gpus_per_node=8))
    assert free == ["t_compute_s"] and "no k in 2..8 measured" in pinned["intra_bandwidth_Bps"].reason
    with pytest.raises(ValueError, match="k = 1"):
        plan_parameters([2, 4], FitSettings(gpus_per_node=4))


def test_pinned_values_reach_the_model_and_unknown_model_size_is_assumed():
    samples = synthetic(TRUE, [1, 2], gpn=8)
    fit = fit_step_time(StepData.from_samples(samples, {}),
                        FitSettings(gpus_per_node=8, backend="cuda", given={"inter_bandwidth_Bps": 2.2e10, "straggler_cv": 0.0}))
    assert fit.model.inter_bandwidth_Bps == 2.2e10 and fit.model.straggler_cv == 0.0
    assert fit.assumed["grad_bytes"].source == "default" and "straggler_cv" in fit.assumed
    np.testing.assert_allclose(fit.predict([1, 2], 8), [np.mean(samples[1]), np.mean(samples[2])], rtol=1e-6)


def test_a_default_inter_node_term_is_never_cheaper_than_the_fitted_intra_node_one():
    slow = dataclasses.replace(TRUE, intra_bandwidth_Bps=1e7, intra_latency_s=1e-3)
    fit = fit_step_time(StepData.from_samples(synthetic(slow, [1, 2], gpn=2), {}), FitSettings(gpus_per_node=2, grad_bytes=1e8))
    assert fit.model.inter_bandwidth_Bps <= fit.model.intra_bandwidth_Bps
    assert fit.model.inter_latency_s >= fit.model.intra_latency_s
    assert "fitted intra_bandwidth_Bps" in fit.assumed["inter_bandwidth_Bps"].reason


def test_bootstrap_band_covers_the_truth_and_has_width():
    samples = synthetic(dataclasses.replace(TRUE, straggler_cv=0.05), [1, 2, 4], gpn=4, n=100)
    s = FitSettings(gpus_per_node=4, grad_bytes=1e8, backend="cuda", given={"gamma": 1.0})
    point = fit_step_time(StepData.from_samples(samples, {}), s, straggler_cv=robust_cv(samples[1]))
    boot = bootstrap_step_fits(samples, {}, s, point, 40, np.random.default_rng(0))
    assert len(boot) >= 38
    bw = np.array([m.intra_bandwidth_Bps for m in boot])
    lo, hi = np.percentile(bw, [2.5, 97.5])
    assert lo < hi and lo <= 5e9 * 1.05 and hi >= 5e9 * 0.95


def test_held_out_k_picks_the_model_that_generated_the_data():
    ks = np.array([1, 2, 4, 8, 16], dtype=float)
    amdahl = StepData(ks, predict_amdahl(0.1, 0.9, ks), np.ones_like(ks))
    _, best, basis = compare_models(amdahl, FitSettings(gpus_per_node=16, grad_bytes=1e8), 0.0)
    assert best == "amdahl" and "leave-one-k-out" in basis
    samples = synthetic(dataclasses.replace(TRUE, straggler_cv=0.0), [1, 2, 4, 8, 16], gpn=16, n=5)
    scores, best, _ = compare_models(StepData.from_samples(samples, {}), FitSettings(gpus_per_node=16, grad_bytes=1e8), 0.0)
    assert best == "pollux"
    assert all(s.heldout_rel_error is not None for s in scores)
    _, _, basis = compare_models(StepData(ks[:2], predict_amdahl(0.1, 0.9, ks[:2]), np.ones(2)), FitSettings(gpus_per_node=2), 0.0)
    assert "at least three k" in basis


def test_baselines_recover_their_own_parameters_and_fitted_speedup_never_exceeds_k():
    ks = np.array([1, 2, 4, 8], dtype=float)
    fit = fit_baseline("amdahl", StepData(ks, predict_amdahl(0.2, 0.8, ks), np.ones_like(ks)))
    assert fit.t1_s == pytest.approx(0.2, rel=1e-6) and fit.shape == pytest.approx(0.8, rel=1e-6)
    m = Measurements(step_samples=synthetic(TRUE, [1, 2, 4, 8], gpn=8, n=50))
    a = analyse(m, FitSettings(gpus_per_node=8, grad_bytes=1e8, backend="cuda", given={"gamma": 1.0}), bootstrap=10,
                rng=np.random.default_rng(0))
    grid = np.arange(1, 65, dtype=float)
    s = a.speedup(a.step.model, grid, np.ones_like(grid))
    assert np.all(s <= grid * (1 + 1e-9))
    lo, hi = a.speedup_band(grid, np.ones_like(grid))
    assert lo[0] == hi[0] == 1.0  # k = 1 is the reference of every refit
    # 50 samples per k at 2% noise: each k's mean is known to about 2%/sqrt(50) = 0.3%, so the
    # refits' speed-ups differ (the band has width) but by well under 2% at the measured k
    measured = np.array([2, 4, 8]) - 1
    assert np.all(hi[measured] > lo[measured]) and np.all(hi[measured] / lo[measured] < 1.02)


def test_startup_intercept_and_slope_per_doubling():
    line = fit_startup({1: [1.0, 1.02], 2: [1.5, 1.48], 4: [2.0, 2.0]})
    assert (line.base, line.per_doubling, line.slope_assumed) == (pytest.approx(1.0, abs=0.02), pytest.approx(0.5, abs=0.02), False)
    assert line.held == {} and line.at(4, 8) == pytest.approx(line.base + 2 * line.per_doubling)
    one = fit_startup({1: [0.3, 0.5]})
    assert (one.base, one.per_doubling, one.slope_assumed, one.held) == (pytest.approx(0.4), 0.0, True, {})


@pytest.mark.parametrize("samples, expected, held", [
    # one k: a pause less its parts that came out at -2.3 ms is 0, and the -2.3 ms is kept
    ({1: [-0.0010, -0.0036]}, (0.0, 0.0), {"base": -0.0023}),
    # a cost that falls with k: the slope is held at 0, the level is the mean of all (0.6 ms);
    # unbounded, y = 1.0 - 0.4 log2 k (least squares through 1.0, 0.6, 0.2 ms)
    ({1: [0.0010], 2: [0.0006], 4: [0.0002]}, (0.0006, 0.0), {"per_doubling": -0.0004}),
    # a line through (0, -1 ms), (1, 1 ms), (2, 3 ms): held at 0 for the level, and the slope
    # bounded least squares gives through the origin: (1 + 2 x 3) / (1 + 4) = 1.4 ms
    ({1: [-0.001], 2: [0.001], 4: [0.003]}, (0.0, 0.0014), {"base": -0.001}),
])
def test_a_fitted_cost_below_zero_is_held_at_zero_and_what_it_was_is_kept(samples, expected, held):
    line = fit_startup(samples)
    assert (line.base, line.per_doubling) == pytest.approx(expected, abs=1e-12)
    assert line.held == pytest.approx(held)


def test_start_up_across_nodes_is_a_step_above_the_line_fitted_inside_one_node():
    """Nodes of 2: k = 1, 2 inside one node lie on 7 ms + 2 ms per doubling; k = 4 over two
    nodes took 83 ms, 83 - (7 + 2 x 2) = 72 ms above that line. With nodes of 4 every k is
    inside one node: one log2 k line over all, no step."""
    samples = {1: [0.006, 0.008], 2: [0.009, 0.009], 4: [0.080, 0.086]}
    line = fit_startup_across_nodes(samples, 2)
    assert (line.base, line.per_doubling, line.slope_assumed) == (pytest.approx(0.007), pytest.approx(0.002), False)
    assert line.across_nodes == pytest.approx(0.072) and line.at(4, 2) == pytest.approx(0.083)
    assert fit_startup_across_nodes(samples, 4) == fit_startup(samples)
    # only k = 1 inside a node: no slope can be told from the step (assumed 0)
    only = fit_startup_across_nodes({1: [0.01], 4: [0.05]}, 1)
    assert (only.base, only.per_doubling, only.slope_assumed, only.across_nodes) == (
        pytest.approx(0.01), 0.0, True, pytest.approx(0.04))
    # jobs across nodes faster than the line inside one (noise): no step, and it is said
    faster = fit_startup_across_nodes({1: [0.010], 2: [0.012], 4: [0.011]}, 2)
    assert faster.across_nodes == 0.0 and faster.held == {"across_nodes": pytest.approx(0.011 - 0.014)}


