"""The whole loop at tiny size: calibrate -> recommend -> run -> validate, through the CLI."""

import json

import pytest

from nasalloc import cli
from nasalloc.sim.profile import load_profile

pytestmark = pytest.mark.slow


def test_calibrate_recommend_run_validate(tmp_path, capsys):
    profile = tmp_path / "calibrate" / "profile.yaml"
    assert cli.main(["calibrate", "calibration.gpus_per_trial=[1]", "calibration.share=[]", "calibration.cpu_slots=1",
                     "calibration.time_limit_s=2", "calibration.bootstrap=5", f"out_dir={tmp_path / 'calibrate'}"]) == 0
    assert load_profile(profile).epoch_time(1) > 0

    search = ["scheduler.n_trials=4", "scheduler.max_epochs=3", "seed=1"]
    assert cli.main(["recommend", "scheduler=asha", "n_trials=4", "scheduler.max_epochs=3", f"profile={profile}",
                     "cluster.gpus=2", "cluster.gpus_per_node=2", "allocations=[1,2]", "seeds=2", "workers=1",
                     f"out_dir={tmp_path / 'recommend'}"]) == 0
    recommended = json.loads((tmp_path / "recommend" / "recommendation.json").read_text())["recommended"]["gpus_per_trial"]

    runs = []
    for k in ("1", "2"):
        folder = tmp_path / f"run_k{k}"
        assert cli.main(["run", f"gpus_per_trial={k}", "devices.count=2", "progress=none", f"profile={profile}",
                         *search, f"out_dir={folder}"]) == 0
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
    assert report["ranking"]["kendall_tau"] in (-1.0, 1.0)
    assert recommended in ("1", "2")
    assert load_profile(out / "profile_updated.yaml").name.endswith("-validated")
    assert (out / "timeline_00_run_k1.png").stat().st_size > 1000
