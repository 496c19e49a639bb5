"""`ray_tune.py` and Syne Tune's n_workers for every kind of allocation (`sim/tune_export.py`).

The snippets are compiled, and the fixed ones run against a stand-in `ray` package that records
what they pass to Ray Tune (Ray itself is not needed)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from nasalloc.cli import main
from nasalloc.sim.cluster import ClusterSpec, parse_allocation
from nasalloc.sim.config import shipped
from nasalloc.sim.schedulers import scheduler_config
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.tune_export import ray_tune_snippet, syne_tune_settings

CLUSTER = ClusterSpec("test", 16, 4)  # 4 nodes of 4 GPUs
SPACE = SearchSpace.from_config({"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
                                 "width": {"type": "int", "low": 16, "high": 64},
                                 "opt": {"type": "categorical", "choices": ["sgd", "adam"]}}, "space")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def sched(name="asha", **over):
    return scheduler_config({**shipped("scheduler", name), "n_trials": 64, **over})


def snippet(k, scheduler=None, fixed=None):
    alloc = parse_allocation(k, CLUSTER)
    return ray_tune_snippet(alloc=alloc, scheduler=scheduler or sched(), cluster=CLUSTER, space=SPACE, metric="val_accuracy",
                            mode="max", headline="test", fixed=None if fixed is None else parse_allocation(fixed, CLUSTER),
                            fixed_note=" (makespan 1.0 h predicted)" if fixed is not None else "")


class _Call:
    def __init__(self, name, *args, **kwargs):
        self.name, self.args, self.kwargs = name, args, kwargs


def run_with_fake_ray(text: str, monkeypatch) -> dict:
    """Execute a snippet as __main__ against a stand-in `ray`; -> what it passed to Ray Tune."""
    seen: dict = {}
    tune = types.ModuleType("ray.tune")
    for name in ("loguniform", "uniform", "randint", "lograndint", "choice", "PlacementGroupFactory", "TuneConfig"):
        setattr(tune, name, lambda *a, _n=name, **kw: _Call(_n, *a, **kw))

    def with_resources(fn, resources):
        seen["resources"] = resources
        seen["train_fn"] = fn
        return fn

    class Tuner:
        def __init__(self, trainable, param_space, tune_config):
            seen.update(param_space=param_space, tune_config=tune_config)

        def fit(self):
            reports = []
            tune.report = reports.append
            seen["train_fn"]({})
            seen["reports"] = reports
            return types.SimpleNamespace(get_best_result=lambda: types.SimpleNamespace(config={}))

    tune.with_resources, tune.Tuner = with_resources, Tuner
    schedulers = types.ModuleType("ray.tune.schedulers")
    for name in ("ASHAScheduler", "HyperBandScheduler", "HyperBandForBOHB"):
        setattr(schedulers, name, lambda *a, _n=name, **kw: _Call(_n, *a, **kw))
    search = types.ModuleType("ray.tune.search")
    bohb = types.ModuleType("ray.tune.search.bohb")
    bohb.TuneBOHB = lambda: _Call("TuneBOHB")
    ray = types.ModuleType("ray")
    ray.tune = tune
    for name, module in (("ray", ray), ("ray.tune", tune), ("ray.tune.schedulers", schedulers),
                         ("ray.tune.search", search), ("ray.tune.search.bohb", bohb)):
        monkeypatch.setitem(sys.modules, name, module)
    exec(compile(text, "ray_tune.py", "exec"), {"__name__": "__main__"})  # noqa: S102 (our own generated code)
    return seen


@pytest.mark.parametrize("k, resources, workers, gpus_per_trial", [
    ("1/4", {"cpu": 1, "gpu": 0.25}, 64, 1),   # 4 trials per GPU: a fractional GPU; 16 x 4 at once
    (1, {"cpu": 1, "gpu": 1}, 16, 1),
    (2, ("STRICT_PACK", 2), 8, 2),             # DDP inside one node: head bundle + one per rank
    (8, ("PACK", 8), 2, 8),                    # two whole nodes
])
def test_fixed_allocations_are_valid_python_that_configures_them(k, resources, workers, gpus_per_trial, monkeypatch):
    text = snippet(k)
    compile(text, "ray_tune.py", "exec")
    seen = run_with_fake_ray(text, monkeypatch)
    if isinstance(resources, dict):
        assert seen["resources"] == resources
    else:
        strategy, n = resources
        pgf = seen["resources"]
        assert pgf.name == "PlacementGroupFactory" and pgf.kwargs == {"strategy": strategy}
        assert pgf.args[0] == [{"CPU": 1}] + [{"CPU": 1, "GPU": 1}] * n
    config = seen["tune_config"]
    assert config.kwargs["metric"] == "val_accuracy" and config.kwargs["mode"] == "max"
    assert config.kwargs["num_samples"] == 64 and config.kwargs["max_concurrent_trials"] == workers
    asha = config.kwargs["scheduler"]
    assert asha.name == "ASHAScheduler"
    assert asha.kwargs == {"time_attr": "training_iteration", "max_t": 27, "grace_period": 1, "reduction_factor": 3, "brackets": 1}
    space = seen["param_space"]
    assert (space["lr"].name, space["lr"].args) == ("loguniform", (0.001, 0.1))
    assert (space["width"].name, space["width"].args) == ("randint", (16, 65))  # Ray's upper bound is exclusive
    assert (space["opt"].name, space["opt"].args) == ("choice", (["sgd", "adam"],))
    assert seen["reports"] == [{"val_accuracy": 0.0, "epoch": e} for e in range(1, 28)]  # the stand-in trains 27 epochs
    syne = syne_tune_settings(parse_allocation(k, CLUSTER), CLUSTER)
    assert (syne["n_workers"], syne["num_gpus_per_trial"]) == (workers, gpus_per_trial)


@pytest.mark.parametrize("name, scheduler, extra", [
    ("hyperband", "HyperBandScheduler", None),
    ("bohb", "HyperBandForBOHB", "TuneBOHB"),
    ("random", None, None),
])
def test_each_scheduler(name, scheduler, extra, monkeypatch):
    over = {} if name == "random" else {"eta": 3}
    seen = run_with_fake_ray(snippet(1, sched(name, **over)), monkeypatch)
    config = seen["tune_config"].kwargs
    if scheduler is None:
        assert config["scheduler"] is None
    else:
        assert config["scheduler"].name == scheduler
        assert config["scheduler"].kwargs == {"time_attr": "training_iteration", "max_t": 27, "reduction_factor": 3}
    assert (config.get("search_alg").name if "search_alg" in config else None) == extra


def test_asha_settings_ray_tune_lacks_are_said():
    text = snippet(1, sched("asha", variant="promotion", rule="rank"))
    assert "Ray Tune ships the stopping variant only" in text and "Syne Tune's rank rule" in text


def test_a_per_rung_schedule_points_to_nasalloc_run_and_configures_the_best_fixed_allocation(monkeypatch):
    text = snippet([1, 2, 4], fixed=2)
    assert "# gpus_per_trial=[1,2,4] changes a trial's GPUs during the trial. Ray Tune cannot express that" in text
    assert "#     nasalloc run gpus_per_trial=[1,2,4] scheduler=asha ..." in text
    assert "the best fixed allocation for asha in the same sweep, k=2 (makespan 1.0 h predicted)" in text
    assert run_with_fake_ray(text, monkeypatch)["resources"].kwargs == {"strategy": "STRICT_PACK"}
    alone = snippet([1, 2, 4])  # no fixed allocation in the sweep: the comment only
    assert all(line.startswith("#") for line in alone.splitlines()) and "nasalloc run" in alone
    compile(alone, "ray_tune.py", "exec")
    syne = syne_tune_settings(parse_allocation([1, 2, 4], CLUSTER), CLUSTER)
    assert syne["n_workers"] is None and "nasalloc run" in syne["note"]


def test_recommend_writes_ray_tune_py_and_syne_tune_workers(tmp_path, capsys):
    # the Ray Tune fixture replayed at k = 1 and 2 on 8 GPUs
    out_dir = tmp_path / "rec"
    code = main(["recommend", f"out_dir={out_dir}", "plots=false", "workload=replay",
                 f"workload.path={FIXTURES / 'ray_tune' / 'asha_2gpu'}", "scheduler=asha", "n_trials=4",
                 "scheduler.max_epochs=4", "scheduler.eta=2", "cluster.gpus=8", "allocations=[1,2]", "seeds=1", "workers=1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    rec = json.loads((out_dir / "recommendation.json").read_text())
    k = rec["recommended"]["gpus_per_trial"]
    assert rec["syne_tune"]["n_workers"] == 8 // int(k)
    text = (out_dir / "ray_tune.py").read_text()
    compile(text, "ray_tune.py", "exec")
    assert f"asha, {k} GPU(s) per trial on 8 GPUs" in text
    assert f"Syne Tune: n_workers={8 // int(k)}" in out and "epoch times: recorded: Ray Tune experiment" in out
