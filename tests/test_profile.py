"""profile.yaml parsing: what the simulator accepts, and one-line errors for what it does not."""

import math

import pytest
import yaml

from nasalloc.sim.errors import UserError
from nasalloc.sim.profile import dump_profile, load_profile, parse_profile

MINIMAL = {
    "name": "tiny",
    "hardware": {"gpus_per_node": 2},
    "workload": {"samples_per_epoch": 1000, "batch_per_device": 10},
    "step_time": {"t_compute_s": 0.01, "grad_bytes": 1e6, "intra_bandwidth_Bps": 1e9},
    "overheads": {"startup_s": 2.0, "startup_per_doubling_s": 0.5, "eval_s": 1.0},
    "sharing": {2: 1.5},
    "uncertainty": {"step_time_samples": [{"t_compute_s": 0.012}, {"t_compute_s": 0.008}]},
}


def test_minimal_profile_gives_epoch_and_startup_times():
    p = parse_profile(MINIMAL)
    assert p.epoch_time(1) == pytest.approx(100 * 0.01 + 1.0)
    t_step_2 = 0.01 + 2 * 1 / 2 * 1e6 / 1e9
    assert p.epoch_time(2) == pytest.approx(50 * t_step_2 + 0.5)
    assert p.epoch_time(0.5) == pytest.approx(1.5 * p.epoch_time(1))
    assert p.startup_time(1) == 2.0 and p.startup_time(4) == pytest.approx(3.0)
    assert p.with_step_sample(0).epoch_time(1) == pytest.approx(100 * 0.012 + 1.0)
    assert p.with_step_sample(3).epoch_time(1) == pytest.approx(100 * 0.008 + 1.0)


def test_scheduler_time_per_scheduler_and_zero_for_the_others(tmp_path):
    path = tmp_path / "profile.yaml"
    dump_profile({**MINIMAL, "scheduler_time": {"bohb": {"ask_s": 0.002, "result_s": 0.0005}}}, path)
    p = load_profile(path)
    assert p.scheduler_time("bohb") == (0.002, 0.0005)
    assert p.scheduler_time("asha") == (0.0, 0.0)


def test_dump_and_load_round_trip(tmp_path):
    path = tmp_path / "profile.yaml"
    dump_profile(MINIMAL, path)
    assert load_profile(path).epoch_time(2) == parse_profile(MINIMAL).epoch_time(2)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"step_time": {"t_compute_s": -1}}, r"step_time.t_compute_s=-1: must be > 0"),
        ({"step_time": {"t_compute_s": 0.1, "gamma": 20}}, r"gamma=20.0: must lie in \[1, 10\]"),
        ({"step_time": {"t_compute_s": 0.1, "bogus": 1}}, r"step_time.bogus: unknown"),
        ({"workload": {"samples_per_epoch": "many", "batch_per_device": 1}}, r"samples_per_epoch='many': must be a number"),
        ({"workload": {"samples_per_epoch": 10, "batch_per_device": 1, "scaling": "strong"}}, r"global_batch: required"),
        ({"sharing": {"two": 1.5}}, r"sharing.two: the key must be a whole number"),
        ({"overheads": {"startup": 1}}, r"overheads.startup: unknown"),
        ({"hardware": {"gpus_per_node": 0}}, r"gpus_per_node=0: must be an integer >= 1"),
        ({"colour": "red"}, r"unknown key 'colour'"),
        # every block's shape and every key is checked (these crashed or were read as defaults)
        ({"hardware": "abc"}, r"^profile: hardware='abc': expected a mapping$"),
        ({"uncertainty": [1]}, r"^profile: uncertainty=\[1\]: expected a mapping with step_time_samples$"),
        ({"uncertainty": {"step_time_samples": [1]}}, r"uncertainty.step_time_samples\[0\]=1: expected a mapping"),
        ({"uncertainty": {"samples": []}}, r"uncertainty.samples: unknown; allowed: step_time_samples"),
        ({"workload": {"samples_per_epoch": 10, "batch_per_device": 1, "scalling": "strong"}},
         r"workload.scalling: unknown; allowed: samples_per_epoch, batch_per_device, scaling, global_batch"),
        ({"workload": {"samples_per_epoch": 12.5, "batch_per_device": 1}}, r"samples_per_epoch=12.5: must be a whole number"),
        ({"workload": {"samples_per_epoch": 10, "batch_per_device": 1, "global_batch": 8}},
         r"global_batch=8: only with scaling: strong"),
        ({"sharing": {2: 0.5}}, r"sharing.2=0.5: must be >= 1 \(each of 2 trials sharing a device runs no faster"),
        ({"sharing": {1: 2.0}}, r"sharing.1=2.0: must be 1"),
        ({"sharing": {2.5: 3.0}}, r"sharing.2.5: the key must be a whole number"),
        ({"sharing": [2]}, r"sharing=\[2\]: expected a mapping"),
        ({"overheads": [1.0]}, r"overheads=\[1.0\]: expected a mapping"),
        ({"sources": "a paper"}, r"sources='a paper': expected a list of strings"),
        ({"assumed": [1]}, r"assumed=\[1\]: expected a list of strings"),
        ({"measured": [1]}, r"measured=\[1\]: expected a mapping"),
        ({"name": ""}, r"name='': must be a non-empty string"),
        ({"scheduler_time": {"bohb": {"ask_s": 0.001}}}, r"scheduler_time.bohb.result_s: missing"),
        ({"scheduler_time": {"bohb": {"ask_s": -1, "result_s": 0}}}, r"scheduler_time.bohb.ask_s=-1: must be >= 0"),
        ({"scheduler_time": {"bohb": {"ask": 1, "result_s": 0}}}, r"scheduler_time.bohb.ask: unknown; allowed: ask_s"),
        ({"scheduler_time": [1]}, r"scheduler_time=\[1\]: expected a mapping"),
    ],
)
def test_bad_profiles_fail_with_one_line(patch, message):
    with pytest.raises(UserError, match=message) as info:
        parse_profile({**MINIMAL, **patch})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("patch, message", [
    ({"hardware": "abc"}, "hardware='abc': expected a mapping"),
    ({"uncertainty": [1]}, "uncertainty=[1]: expected a mapping"),
    ({"workload": {"samples_per_epoch": 1000, "batch_per_device": 10, "scalling": "strong"}}, "workload.scalling: unknown"),
    ({"sharing": {2: 0.5}}, "sharing.2=0.5: must be >= 1"),
])
def test_simulate_with_a_bad_profile_is_one_line_and_exit_2(tmp_path, capsys, patch, message):
    """Through the command: no traceback (these crashed with exit 1, or ran on a wrong reading)."""
    from nasalloc.cli import main

    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **patch}))
    assert main(["simulate", f"profile={path}", f"out_dir={tmp_path / 'never'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nasalloc simulate: {path}: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "never").exists()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="neither a shipped profile"):
        load_profile(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        load_profile(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(UserError, match="not a profile"):
        load_profile(bad)


COST = {"params": {"width": {"type": "int", "low": 4, "high": 32, "log": True, "slope": 1.2, "center": 0.5},
                   "lr": {"type": "float", "low": 0.0, "high": 2.0, "slope": -0.5, "center": 0.25}},
        "norm": 1.25}


def test_config_cost_factor_by_hand():
    p = parse_profile({**MINIMAL, "config_cost": COST})
    # width 8 (int, log): u = (ln 8 - ln 3.5) / (ln 32.5 - ln 3.5); lr 1.0 (float, linear): u = 0.5
    u_w = (math.log(8) - math.log(3.5)) / (math.log(32.5) - math.log(3.5))
    expected = math.exp(1.2 * (u_w - 0.5) - 0.5 * (0.5 - 0.25)) / 1.25
    assert p.config_factor({"width": 8, "lr": 1.0, "opt": "sgd"}) == pytest.approx(expected, rel=1e-12)
    # a missing parameter contributes 0
    assert p.config_factor({"width": 8}) == pytest.approx(math.exp(1.2 * (u_w - 0.5)) / 1.25, rel=1e-12)
    assert p.config_factor({}) == pytest.approx(1 / 1.25)
    # without the block every factor is 1; the block leaves epoch_time(k) itself alone
    assert parse_profile(MINIMAL).config_factor({"width": 32}) == 1.0
    assert p.epoch_time(2) == parse_profile(MINIMAL).epoch_time(2)


def test_config_cost_round_trips(tmp_path):
    path = tmp_path / "profile.yaml"
    dump_profile({**MINIMAL, "config_cost": COST}, path)
    assert load_profile(path).config_factor({"width": 20, "lr": 0.3}) == parse_profile(
        {**MINIMAL, "config_cost": COST}).config_factor({"width": 20, "lr": 0.3})


def test_config_cost_floor_by_hand_and_floor_zero_is_the_log_linear_factor():
    configs = [{"width": w, "lr": lr} for w in (4, 8, 20, 32) for lr in (0.0, 1.0, 2.0)] + [{}, {"width": 8}]
    plain, zero = parse_profile({**MINIMAL, "config_cost": COST}), parse_profile({**MINIMAL, "config_cost": {**COST, "floor": 0}})
    assert [zero.config_factor(c) for c in configs] == [plain.config_factor(c) for c in configs]  # exactly
    floored = parse_profile({**MINIMAL, "config_cost": {**COST, "floor": 0.4}})
    u_w = (math.log(8) - math.log(3.5)) / (math.log(32.5) - math.log(3.5))
    expected = (0.4 + 0.6 * math.exp(1.2 * (u_w - 0.5) - 0.5 * (0.5 - 0.25))) / 1.25
    assert floored.config_factor({"width": 8, "lr": 1.0}) == pytest.approx(expected, rel=1e-12)
    # the floor flattens the cheap end: the smallest width costs more than without it, relative to the center
    assert floored.config_factor({"width": 4}) / floored.config_factor({}) > plain.config_factor({"width": 4}) / plain.config_factor({})


def test_config_cost_applies_to_says_whether_the_all_reduce_is_scaled(tmp_path):
    """`applies_to: compute` scales t_compute_s and eval_s inside the step-time model at k > 1;
    the default (`epoch`, every profile written before it) scales the whole epoch; at k = 1
    both are epoch_time(1) x factor. Round-trips through the YAML."""
    data = {**MINIMAL, "config_cost": {**COST, "applies_to": "compute"}}
    path = tmp_path / "profile.yaml"
    dump_profile(data, path)
    compute, whole = load_profile(path), parse_profile({**MINIMAL, "config_cost": COST})
    assert compute.config_cost.compute_only and not whole.config_cost.compute_only
    epoch, step = whole.epoch, whole.epoch.step
    f = 1.7
    assert whole.trial_epoch_time(2, f) == whole.epoch_time(2) * f
    assert compute.trial_epoch_time(1, f) == whole.epoch_time(1) * f
    # by hand at k = 2 (weak scaling: 1000 / 20 = 50 steps of the full per-rank batch; the
    # evaluation split over the 2 ranks): 50 x (f x 0.01 s + 1e6 B / 1e9 B/s) + f x 1 s / 2
    assert epoch.steps_per_epoch(2) == 50 and epoch.eval_scales and step.straggler_cv == 0
    by_hand = 50 * (f * 0.01 + 1e6 / 1e9) + f * 1.0 / 2
    assert compute.trial_epoch_time(2, f) == pytest.approx(by_hand, rel=1e-12)
    assert compute.trial_epoch_time(2, f) < whole.trial_epoch_time(2, f)  # the all-reduce is not scaled up


def test_config_cost_with_floor_round_trips(tmp_path):
    path = tmp_path / "profile.yaml"
    data = {**MINIMAL, "config_cost": {**COST, "floor": 0.35}}
    dump_profile(data, path)
    loaded = load_profile(path)
    assert loaded.config_cost.floor == 0.35 and loaded.raw["config_cost"]["floor"] == 0.35
    assert loaded.config_factor({"width": 20, "lr": 0.3}) == parse_profile(data).config_factor({"width": 20, "lr": 0.3})
    assert parse_profile(MINIMAL | {"config_cost": COST}).config_cost.floor == 0.0


def _cost(**width):
    return {"params": {"width": {"type": "int", "low": 4, "high": 32, "log": True, "slope": 1.0, **width}}}


@pytest.mark.parametrize(
    "block, message",
    [
        ([1, 2], r"config_cost: expected a mapping"),
        ({"params": {}}, r"config_cost.params: expected a non-empty mapping"),
        ({**_cost(), "scale": 2}, r"config_cost.scale: unknown"),
        ({**_cost(), "norm": 0}, r"config_cost.norm=0: must be > 0"),
        ({**_cost(), "floor": -0.1}, r"config_cost.floor=-0.1: must be >= 0"),
        ({**_cost(), "floor": 1}, r"config_cost.floor=1: must be < 1"),
        ({**_cost(), "floor": "x"}, r"config_cost.floor='x': must be a number"),
        ({**_cost(), "applies_to": "step"}, r"config_cost.applies_to='step': allowed: epoch, compute"),
        (_cost(type="categorical"), r"params.width.type='categorical': allowed: float, int"),
        (_cost(slope="steep"), r"params.width.slope='steep': must be a finite number"),
        (_cost(low=40), r"params.width: low=40 must not exceed high=32"),
        (_cost(low=0), r"params.width.low=0: a log-scaled range must be positive"),
        (_cost(log="yes"), r"params.width.log='yes': must be true or false"),
        (_cost(colour=1), r"params.width.colour: unknown"),
        ({"params": {"width": {"type": "int", "low": 4, "high": 32}}}, r"params.width.slope: missing"),
    ],
)
def test_bad_config_cost_fails_with_one_line(block, message):
    with pytest.raises(UserError, match=message) as info:
        parse_profile({**MINIMAL, "config_cost": block})
    assert "\n" not in str(info.value)


def test_a_job_across_nodes_pays_the_inter_node_start_up_on_its_start_up_and_resume():
    """Nodes of 2; start-up 1 s + 0.5 s per doubling, resume 2 s + 1 s per doubling, 3 s
    more across nodes: k = 2 (one node) 1.5 s / 3 s, k = 4 (two nodes) 1 + 1 + 3 = 5 s / 2 + 2
    + 3 = 7 s. Without resume_s, resume_time is None (start-up + restore stands for it)."""
    import dataclasses

    def prof(**ov):
        return parse_profile({"name": "n", "hardware": {"gpus_per_node": 2},
                              "workload": {"samples_per_epoch": 10, "batch_per_device": 1, "scaling": "weak"},
                              "step_time": {"t_compute_s": 1.0},
                              "overheads": {"startup_s": 1.0, "startup_per_doubling_s": 0.5, **ov}}, "test")

    p = prof(resume_s=2.0, resume_per_doubling_s=1.0, startup_inter_node_s=3.0)
    assert [p.startup_time(k) for k in (1, 2, 4)] == [1.0, 1.5, 5.0]
    assert [p.resume_time(k) for k in (1, 2, 4)] == [2.0, 3.0, 7.0]
    assert prof(startup_inter_node_s=3.0).resume_time(4) is None
    assert prof().startup_time(4) == 2.0  # older profiles: no step
    assert dataclasses.replace(p, epoch=dataclasses.replace(p.epoch, gpus_per_node=4)).startup_time(4) == 2.0
