"""`nasalloc validate` names each epoch-time error by the allocation that ran it. A trace
records devices held, and k = 1/2 or 1/4 holds one device as k = 1 does: the label must be
the run's k, not the device count read as k."""

import json

import pytest
import yaml

from nasalloc import cli
from nasalloc.sim.cluster import Allocation
from nasalloc.sim.config import shipped
from nasalloc.validate.validate import held_label


def _run(folder, gpus_per_trial):
    """A finished random search of 2 trials x 2 epochs on 2 CPU slots at `gpus_per_trial`,
    each trial alone on its device, one epoch every 10 s."""
    folder.mkdir()
    (folder / "run_config.yaml").write_text(yaml.safe_dump({
        "seed": 0, "scheduler": {**shipped("scheduler", "random"), "n_trials": 2, "max_epochs": 2},
        "train": {"name": "toy", "entrypoint": "nasalloc.execute.trainers.toy:train",
                  "space": {"quality": {"type": "float", "low": 0.1, "high": 1.0}}, "params": {}},
        "devices": {**shipped("devices", "cpu"), "count": 2}, "gpus_per_trial": gpus_per_trial,
        "trial_timeout_s": 120, "checkpoint_every": 1, "target": None, "progress": "none", "profile": "digits_cpu",
    }))
    lines = []
    for trial in (0, 1):
        lines.append({"time": 0, "event": "start", "trial": trial, "epoch": 0, "devices": [trial]})
        lines += [{"time": 10 * e, "event": "result", "trial": trial, "epoch": e, "metric": 0.1 * e, "devices": [trial]}
                  for e in (1, 2, 3)]
        lines.append({"time": 30, "event": "complete", "trial": trial, "epoch": 3, "devices": [trial]})
    (folder / "trace.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


@pytest.mark.parametrize("k", ["1/2", "1/4", 1])
def test_the_epoch_time_error_is_labelled_with_the_runs_allocation(tmp_path, capsys, k):
    run = _run(tmp_path / "run", k)
    assert cli.main(["validate", f"run={run}", "plots=false", f"out_dir={tmp_path / 'out'}"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "error per term" in x)
    assert f"error per term: epoch k={k} " in line
    if k != 1:
        assert "k=1:" not in line


def test_held_label_names_every_k_that_holds_that_many_devices():
    schedule = Allocation((0.5, 1, 2))  # a per-rung schedule: 1/2 and 1 both hold one device
    assert held_label(schedule, 1) == "k=1/2 or 1"
    assert held_label(schedule, 2) == "k=2"
    assert held_label(Allocation((0.25,)), 1) == "k=1/4"
    assert held_label(Allocation((4,)), 2) == "2 devices"  # not an allocation of this run
