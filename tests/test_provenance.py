"""Where a profile was measured: the `provenance:` block, and the one line
`nasalloc run` and `nasalloc validate` print when the machine at hand is not that one."""

import socket
from pathlib import Path

import pytest
import yaml

from nasalloc import cli
from nasalloc.sim.errors import UserError
from nasalloc.sim.profile import load_profile, parse_profile, shipped_profiles
from nasalloc.sim.provenance import differences, foreign_line

HERE = {"how": "nasalloc run", "host": "node-a", "date": "2026-11-30", "device": "CPU slot (AMD EPYC)",
        "cpu_model": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu"}


def test_the_same_machine_gives_no_line_another_names_what_differs():
    same = {**HERE, "how": "nasalloc calibrate", "date": "2026-11-01"}  # how and when do not make timings differ
    assert differences(same, HERE) == [] and foreign_line("p", same, HERE) is None
    other = {**same, "host": "node-b", "cores": 8}
    line = foreign_line("p", other, HERE)
    assert "\n" not in line and line.startswith("warning: profile p was measured on another machine")
    assert "(differs in host, cores)" in line and "host node-b" in line and "host node-a" in line
    assert "nasalloc calibrate" in line


def test_an_unrecorded_host_cannot_be_this_machine():
    unknown = {**HERE, "host": None}
    line = foreign_line("p", unknown, HERE)
    assert "may come from another machine (what differs was not recorded)" in line and "host unknown" in line
    assert "does not say where it was measured" in foreign_line("p", None, HERE)


def test_every_shipped_profile_says_where_its_numbers_come_from():
    """None of them was measured on this machine: each records what is known and marks the rest
    unknown, so each draws the line here."""
    for name in shipped_profiles():
        p = load_profile(name)
        assert p.provenance is not None and p.provenance["how"], name
        assert p.provenance["host"] is None, name  # no hostname was recorded for any of them
        assert foreign_line(name, p.provenance, {**HERE, "host": socket.gethostname()}) is not None


@pytest.mark.parametrize("block, needle", [
    ("[1, 2]", "provenance=[1, 2]: expected a mapping"),
    ("{host: a}", "provenance.how: required"),
    ("{how: x, where: a}", "provenance.where: unknown; allowed: how, host, date"),
    ("{how: x, cores: 0}", "provenance.cores=0: must be a whole number >= 1 or null"),
    ("{how: x, torch: 2.1}", "provenance.torch=2.1: must be a string or null"),
])
def test_a_bad_provenance_block_is_one_line(block, needle):
    data = yaml.safe_load(f"name: p\nworkload: {{samples_per_epoch: 10, batch_per_device: 1}}\n"
                          f"step_time: {{t_compute_s: 0.1}}\nprovenance: {block}\n")
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(data)


def _profile_with(tmp_path: Path, name: str, provenance: dict | None) -> Path:
    data = dict(load_profile("digits_cpu").raw)
    data["name"] = name
    if provenance is None:
        data.pop("provenance", None)
    else:
        data["provenance"] = provenance
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
def test_run_and_validate_say_when_the_profile_comes_from_another_machine(tmp_path, capsys):
    foreign = _profile_with(tmp_path, "foreign", {**HERE, "how": "nasalloc calibrate", "host": "elsewhere-0"})
    run = tmp_path / "run"
    assert cli.main(["run", "train=toy", "scheduler=random", "scheduler.n_trials=2", "scheduler.max_epochs=2",
                     "train.params.epoch_s=0.05", "devices.count=1", "progress=none", f"profile={foreign}",
                     f"out_dir={run}"]) == 0
    out = capsys.readouterr().out
    warned = [line for line in out.splitlines() if line.startswith("warning: profile foreign")]
    assert len(warned) == 1 and "was measured on another machine" in warned[0] and "host elsewhere-0" in warned[0]
    machine = yaml.safe_load((run / "machine.yaml").read_text())
    assert machine["host"] == socket.gethostname() and machine["how"] == "nasalloc run"

    assert cli.main(["validate", f"run={run}", f"out_dir={tmp_path / 'v1'}", "plots=false"]) == 0
    out = capsys.readouterr().out
    assert sum("warning: profile foreign was measured on another machine" in line for line in out.splitlines()) == 1
    assert f"run {run.name}: host {socket.gethostname()}" in out

    # the same profile recorded on the machine the run ran on: no line from either command
    local = _profile_with(tmp_path, "local", {**machine, "how": "nasalloc calibrate"})
    assert cli.main(["validate", f"run={run}", f"profile={local}", f"out_dir={tmp_path / 'v2'}", "plots=false"]) == 0
    assert "warning: profile" not in capsys.readouterr().out


def _one_trial(startup, epoch, epochs=3):
    from nasalloc.sim.trace import TraceEvent

    out = [TraceEvent(time=0.0, event="start", trial=0, epoch=0, metric=None, devices=(0,))]
    for e in range(1, epochs + 1):
        out.append(TraceEvent(time=startup + e * epoch, event="result", trial=0, epoch=e, metric=0.5, devices=(0,)))
    out.append(TraceEvent(time=startup + epochs * epoch, event="complete", trial=0, epoch=epochs, metric=None, devices=(0,)))
    return out


@pytest.mark.parametrize("startup, epoch, suggests", [
    (2.0, 15.0, True),    # epochs +50%: makespan 2+45 vs 2+30 s, +46.9%; the epoch error is the larger
    (2.0, 10.5, False),   # epochs +5%: below the 10% from which it is worth recalibrating
    (40.0, 11.5, False),  # epochs +15%, but start-up 40 s vs 2 s makes the makespan +133% (74.5 s vs 32 s): not the epochs' doing
])
def test_validate_suggests_recalibrating_when_the_epoch_time_error_dominates(startup, epoch, suggests):
    from nasalloc.validate.compare import compare
    from nasalloc.validate.validate import epoch_error_suggestion

    c = compare(_one_trial(startup, epoch), _one_trial(2.0, 10.0), mode="max", n_devices=1)
    line = epoch_error_suggestion([c], update_profile=False)
    assert (line is not None) == suggests
    if suggests:
        assert "epoch-time error (+50.0% median) dominates" in line
        assert "`nasalloc calibrate`" in line and "update_profile=true" in line
        assert "profile_updated.yaml" in epoch_error_suggestion([c], update_profile=True)
