"""A calibrated profile is always one the simulator accepts: every fitted term is a
measurement with noise, and one near its physical bound (a duration near 0, a sharing
slow-down near 1) comes out beyond it now and then. The profile then holds the bound and
says so (`fit.held_at_bound`, and a line of the calibrate summary) instead of refusing its
own fit, which a user could do nothing about."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasalloc.calibration.analysis import analyse
from nasalloc.calibration.fit import FitSettings
from nasalloc.calibration.measurements import Measurements
from nasalloc.calibration.report import WorkloadFacts, build_profile, summary_lines
from nasalloc.sim.profile import parse_profile

SPACE = {"width": {"type": "int", "low": 4, "high": 32, "log": True},
         "lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True}}
WORKLOAD = WorkloadFacts("x:y", 1024, 32, "weak", None, False)


def noisy(rng: np.random.Generator, level: float, spread: float, n: int) -> list[float]:
    """n measurements of a cost `level` with noise `spread` (absolute): below 0 when the
    cost is near 0, as a difference of two timings is."""
    return [float(x) for x in level + spread * rng.standard_normal(n)]


@st.composite
def measurement_sets(draw: st.DrawFn) -> tuple[Measurements, int, int]:
    """Random calibrations: which k and nodes, which costs were measured, how noisy."""
    gpn = draw(st.sampled_from([1, 2, 4]))
    ks = [1, *sorted(draw(st.sets(st.sampled_from([2, 4, 8]), max_size=3)))]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    spread = draw(st.sampled_from([0.0, 1e-4, 3e-3, 0.05]))  # seconds of noise on each overhead sample
    level = draw(st.sampled_from([0.0, 1e-3, 0.02]))  # the true overheads: at the bound, near it, well away

    def per_k(present: bool) -> dict[int, list[float]]:
        if not present:
            return {}
        return {k: noisy(rng, level * (1 + np.log2(k)), spread, draw(st.integers(1, 3))) for k in ks}

    step = 0.004 * (1 + 0.02 * rng.standard_normal())
    samples = {k: step / k ** 0.7 * (1 + 0.05 * rng.standard_normal(30)) for k in ks}
    m = Measurements(
        step_samples={k: np.abs(v) for k, v in samples.items()},
        startup_s=per_k(draw(st.booleans())),
        resume_s=per_k(draw(st.booleans())),
        pause_s=per_k(draw(st.booleans())),
        eval_s=noisy(rng, level, spread, draw(st.integers(0, 3))),
        checkpoint_save_s=noisy(rng, level, spread, draw(st.integers(0, 3))),
        checkpoint_restore_s=noisy(rng, level, spread, draw(st.integers(0, 3))),
        decision_latency_s=noisy(rng, level, spread, draw(st.integers(0, 3))),
        steps_per_epoch={k: 32 for k in ks},
    )
    if draw(st.booleans()):  # sharing a device: a ratio of 1 plus noise either way
        m.share_samples = {2: step * (1 + draw(st.sampled_from([0.0, 0.05, 1.0]))) * (1 + 0.1 * rng.standard_normal(8))}
    if draw(st.booleans()):  # configurations sampled from the space, for the config_cost block
        widths = rng.uniform(4, 32, 6)
        m.configs = [{"config": {"width": int(w), "lr": float(rng.uniform(1e-3, 0.5))},
                      "mean_step_s": float(step * (w / 8) ** 0.5 * (1 + 0.1 * rng.standard_normal())),
                      "steps": 20, "eval_s": abs(float(0.01 * (w / 8) + spread * rng.standard_normal()))}
                     for w in widths]
    return m, gpn, draw(st.sampled_from([0, 3]))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(measurement_sets())
def test_every_calibration_gives_a_profile_the_simulator_accepts(case: tuple[Measurements, int, int]) -> None:
    m, gpn, bootstrap = case
    a = analyse(m, FitSettings(gpus_per_node=gpn), bootstrap=bootstrap, rng=np.random.default_rng(0))
    profile = build_profile("p", "d", m, a, WORKLOAD, [], space=SPACE)
    parsed = parse_profile(profile, "calibrated profile")  # raises UserError on any refused value
    held = (profile["fit"].get("held_at_bound") or {}).get("fitted", {})
    for key, fitted in held.items():
        block, name = key.split(".")
        bound = 1.0 if block == "sharing" else 0.0
        assert fitted < bound and profile[block][int(name) if block == "sharing" else name] == bound, key
    for name, value in profile["overheads"].items():
        if name != "eval_scales":
            assert value >= 0.0
    assert all(f >= 1.0 for f in parsed.epoch.sharing.values())
    assert any(line.startswith("held at the bound") for line in summary_lines(profile)) == bool(held)


def test_a_pause_shorter_than_its_parts_ends_as_release_0_and_the_summary_says_so() -> None:
    """The run that made `calibrate` exit 2: pauses at k = 1 of 2.6 and 2.8 ms, with an epoch
    boundary of 2 ms and a checkpoint write of 3 ms, leave -2.3 ms for the end of the job.
    The profile writes 0 and keeps the -2.3 ms."""
    rng = np.random.default_rng(1)
    m = Measurements(step_samples={1: 0.004 * (1 + 0.01 * rng.standard_normal(40)),
                                   2: 0.0025 * (1 + 0.01 * rng.standard_normal(40))},
                     startup_s={1: [0.05, 0.052], 2: [0.06, 0.061]}, pause_s={1: [0.0026, 0.0028]},
                     decision_latency_s=[0.002], checkpoint_save_s=[0.003], eval_s=[0.01])
    a = analyse(m, FitSettings(gpus_per_node=2), bootstrap=0, rng=rng)
    profile = build_profile("p", "d", m, a, WORKLOAD, [])
    parse_profile(profile, "calibrated profile")
    assert profile["overheads"]["release_s"] == 0.0
    assert profile["fit"]["held_at_bound"]["fitted"] == {"overheads.release_s": pytest.approx(0.0027 - 0.005)}
    line = next(line for line in summary_lines(profile) if line.startswith("held at the bound"))
    assert "overheads.release_s fitted -0.0023, written 0" in line
