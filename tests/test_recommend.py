"""`nasalloc recommend`: determinism, interval behaviour, known answers, bad input."""

import json

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from nasalloc import cli
from nasalloc.sim import recommend as rec_cmd
from nasalloc.sim.ranking import recommend
from nasalloc.sim.sweep import run_grid


def profile_file(tmp_path, *, linear: bool) -> str:
    """100 s per epoch on one GPU, no start-up or other overheads; a fixed global batch
    (strong scaling) either splits perfectly across k GPUs (linear speed-up), or each step
    also all-reduces 1 GB at 1 GB/s, which eats what the split saves (no speed-up at k=2)."""
    step = {"t_compute_s": 1.0}
    if not linear:
        step.update(grad_bytes=1.0e9, intra_bandwidth_Bps=1.0e9)
    data = {
        "name": "linear" if linear else "flat",
        "hardware": {"gpus_per_node": 8},
        "workload": {"samples_per_epoch": 800, "batch_per_device": 8, "scaling": "strong", "global_batch": 8},
        "step_time": step,
        "sharing": {2: 2.0, 4: 4.0},
    }
    path = tmp_path / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def compose_recommend(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="nasalloc.conf", version_base="1.3"):
        return compose(config_name="recommend", overrides=overrides)


def small(extra=()):
    return ["scheduler=random", "n_trials=3", "scheduler.max_epochs=2", "cluster.gpus=4",
            "cluster.gpus_per_node=4", "workers=1", "plots=false", *extra]


def test_linear_speedup_without_startup_recommends_the_whole_cluster(tmp_path):
    # 3 trials on 4 GPUs: k=1 leaves a GPU idle, k=4 runs them back to back with none idle
    settings = rec_cmd.load(compose_recommend(small([f"profile={profile_file(tmp_path, linear=True)}", "seeds=3"])))
    r = recommend(run_grid(settings.points, workers=1), "makespan", "max")
    assert r.overall.allocation == "4"
    by_k = {g.allocation: g.estimates["makespan_s"].mean for g in r.groups}
    assert by_k["4"] == pytest.approx(0.75 * by_k["1"])


def test_no_speedup_recommends_one_gpu_per_trial(tmp_path):
    settings = rec_cmd.load(compose_recommend(small([f"profile={profile_file(tmp_path, linear=False)}", "seeds=3"])))
    r = recommend(run_grid(settings.points, workers=1), "makespan", "max")
    assert r.overall.allocation == "1"
    assert r.overall.speedup_vs_slowest > 1.5
    # the best-so-far plot's counterpart: k=4 runs the 3 trials back to back at a step of
    # 0.25 s compute + 2*(3/4)*1 GB / 1 GB/s = 1.75 s, i.e. 3 x 1.75 = 5.25 times k=1's makespan
    worst = r.worst_beside_overall()
    assert worst.allocation == "4"
    assert worst.estimates["makespan_s"].mean == pytest.approx(5.25 * r.overall.estimates["makespan_s"].mean, rel=0.01)


def test_same_seed_list_gives_the_same_recommendation_and_more_seeds_narrow_the_interval():
    overrides = ["scheduler=asha", "n_trials=24", "cluster.gpus=8", "workers=1", "plots=false",
                 "allocations=[1,2,8]"]
    a = rec_cmd.load(compose_recommend(overrides + ["seeds=[0,1,2,3]"]))
    runs_a = run_grid(a.points, workers=1)
    runs_b = run_grid(a.points, workers=2)  # in worker processes: same numbers, same order
    assert runs_a == runs_b
    four = recommend(runs_a, "makespan", "max")
    many = recommend(run_grid(rec_cmd.load(compose_recommend(overrides + ["seeds=32"])).points, workers=2), "makespan", "max")
    for g4, g16 in zip(four.groups, many.groups):
        assert g16.estimates["makespan_s"].half_width < g4.estimates["makespan_s"].half_width


def test_recommend_writes_csv_json_and_plots(tmp_path, capsys):
    out = tmp_path / "rec"
    code = cli.main(["recommend", "scheduler=asha", "n_trials=12", "cluster.gpus=4", "seeds=2",
                     "workers=1", f"out_dir={out}"])
    assert code == 0
    text = capsys.readouterr().out
    assert "recommended:" in text and str(out.resolve()) in text
    rows = (out / "sweep.csv").read_text().splitlines()
    data = json.loads((out / "recommendation.json").read_text())
    n_allocs = len(data["allocations"])
    assert len(rows) == 1 + 2 * n_allocs  # header + allocations x seeds
    assert data["recommended"]["gpus_per_trial"] in [g["gpus_per_trial"] for g in data["allocations"]]
    for name in ("objective_by_allocation.png", "best_so_far.png", "gantt_recommended.png"):
        assert (out / name).stat().st_size > 1000


def test_cluster_size_list_reports_each_size(tmp_path, capsys):
    out = tmp_path / "sizes"
    code = cli.main(["recommend", "scheduler=asha", "n_trials=12", "cluster.gpus=[4,8]", "seeds=2",
                     "workers=1", "adaptive=false", f"out_dir={out}"])
    assert code == 0
    data = json.loads((out / "recommendation.json").read_text())
    assert sorted(g["gpus"] for g in data["per_cluster_size"]) == [4, 8]
    assert (out / "cluster_sizes.png").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("allocations=[]", "allocations=[]: give auto or a non-empty list"),
        ("objective=speed", "objective='speed': allowed: makespan, time_to_target, best_metric, cost"),
        ("cost.per_gpu_hour=-1", "cost.per_gpu_hour=-1: must be a number >= 0"),
        ("allocations=[8]", "8 GPUs per trial does not fit the cluster of 4 GPUs"),
        ("objective=time_to_target", "needs target=VALUE"),
        ("seeds=0", "seeds=0: must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, override, message):
    out = tmp_path / "never"
    code = cli.main(["recommend", "cluster.gpus=4", override, f"out_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_plots_take_plain_data_and_never_import_recommend():
    """Data flows one way: recommend -> recommend_plots (no import loop, not even a lazy one)."""
    import ast
    from pathlib import Path

    from nasalloc.sim import recommend_plots

    tree = ast.parse(Path(recommend_plots.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
    assert not {"nasalloc.sim.recommend", "nasalloc.sim.recommend.rerun"} & imported
