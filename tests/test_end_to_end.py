"""The whole loop at tiny size: calibrate -> recommend -> run -> validate, through the CLI."""

import csv
import json
import statistics

import pytest

from nasalloc import cli
from nasalloc.sim.profile import load_profile

pytestmark = pytest.mark.slow


def test_calibrate_recommend_run_validate(tmp_path, capsys):
    profile = tmp_path / "calibrate" / "profile.yaml"
    assert cli.main(["calibrate", "calibration.gpus_per_trial=[1]", "calibration.share=[]", "calibration.cpu_slots=1",
                     "calibration.time_limit_s=2", "calibration.bootstrap=5", "calibration.startup_jobs=1",
                     f"out_dir={tmp_path / 'calibrate'}"]) == 0
    assert load_profile(profile).epoch_time(1) > 0

    search = ["train=digits", "scheduler.n_trials=4", "scheduler.max_epochs=3", "seed=1"]
    assert cli.main(["recommend", "scheduler=asha", "n_trials=4", "scheduler.max_epochs=3", f"profile={profile}",
                     "train=digits", "cluster.gpus=2", "cluster.gpus_per_node=2", "allocations=[1,2]", "seeds=2",
                     "workers=1", f"out_dir={tmp_path / 'recommend'}"]) == 0
    recommended = json.loads((tmp_path / "recommend" / "recommendation.json").read_text())["recommended"]["gpus_per_trial"]
    # the objective is the makespan: the recommended allocation is the one whose simulated
    # makespans (sweep.csv, one row per seed) have the lower mean
    with open(tmp_path / "recommend" / "sweep.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    means = {a: statistics.mean(float(r["makespan_s"]) for r in rows if r["allocation"] == a) for a in ("1", "2")}
    assert means["1"] != means["2"] and recommended == min(means, key=means.get)

    # the recommended allocation runs from the plan, the other with the same search written by hand:
    # validate ranks them only if they are one search (the plan left nothing out)
    runs = []
    for k in ("1", "2"):
        folder = tmp_path / f"run_k{k}"
        how = [f"plan={tmp_path / 'recommend'}"] if k == recommended else [f"gpus_per_trial={k}", f"profile={profile}", *search]
        assert cli.main(["run", "devices.count=2", "progress=none", *how, f"out_dir={folder}"]) == 0
        runs.append(folder)

    out = tmp_path / "validate"
    assert cli.main(["validate", f"run=[{runs[0]},{runs[1]}]", "update_profile=true", f"out_dir={out}"]) == 0
    text = capsys.readouterr().out
    assert "median |makespan error|" in text
    report = json.loads((out / "validation.json").read_text())
    assert len(report["runs"]) == 2
    for run in report["runs"]:
        assert run["makespan_s"]["measured"] > 0 and run["makespan_s"]["predicted"] > 0
        assert run["decisions"]["trials_measured"] == 4
    # the measured makespans are the runs' own (their summary.json, written by `run`); with two
    # allocations tau is +1 when the predicted order is the measured one, -1 when swapped
    m1, m2 = (json.loads((folder / "summary.json").read_text())["makespan_s"] for folder in runs)
    assert [r["makespan_s"]["measured"] for r in report["runs"]] == [pytest.approx(m1), pytest.approx(m2)]
    p1, p2 = (r["makespan_s"]["predicted"] for r in report["runs"])
    assert report["ranking"]["kendall_tau"] == (1.0 if (p1 - p2) * (m1 - m2) > 0 else -1.0)
    assert report["ranking"]["measured_best"] == ("1" if m1 < m2 else "2")
    updated = load_profile(out / "profile_updated.yaml")
    assert updated.name.endswith("-validated")
    # the refit took each run's measured epoch time (validation.json) at its own k
    refit = report["profile_update"]["measured_epoch_s"]
    assert refit == {str(i + 1): report["runs"][i]["timings_measured"]["epoch_s"][str(i + 1)] for i in range(2)}
    assert updated.epoch.step.t_compute_s != load_profile(profile).epoch.step.t_compute_s
    assert (out / "timeline_00_run_k1.png").stat().st_size > 1000
