"""The `config_cost` fit: per-configuration k = 1 step times -> slopes, centers and norm."""

import math

import numpy as np
import pytest

from nasalloc.calibration.calibrate import builtin_space
from nasalloc.calibration.config_cost import describe, fit_config_cost
from nasalloc.calibration.profiling import sample_configs
from nasalloc.sim.profile import parse_profile
from nasalloc.sim.space import SearchSpace

SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 0.5, "log": True},
    "width": {"type": "int", "low": 4, "high": 32, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.95},
    "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
}
TRUE = {"lr": 0.0, "width": 1.6, "momentum": -0.4}


def _timed(configs, noise, rng):
    sp = SearchSpace.from_config(SPACE)
    doms = {d.name: d for d in sp.domains}
    return [{"config": c, "mean_step_s": 0.004 * math.exp(sum(s * doms[n].to_unit(c[n]) for n, s in TRUE.items())
                                                          + noise * rng.standard_normal())} for c in configs]


def test_fit_recovers_known_slopes_from_noisy_step_times():
    rng = np.random.default_rng(3)
    timed = _timed(sample_configs(SPACE, 24, seed=0, base={}), 0.03, rng)
    fit = fit_config_cost(timed, SPACE)
    params = fit.block["params"]
    assert set(params) == {"lr", "width", "momentum"}  # the categorical is left out
    for name, slope in TRUE.items():
        assert params[name]["slope"] == pytest.approx(slope, abs=0.15), name
    assert params["width"] == {**params["width"], "type": "int", "low": 4, "high": 32, "log": True}
    assert fit.rms_log_residual < 0.05 < fit.rms_log_spread
    # the stored block parses, and its mean factor over the sample is 1 (t_compute_s is the sample mean)
    profile = parse_profile({"name": "t", "workload": {"samples_per_epoch": 10, "batch_per_device": 1},
                             "step_time": {"t_compute_s": 0.004}, "config_cost": fit.block})
    factors = [profile.config_factor(c["config"]) for c in timed]
    assert np.mean(factors) == pytest.approx(1.0, abs=1e-5)
    assert factors == pytest.approx(fit.factors, rel=1e-9)
    # the factors follow the step times
    steps = np.array([c["mean_step_s"] for c in timed])
    assert np.corrcoef(np.log(factors), np.log(steps))[0, 1] > 0.95
    line = describe(fit.block, fit.report())
    assert line.startswith("config cost: ") and "width +1." in line and "\n" not in line


def test_eight_configurations_of_the_digits_space_stay_stable():
    space = builtin_space("nasalloc.execute.workloads.digits:train")
    rng = np.random.default_rng(0)
    sp = SearchSpace.from_config(space)
    doms = {d.name: d for d in sp.domains}
    configs = sample_configs(space, 8, seed=0, base={})
    timed = [{"config": c, "mean_step_s": 0.002 * math.exp(1.5 * doms["width"].to_unit(c["width"]) + 0.1 * rng.standard_normal())}
             for c in configs]
    params = fit_config_cost(timed, space).block["params"]
    assert params["width"]["slope"] == pytest.approx(1.5, abs=0.35)
    assert abs(params["lr"]["slope"]) < 0.4 and abs(params["momentum"]["slope"]) < 0.4


def test_fit_is_skipped_with_too_few_configurations_or_no_numeric_parameters():
    timed = _timed(sample_configs(SPACE, 2, seed=0, base={}), 0.0, np.random.default_rng(0))
    fit = fit_config_cost(timed, SPACE)
    assert fit.block is None and "2 configurations timed (needs >= 3)" in fit.reason
    assert fit_config_cost([], SPACE).block is None
    only_cat = {"opt": SPACE["opt"]}
    timed = [{"config": {"opt": o}, "mean_step_s": 0.01} for o in ("sgd", "adam", "sgd")]
    fit = fit_config_cost(timed, only_cat)
    assert fit.block is None and fit.reason == "no numeric parameters in the search space"
    assert describe(None, fit.report()) == ("config cost: not fitted (no numeric parameters in the search space); "
                                            "every trial gets the same epoch time")
    assert describe(None, None) is None
