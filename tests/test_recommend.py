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


# ----- every objective on a search whose numbers are known by hand -------------------------
# The linear profile (100 s per epoch at k=1, 50 s at k=2, 25 s at k=4; nothing else), the
# random search of 3 trials x 2 epochs on 4 GPUs, and recorded curves: trial i replays curve i.
#   k=1: the 3 trials side by side on 3 GPUs, results at 100 and 200 s; makespan 200 s
#   k=2: trials 0, 1 at 50 and 100 s, trial 2 at 150 and 200 s; makespan 200 s
#   k=4: one after another, results at 25, 50 | 75, 100 | 125, 150 s; makespan 150 s
# Every trial holds 600 device-seconds at any k (2 epochs x k GPUs x 100/k s x 3 trials).
CURVES = "config_id,epoch,metric\n0,1,0.2\n0,2,0.5\n1,1,0.6\n1,2,0.7\n2,1,0.9\n2,2,0.95\n"


def known(tmp_path, *extra):
    """-> (recommendation, {allocation: mean objective}) for the known search above."""
    curves = tmp_path / "curves.csv"
    curves.write_text(CURVES)
    settings = rec_cmd.load(compose_recommend(small([f"profile={profile_file(tmp_path, linear=True)}", "seeds=2",
                                                     "allocations=[1,2,4]", "workload=replay",
                                                     f"workload.path={curves}", *extra])))
    objective = settings.objective
    r = recommend(run_grid(settings.points, workers=1), objective, "max")
    field = {"makespan": "makespan_s", "time_to_target": "time_to_target_s", "best_metric": "metric_at_deadline",
             "cost": "cost"}[objective]
    return r, {g.allocation: g.estimates[field].mean for g in r.groups}


def test_time_to_target_is_the_first_result_at_the_target(tmp_path):
    # 0.85 is first reached by trial 2's first epoch (0.9): at 100 s (k=1), 150 s (k=2), 125 s (k=4)
    r, ttt = known(tmp_path, "objective=time_to_target", "target=0.85")
    assert ttt == {"1": 100.0, "2": 150.0, "4": 125.0}
    assert r.overall.allocation == "1" and r.overall.target_speedup_vs_slowest == pytest.approx(1.5)
    # a target no curve reaches: no allocation reaches it, nothing is recommended
    r, ttt = known(tmp_path, "objective=time_to_target", "target=0.99")
    assert r.overall is None


def test_best_metric_within_a_deadline(tmp_path):
    # by 110 s: k=1 has every first epoch (best 0.9); k=2 and k=4 only trials 0 and 1 (best 0.7)
    r, best = known(tmp_path, "objective=best_metric", "deadline_s=110")
    assert best == {"1": 0.9, "2": 0.7, "4": 0.7} and r.overall.allocation == "1"
    # without a deadline every allocation finds 0.95: equal, so the plainest (one whole GPU) is named
    r, best = known(tmp_path, "objective=best_metric")
    assert best == {"1": 0.95, "2": 0.95, "4": 0.95} and r.overall.allocation == "1"


@pytest.mark.parametrize(("billing", "expected", "recommended"), [
    # all 4 GPUs for the makespan at 3.6 per GPU-hour: 3.6 x 4 x 200/3600 = 0.8, and 0.6 at k=4
    ("cluster", {"1": 0.8, "2": 0.8, "4": 0.6}, "4"),
    # only device-hours in use: 600 device-seconds at every k, 3.6 x 600/3600 = 0.6; equal, so k=1
    ("busy", {"1": 0.6, "2": 0.6, "4": 0.6}, "1"),
])
def test_cost_in_both_billing_modes(tmp_path, billing, expected, recommended):
    r, cost = known(tmp_path, "objective=cost", "cost.per_gpu_hour=3.6", f"cost.billing={billing}")
    assert cost == {k: pytest.approx(v) for k, v in expected.items()}
    assert r.overall.allocation == recommended


def test_uncertainty_propagation_draws_one_step_time_sample_per_seed(tmp_path):
    """Step-time samples of 1 s and 2 s: seed i simulates sample i, so at k=1 the makespans are
    2 epochs x 100 steps x 1 s = 200 s and 400 s; without propagation both seeds use the fit
    (1 s): 200 s, and the interval has no width."""
    data = yaml.safe_load(open(profile_file(tmp_path, linear=True)))
    data["uncertainty"] = {"step_time_samples": [{"t_compute_s": 1.0}, {"t_compute_s": 2.0}]}
    path = tmp_path / "uncertain.yaml"
    path.write_text(yaml.safe_dump(data))
    for propagate, makespans in ((True, [200.0, 400.0]), (False, [200.0, 200.0])):
        settings = rec_cmd.load(compose_recommend(small([f"profile={path}", "seeds=2", "allocations=[1]",
                                                         f"propagate_uncertainty={str(propagate).lower()}"])))
        runs = run_grid(settings.points, workers=1)
        assert [(r.seed, r.makespan_s) for r in runs] == list(enumerate(makespans))
        band = recommend(runs, "makespan", "max").overall.estimates["makespan_s"]
        assert band.mean == pytest.approx(sum(makespans) / 2) and (band.half_width > 0) == propagate


def test_default_compares_every_shipped_scheduler(tmp_path, capsys):
    """No scheduler=NAME: asha, hyperband and bohb (recommend.yaml's `schedulers`) at every
    allocation; each scheduler's best and the overall best are the lowest mean makespans of
    the sweep's own rows."""
    import csv

    out = tmp_path / "rec"
    assert cli.main(["recommend", "n_trials=9", "cluster.gpus=4", "cluster.gpus_per_node=4", "seeds=2", "workers=1",
                     "plots=false", "allocations=[1,2]", f"profile={profile_file(tmp_path, linear=True)}",
                     f"out_dir={out}"]) == 0
    capsys.readouterr()
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 3 * 2 * 2  # schedulers x allocations x seeds
    means: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        means.setdefault((row["scheduler"], row["allocation"]), []).append(float(row["makespan_s"]))
    mean = {key: sum(v) / len(v) for key, v in means.items()}
    data = json.loads((out / "recommendation.json").read_text())
    per = {p["scheduler"]: p for p in data["per_scheduler"]}
    assert sorted(per) == ["asha", "bohb", "hyperband"]
    for name, best in per.items():
        assert best["makespan_s"]["mean"] == pytest.approx(min(m for (s, _), m in mean.items() if s == name))
        assert mean[(name, best["gpus_per_trial"])] == pytest.approx(best["makespan_s"]["mean"])
    assert data["recommended"]["makespan_s"]["mean"] == pytest.approx(min(mean.values()))
