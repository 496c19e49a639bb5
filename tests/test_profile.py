"""profile.yaml parsing: what the simulator accepts, and one-line errors for what it does not."""

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
    ],
)
def test_bad_profiles_fail_with_one_line(patch, message):
    with pytest.raises(UserError, match=message) as info:
        parse_profile({**MINIMAL, **patch})
    assert "\n" not in str(info.value)


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
