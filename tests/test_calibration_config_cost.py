"""The `config_cost` fit: per-configuration k = 1 step times -> slopes, centers and norm."""

import math

import numpy as np
import pytest

from nasalloc.calibration.calibrate import builtin_space
from nasalloc.calibration.config_cost import FLOOR_POWER, LOG_LINEAR, describe, fit_config_cost
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
    # the categorical is left out, and so is lr: its true slope is 0 (forward selection)
    assert set(params) == {"width", "momentum"}
    assert fit.report()["parameter_selection"][0].startswith("constant ") and len(fit.report()["parameter_selection"]) == 3
    for name in params:
        assert params[name]["slope"] == pytest.approx(TRUE[name], abs=0.15), name
    assert params["width"] == {**params["width"], "type": "int", "low": 4, "high": 32, "log": True}
    assert fit.rms_log_residual < 0.05 < fit.rms_log_spread
    # log-linear data: the floor model is tried but does not predict held-out points better
    assert fit.model == LOG_LINEAR and "floor" not in fit.block
    assert fit.loo[FLOOR_POWER] >= fit.loo[LOG_LINEAR] * 0.99 and fit.candidate_floor < 0.1
    # the stored block parses, and its mean factor over the sample is 1 (t_compute_s is the sample mean)
    profile = parse_profile({"name": "t", "workload": {"samples_per_epoch": 10, "batch_per_device": 1},
                             "step_time": {"t_compute_s": 0.004}, "config_cost": fit.block})
    factors = [profile.config_factor(c["config"]) for c in timed]
    assert np.mean(factors) == pytest.approx(1.0, abs=1e-5)
    assert factors == pytest.approx(fit.factors, rel=1e-9)
    # measured at k = 1 (all compute): at k > 1 it scales the compute, not the all-reduce
    assert fit.block["applies_to"] == "compute" and profile.config_cost.compute_only
    # the factors follow the step times
    steps = np.array([c["mean_step_s"] for c in timed])
    assert np.corrcoef(np.log(factors), np.log(steps))[0, 1] > 0.95
    line = describe(fit.block, fit.report())
    assert line.startswith("config cost: ") and "width +1." in line and "\n" not in line


def test_eight_configurations_of_the_digits_space_stay_stable():
    space = builtin_space("nasalloc.execute.trainers.digits:train")
    rng = np.random.default_rng(0)
    sp = SearchSpace.from_config(space)
    doms = {d.name: d for d in sp.domains}
    configs = sample_configs(space, 8, seed=0, base={})
    timed = [{"config": c, "mean_step_s": 0.002 * math.exp(1.5 * doms["width"].to_unit(c["width"]) + 0.1 * rng.standard_normal())}
             for c in configs]
    fit = fit_config_cost(timed, space)
    params = fit.block["params"]
    assert fit.model == LOG_LINEAR
    assert set(params) == {"width"}  # lr and momentum do not move the step time: left out, not fitted to noise
    assert params["width"]["slope"] == pytest.approx(1.5, abs=0.35)


def test_no_block_when_no_parameter_predicts_held_out_step_times():
    rng = np.random.default_rng(5)
    configs = sample_configs(SPACE, 8, seed=0, base={})
    timed = [{"config": c, "mean_step_s": 0.003 * math.exp(0.1 * rng.standard_normal())} for c in configs]
    fit = fit_config_cost(timed, SPACE)
    assert fit.block is None and "no parameter predicts" in fit.reason and "constant" in fit.reason
    assert describe(None, fit.report()).startswith("config cost: not fitted (no parameter predicts")


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


def _profile(block):
    return parse_profile({"name": "t", "workload": {"samples_per_epoch": 10, "batch_per_device": 1},
                          "step_time": {"t_compute_s": 0.004}, "config_cost": block})


def _floor_ms(width):
    """A floor-shaped step time: fixed per-step overhead plus a part that grows with the width."""
    return 1.5 + 0.25 * (width / 4) ** 1.6


@pytest.mark.parametrize("n", [8, 16])
def test_floor_model_is_chosen_for_floor_shaped_step_times_and_fixes_the_small_widths(n):
    space = builtin_space("nasalloc.execute.trainers.digits:train")
    rng = np.random.default_rng(0)
    timed = [{"config": c, "mean_step_s": _floor_ms(c["width"]) / 1000 * math.exp(0.03 * rng.standard_normal())}
             for c in sample_configs(space, n, seed=0, base={})]
    fit = fit_config_cost(timed, space)
    linear = fit_config_cost(timed, space, try_floor=False)
    assert fit.model == FLOOR_POWER and 0.3 < fit.block["floor"] == fit.floor < 0.8
    assert fit.loo[FLOOR_POWER] < 0.8 * fit.loo[LOG_LINEAR]
    assert linear.model == LOG_LINEAR and "floor" not in linear.block and linear.loo[FLOOR_POWER] == "not tried: switched off"
    # predicted step time of small widths (lr, momentum mid-range) = the sample's mean x factor
    mean_ms = np.mean([t["mean_step_s"] for t in timed]) * 1000
    mid = {"lr": 0.02, "momentum": 0.475}

    def worst(block):
        profile = _profile(block)
        return max(abs(profile.config_factor({**mid, "width": w}) * mean_ms / _floor_ms(w) - 1) for w in (4, 5, 6, 8))

    assert worst(fit.block) < 0.10 < worst(linear.block)
    assert worst(fit.block) < 0.5 * worst(linear.block)
    # the stored block (with its floor) has mean factor 1 over the sample, as the fit says
    factors = [_profile(fit.block).config_factor(t["config"]) for t in timed]
    assert np.mean(factors) == pytest.approx(1.0, abs=1e-5)
    assert factors == pytest.approx(fit.factors, rel=1e-9)
    report = fit.report()
    assert report["chosen"] == FLOOR_POWER and report["floor"] == fit.floor
    assert set(report["loo_rms_log_error"]) == {LOG_LINEAR, FLOOR_POWER}
    line = describe(fit.block, report)
    assert f"(floor {fit.floor:.2f} + " in line and "floor + power chosen by leave-one-out" in line and "\n" not in line


# Two real calibrations of the digits CNN: (width, ms/step) of 8 sampled configurations each;
# lr and momentum varied too but hardly move the step time, so they are held fixed here.
# +-15% noise per run.
REAL_SAMPLES = {
    "a": [(6, 1.78), (10, 3.12), (5, 2.44), (32, 8.04), (13, 3.72), (18, 5.12), (22, 5.33), (4, 2.40)],
    "b": [(6, 2.24), (10, 2.81), (5, 2.52), (32, 7.46), (13, 4.47), (18, 4.75), (22, 5.73), (4, 1.55)],
}


@pytest.mark.parametrize("name", sorted(REAL_SAMPLES))
def test_real_calibration_samples_predict_held_out_configurations(name):
    """Whatever model the fit chooses, it must predict a configuration it has not seen: each
    one is left out in turn, the whole fit (parameter and model choice included) runs on the
    other 7, and the left-out step time is predicted as their mean x its factor (the
    profile's t_compute_s is the sample mean and the factors average 1). A fit that missed
    the width would be off by the spread of the step times (rms log 0.47 and 0.50 here);
    the runs' own noise (+-15%) is about 0.1."""
    space = builtin_space("nasalloc.execute.trainers.digits:train")
    timed = [{"config": {"width": w, "lr": 0.05, "momentum": 0.5}, "mean_step_s": ms / 1000} for w, ms in REAL_SAMPLES[name]]
    spread = float(np.std(np.log([t["mean_step_s"] for t in timed])))
    errors = []
    for i, left_out in enumerate(timed):
        rest = timed[:i] + timed[i + 1:]
        fit = fit_config_cost(rest, space)
        predicted = np.mean([t["mean_step_s"] for t in rest]) * _profile(fit.block).config_factor(left_out["config"])
        errors.append(math.log(predicted / left_out["mean_step_s"]))
    rms = math.sqrt(np.mean(np.square(errors)))
    assert spread > 0.45 and rms < 0.25 and rms < 0.5 * spread
    fit = fit_config_cost(timed, space)
    assert np.mean([_profile(fit.block).config_factor(t["config"]) for t in timed]) == pytest.approx(1.0, abs=1e-5)


def test_floor_model_needs_five_configurations():
    timed = _timed(sample_configs(SPACE, 4, seed=0, base={}), 0.0, np.random.default_rng(0))
    fit = fit_config_cost(timed, SPACE)
    assert fit.model == LOG_LINEAR and "floor" not in fit.block
    assert fit.loo[FLOOR_POWER] == "not tried: 4 configurations (needs >= 5)"
    assert fit.report()["loo_rms_log_error"][FLOOR_POWER] == "not tried: 4 configurations (needs >= 5)"
    assert "floor + power not tried: 4 configurations (needs >= 5)" in describe(fit.block, fit.report())


def test_with_steps_per_epoch_the_factor_follows_each_configurations_epoch_evaluation_included():
    """Equal steps, an evaluation that grows with the width: the epoch (100 steps of 1 ms and
    the evaluation) is what the factor multiplies. Fitted to the epochs, the factor of each
    configuration is its epoch over the sample's mean epoch; fitted to the steps alone there
    is nothing to fit."""
    sp = {"width": {"type": "int", "low": 4, "high": 32, "log": True}}
    dom = SearchSpace.from_config(sp).domains[0]
    timed = [{"config": {"width": w}, "mean_step_s": 0.001, "eval_s": 0.01 * math.exp(2.0 * dom.to_unit(w))}
             for w in (4, 5, 6, 8, 10, 13, 16, 20, 25, 32)]
    epochs = np.array([100 * 0.001 + t["eval_s"] for t in timed])
    fit = fit_config_cost(timed, sp, steps_per_epoch=100)
    assert fit.fitted_to == "epoch" and "log(k=1 epoch time)" in fit.report()["method"]
    assert fit.factors == pytest.approx(list(epochs / epochs.mean()), rel=0.03)
    assert fit_config_cost(timed, sp).block is None  # the steps alone: every configuration the same
    no_eval = [{k: v for k, v in t.items() if k != "eval_s"} for t in timed]
    assert fit_config_cost(no_eval, sp, steps_per_epoch=100).fitted_to == "step"
