"""Reading the records of Ray Tune and Syne Tune searches (`sim/records.py`) from fixtures the
libraries wrote themselves (tests/fixtures/README.md), and bad records: one line naming the
file, exit 2, no output folder. Expected values are copied from the fixture files by hand."""

from __future__ import annotations

import json
import shutil
import zipfile
from fractions import Fraction
from pathlib import Path

import pytest

from nasalloc.cli import main
from nasalloc.sim.errors import UserError
from nasalloc.sim.records import read_recording

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RAY = FIXTURES / "ray_tune" / "asha_2gpu"
RAY_HALF = FIXTURES / "ray_tune" / "asha_half_gpu"
SYNE = FIXTURES / "syne_tune" / "asha_syne"
ONE = Fraction(1)


def seconds(rec, trial: int) -> list[float]:
    return [rec.times.epochs[trial][e].seconds for e in sorted(rec.times.epochs[trial])]


def ks(rec) -> set[Fraction]:
    return {e.k for trial in rec.times.epochs for e in trial.values()}


def test_ray_tune_experiment(tmp_path):
    rec = read_recording(RAY, "val_accuracy", ONE)
    assert rec.kind == "Ray Tune experiment"
    assert rec.trial_ids == ("58ad4_00000", "58ad4_00001", "58ad4_00002", "58ad4_00003")  # the order Ray created them
    assert [sorted(c) for c in rec.curves] == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2], [1]]  # ASHA stopped 2 and 3
    # trial 58ad4_00002 (result.json): training_iteration, val_accuracy, time_this_iter_s
    assert rec.curves[2] == {1: (0.46014471740949164, None), 2: (0.6581591629715301, None)}
    assert seconds(rec, 2) == [0.1616511344909668, 0.1604173183441162]
    assert rec.configs[2] == {"lr": 0.05981659580595321, "width": 64}  # params.json
    assert ks(rec) == {Fraction(2)}  # {"cpu": 1, "gpu": 2} in each trial's resources
    assert "k from each trial's GPUs" in rec.times.source


def test_ray_tune_fractional_gpus_are_a_shared_device():
    rec = read_recording(RAY_HALF, "val_accuracy", ONE)
    assert ks(rec) == {Fraction(1, 2)}  # {"gpu": 0.5}: two trials per GPU
    assert rec.curves[1] == {1: (0.8562649448636267, None), 2: (0.897609056190273, None)}
    assert seconds(rec, 1) == [0.16072463989257812, 0.16035747528076172]


def test_ray_tune_progress_csv_when_result_json_is_missing(tmp_path):
    copy = tmp_path / "exp"
    shutil.copytree(RAY, copy)
    for result in copy.glob("*/result.json"):
        result.unlink()
    rec = read_recording(copy, "val_accuracy", ONE)
    assert rec.curves[2] == {1: (0.46014471740949164, None), 2: (0.6581591629715301, None)}
    assert seconds(rec, 2) == [0.1616511344909668, 0.1604173183441162]
    assert ks(rec) == {Fraction(2)}
    assert rec.configs[2] == {"lr": 0.05981659580595321, "width": 64}  # params.json (progress.csv has none)


def test_ray_tune_without_experiment_state_assumes_recorded_k(tmp_path):
    copy = tmp_path / "exp"
    shutil.copytree(RAY, copy)
    for state in copy.glob("experiment_state-*.json"):
        state.unlink()
    rec = read_recording(copy, "val_accuracy", Fraction(1, 4))
    assert ks(rec) == {Fraction(1, 4)}
    assert "k not recorded: workload.recorded_k=1/4 assumed" in rec.times.source


def test_syne_tune_results():
    rec = read_recording(SYNE / "results.csv.zip", "val_accuracy", ONE)
    assert rec.kind == "Syne Tune results"
    assert rec.trial_ids == ("0", "1", "2", "3", "5")  # trial 4 was stopped before it reported
    i = rec.trial_ids.index("2")
    assert rec.curves[i] == {1: (0.5524951874548711, None), 2: (0.7490505065724686, None),
                             3: (0.8344304057283545, None), 4: (0.8715178130424646, None)}
    # st_worker_time: seconds since the Reporter began; an epoch is the difference
    clock = [0.08020479600008912, 0.16057713999998668, 0.2408838259998447, 0.32116342200015424]
    assert seconds(rec, i) == [clock[0], clock[1] - clock[0], clock[2] - clock[1], clock[3] - clock[2]]
    assert rec.configs[i] == {"width": 32, "lr": 0.08338332137082473, "epochs": 4}  # config_* columns
    assert ks(rec) == {ONE} and "workload.recorded_k=1 assumed" in rec.times.source
    assert read_recording(SYNE, "val_accuracy", ONE).curves == rec.curves  # the tuner folder reads the same


def test_syne_tune_new_process_restarts_the_clock(tmp_path):
    # a resumed trial reports from a new process: st_worker_iter 0 again, st_worker_time from 0
    path = tmp_path / "results.csv"
    path.write_text("trial_id,epoch,val_accuracy,st_worker_time,st_worker_iter\n"
                    "0,1,0.5,2.0,0\n0,2,0.6,5.0,1\n0,3,0.7,4.0,0\n0,4,0.8,7.5,1\n")
    rec = read_recording(path, "val_accuracy", ONE)
    assert seconds(rec, 0) == [2.0, 3.0, 4.0, 3.5]


def test_a_nasalloc_trace_records_k_per_epoch(tmp_path):
    # trials 0 and 1 share device 0 while 0 trains epoch 1 (k=1/2); epoch 2 alone (k=1);
    # trial 2 on devices 1 and 2 (k=2). A job's first epoch is taken from its start.
    path = tmp_path / "trace.jsonl"
    lines = [
        {"time": 0.0, "event": "start", "trial": 0, "epoch": 0, "devices": [0], "config": {"lr": 0.1}},
        {"time": 0.0, "event": "start", "trial": 1, "epoch": 0, "devices": [0], "config": {"lr": 0.2}},
        {"time": 0.0, "event": "start", "trial": 2, "epoch": 0, "devices": [1, 2], "config": {"lr": 0.3}},
        {"time": 4.0, "event": "result", "trial": 1, "epoch": 1, "metric": 0.3, "devices": [0]},
        {"time": 4.5, "event": "stop", "trial": 1, "epoch": 1, "devices": [0]},
        {"time": 5.0, "event": "result", "trial": 0, "epoch": 1, "metric": 0.4, "devices": [0]},
        {"time": 6.0, "event": "result", "trial": 2, "epoch": 1, "metric": 0.5, "devices": [1, 2]},
        {"time": 8.0, "event": "result", "trial": 0, "epoch": 2, "metric": 0.6, "devices": [0]},
        {"time": 8.0, "event": "complete", "trial": 0, "epoch": 2, "devices": [0]},
        {"time": 6.5, "event": "complete", "trial": 2, "epoch": 1, "devices": [1, 2]},
    ]
    path.write_text("".join(json.dumps({"metric": None, **x}) + "\n" for x in lines))
    rec = read_recording(path, "ignored", ONE)
    assert rec.trial_ids == ("0", "1", "2") and rec.configs[0] == {"lr": 0.1}
    e = rec.times.epochs
    assert (e[0][1].seconds, e[0][1].k, e[0][1].startup, e[0][1].decision) == (5.0, Fraction(1, 2), True, False)
    assert (e[0][2].seconds, e[0][2].k, e[0][2].startup, e[0][2].decision) == (3.0, ONE, False, True)
    assert (e[1][1].seconds, e[1][1].k) == (4.0, Fraction(1, 2))
    assert (e[2][1].seconds, e[2][1].k) == (6.0, Fraction(2))


def test_replaying_the_ray_experiment_at_the_recorded_k_gives_its_times(tmp_path, capsys):
    # one trial after another (1 trial of 2 GPUs fits the 2-GPU machine), random search to
    # 4 epochs, no overheads: makespan = the sum of what Ray recorded for the 4 trials,
    # epochs past a trial's last recorded one taking its last recorded time
    profile = tmp_path / "zero.yaml"
    profile.write_text(json.dumps({
        "name": "zero", "hardware": {"gpus_per_node": 2},
        "workload": {"samples_per_epoch": 400, "batch_per_device": 10, "scaling": "weak"},
        "step_time": {"t_compute_s": 1.0, "grad_bytes": 1e8, "intra_bandwidth_Bps": "inf", "inter_bandwidth_Bps": "inf"},
        "overheads": {"startup_s": 0.0}}))
    expected = 0.0
    for trial in sorted(p for p in RAY.iterdir() if p.is_dir()):
        times = [json.loads(line)["time_this_iter_s"] for line in (trial / "result.json").read_text().splitlines()]
        expected += sum(times) + (4 - len(times)) * times[-1]
    code = main(["simulate", f"out_dir={tmp_path / 'sim'}", "plots=false", "workload=replay", f"workload.path={RAY}",
                 f"profile={profile}", "cluster=single_node", "cluster.gpus=2", "cluster.gpus_per_node=2", "gpus_per_trial=2",
                 "scheduler=random", "scheduler.n_trials=4", "scheduler.max_epochs=4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads((tmp_path / "sim" / "summary.json").read_text())
    assert summary["makespan_s"] == pytest.approx(expected, abs=1e-9)
    assert summary["epoch_times_held"] == 0 + 0 + 2 + 3  # trials 2 and 3 were stopped after 2 and 1 epochs
    assert "epoch times       recorded: Ray Tune experiment" in out and "scaled to each k by profile zero's" in out


# ----- bad records: one line naming the file, exit 2, nothing written -------------------------

def simulate_fails(tmp_path, capsys, path, *extra) -> str:
    out_dir = tmp_path / "out"
    code = main(["simulate", f"out_dir={out_dir}", "plots=false", "workload=replay", f"workload.path={path}", *extra])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not out_dir.exists()
    return err


def ray_copy(tmp_path) -> Path:
    copy = tmp_path / "exp"
    shutil.copytree(RAY, copy)
    return copy


def edit_first_result(experiment: Path, line: int, change) -> Path:
    result = sorted(experiment.glob("*/result.json"))[0]
    rows = [json.loads(x) for x in result.read_text().splitlines()]
    change(rows[line - 1])
    result.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return result


def test_an_experiment_folder_with_no_trials(tmp_path, capsys):
    folder = tmp_path / "exp"
    folder.mkdir()
    shutil.copy2(next(RAY.glob("experiment_state-*.json")), folder)
    err = simulate_fails(tmp_path, capsys, folder)
    assert f"{folder}: a Ray Tune experiment with no trials" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"workload.path={empty}: no trials in this folder" in simulate_fails(tmp_path, capsys, empty)


@pytest.mark.parametrize("path, name", [(RAY, "result.json"), (SYNE / "results.csv.zip", "results.csv.zip")])
def test_a_trial_with_no_metric_column(tmp_path, capsys, path, name):
    err = simulate_fails(tmp_path, capsys, path, "workload.metric.name=accuracy")
    assert name in err and "'accuracy'" in err and "workload.metric.name" in err


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(time_this_iter_s=-0.5), "result.json:2: time_this_iter_s=-0.5: negative"),
    (lambda r: r.pop("time_this_iter_s"), "result.json:2: time_this_iter_s=None: missing"),
])
def test_a_negative_or_missing_ray_tune_time(tmp_path, capsys, change, message):
    exp = ray_copy(tmp_path)
    result = edit_first_result(exp, 2, change)
    err = simulate_fails(tmp_path, capsys, exp)
    assert str(result.parent) in err and message in err


@pytest.mark.parametrize("cell, message", [("-1.5", "epoch_seconds='-1.5': negative"), ("", "epoch_seconds='': missing")])
def test_a_negative_or_missing_csv_time(tmp_path, capsys, cell, message):
    path = tmp_path / "curves.csv"
    path.write_text(f"config_id,epoch,metric,epoch_seconds\na,1,0.5,2.0\na,2,0.6,{cell}\n")
    assert f"{path}:3: {message}" in simulate_fails(tmp_path, capsys, path)


def test_a_negative_or_missing_syne_tune_time(tmp_path, capsys):
    text = zipfile.ZipFile(SYNE / "results.csv.zip").read("results.csv").decode()
    header, first, *rest = text.splitlines()
    cells = first.split(",")
    at = header.split(",").index("st_worker_time")
    for value, message in (("-0.1", "st_worker_time='-0.1': negative"), ("", "st_worker_time='': missing")):
        cells[at] = value
        path = tmp_path / "results.csv"
        path.write_text("\n".join([header, ",".join(cells), *rest]) + "\n")
        assert f"{path}:2: {message}" in simulate_fails(tmp_path, capsys, path)


def test_a_mixed_folder(tmp_path, capsys):
    mixed = ray_copy(tmp_path)
    shutil.copy2(SYNE / "results.csv.zip", mixed)
    err = simulate_fails(tmp_path, capsys, mixed)
    assert f"{mixed}: a mixed folder: it holds Ray Tune trial folders (4) and Syne Tune results.csv.zip" in err
    # the trials of two experiments in one folder
    two = tmp_path / "two"
    shutil.copytree(RAY, two)
    for trial in (p for p in RAY_HALF.iterdir() if p.is_dir()):
        shutil.copytree(trial, two / trial.name)
    assert "a mixed folder: trials of 2 Ray Tune experiments (58ad4, 5e8ea)" in simulate_fails(tmp_path, capsys, two)
    # ~/ray_results: a folder of experiments
    err = simulate_fails(tmp_path, capsys, FIXTURES / "ray_tune")
    assert "a mixed folder: it holds 2 searches (asha_2gpu, asha_half_gpu); point workload.path at one of them" in err


def test_bad_recorded_k(tmp_path, capsys):
    err = simulate_fails(tmp_path, capsys, RAY, "workload.recorded_k=0.3")
    assert "workload.recorded_k=0.3: devices per trial the records ran at" in err


def test_reader_errors_name_the_file(tmp_path):
    bad = tmp_path / "results.csv.zip"
    bad.write_text("not a zip")
    with pytest.raises(UserError, match=f"{bad}: not a zip file"):
        read_recording(bad, "val_accuracy", ONE)
