"""Write the Ray Tune and Syne Tune test fixtures with the real libraries (not part of the package).

nasalloc reads what Ray Tune's `Tuner.fit` and Syne Tune's `Tuner.run` write so that a user's
last search can be replayed at other allocations (`workload=replay workload.path=...`). The
formats must not be guessed, so this script runs a tiny search with each library (a few
trials, a few epochs, fake training that sleeps) and keeps only the files nasalloc reads:

    tests/fixtures/ray_tune/<experiment>/experiment_state-*.json       trials' resources (GPUs)
    tests/fixtures/ray_tune/<experiment>/<trial>/{result.json,progress.csv,params.json}
    tests/fixtures/syne_tune/<tuner>/{results.csv.zip,metadata.json}
    tests/fixtures/VERSIONS.json                                         library versions used

The tests read the fixtures and need neither library. To write them again (values change:
they are measured sleeps):

    pip install "ray[tune]==2.60.0" syne-tune      # into a scratch venv, not a project dependency
    python scripts/make_tune_fixtures.py [--out tests/fixtures]

Ray is started locally on 127.0.0.1 with 2 CPUs and 4 *declared* GPUs (none needs to exist:
Ray only counts them), so each trial can ask for GPUs and its experiment state records them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

RAY_KEEP_TRIAL = ("result.json", "progress.csv", "params.json")
SYNE_KEEP = ("results.csv.zip", "metadata.json")


def ray_search(storage: Path, name: str, gpus_per_trial: float, trials: int, epochs: int) -> None:
    """A Ray Tune ASHA search with `gpus_per_trial` GPUs in each trial's resources."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    def train(config: dict) -> None:
        import math as m
        import time as t

        from ray import tune as rt

        for epoch in range(1, epochs + 1):
            t.sleep(0.04 * config["width"] / 16)
            rt.report({"val_accuracy": 0.9 - 0.8 * m.exp(-epoch * config["lr"] * 10), "epoch": epoch})

    tuner = tune.Tuner(
        tune.with_resources(train, {"cpu": 1, "gpu": gpus_per_trial}),
        param_space={"width": tune.choice([16, 32, 64]), "lr": tune.loguniform(0.01, 0.3)},
        tune_config=tune.TuneConfig(metric="val_accuracy", mode="max", num_samples=trials,
                                    scheduler=ASHAScheduler(max_t=epochs, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(storage), name=name, verbose=0),
    )
    tuner.fit()


def keep_ray(src: Path, dst: Path) -> None:
    """Copy the experiment state and each trial's result files; drop pickles, tfevents, tuner.pkl."""
    dst.mkdir(parents=True, exist_ok=True)
    for state in sorted(src.glob("experiment_state-*.json")):
        shutil.copy2(state, dst / state.name)
    for trial in sorted(p for p in src.iterdir() if p.is_dir()):
        (dst / trial.name).mkdir()
        for name in RAY_KEEP_TRIAL:
            if (trial / name).is_file():
                shutil.copy2(trial / name, dst / trial.name / name)


def syne_search(root: Path, name: str, trials: int, epochs: int) -> Path:
    """A Syne Tune ASHA search (PythonBackend, 2 workers); returns its tuner folder."""
    from syne_tune import StoppingCriterion, Tuner
    from syne_tune.backend import PythonBackend
    from syne_tune.config_space import choice, loguniform
    from syne_tune.optimizer.baselines import ASHA

    def train(width: int, lr: float, epochs: int) -> None:
        import math as m
        import time as t

        from syne_tune import Reporter

        report = Reporter()
        for epoch in range(1, epochs + 1):
            t.sleep(0.04 * width / 16)
            report(epoch=epoch, val_accuracy=0.9 - 0.8 * m.exp(-epoch * lr * 10))

    space = {"width": choice([16, 32, 64]), "lr": loguniform(0.01, 0.3), "epochs": epochs}
    tuner = Tuner(
        trial_backend=PythonBackend(tune_function=train, config_space=space),
        scheduler=ASHA(space, metric="val_accuracy", do_minimize=False, time_attr="epoch", max_t=epochs,
                       reduction_factor=2, random_seed=0),
        stop_criterion=StoppingCriterion(max_num_trials_finished=trials),
        n_workers=2, sleep_time=0.2, tuner_name=name, suffix_tuner_name=False,
        trial_backend_path=str(root / name),
    )
    tuner.run()
    return tuner.tuner_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import syne_tune

    out: Path = args.out
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            ray_search(work / "ray", "asha_2gpu", gpus_per_trial=2, trials=4, epochs=4)
            ray_search(work / "ray", "asha_half_gpu", gpus_per_trial=0.5, trials=2, epochs=2)
        finally:
            ray.shutdown()
        os.environ["SYNETUNE_FOLDER"] = str(work / "syne")
        here = Path.cwd()
        os.chdir(work)  # Syne Tune leaves a std.out in the working folder
        try:
            syne_dir = syne_search(work / "syne", "asha_syne", trials=4, epochs=4)
        finally:
            os.chdir(here)
        for sub in ("ray_tune", "syne_tune"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for name in ("asha_2gpu", "asha_half_gpu"):
            keep_ray(work / "ray" / name, out / "ray_tune" / name)
        (out / "syne_tune" / "asha_syne").mkdir(parents=True)
        for name in SYNE_KEEP:
            shutil.copy2(Path(syne_dir) / name, out / "syne_tune" / "asha_syne" / name)
    versions = {"ray": ray.__version__, "syne_tune": syne_tune.__version__,
                "written": time.strftime("%Y-%m-%d"), "by": "scripts/make_tune_fixtures.py"}
    (out / "VERSIONS.json").write_text(json.dumps(versions, indent=2) + "\n", encoding="utf-8")
    print(f"fixtures written under {out}: {versions}")


if __name__ == "__main__":
    main()
