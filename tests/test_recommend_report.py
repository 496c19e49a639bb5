"""What `nasalloc recommend` prints: the verdict's speed-up is the objective's own, and the
cost column has one format and one scale. The search is the hand-computed one of
test_recommend.py (linear profile, 100 s per epoch at k=1; 3 trials x 2 epochs on 4 GPUs;
trial i replays curve i), re-stated here with its numbers."""

import io

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from rich.console import Console

from nasalloc.sim import recommend as rec_cmd
from nasalloc.sim.ranking import recommend
from nasalloc.sim.sweep import run_grid

CURVES = "config_id,epoch,metric\n0,1,0.2\n0,2,0.5\n1,1,0.6\n1,2,0.7\n2,1,0.9\n2,2,0.95\n"


def settings_for(tmp_path, *extra):
    """k=1: the 3 trials side by side, results at 100 and 200 s (makespan 200 s); k=2: trials
    0, 1 at 50, 100 s and trial 2 at 150, 200 s (200 s); k=4: one after another, results at
    25, 50 | 75, 100 | 125, 150 s (150 s)."""
    profile = tmp_path / "linear.yaml"
    profile.write_text(yaml.safe_dump({
        "name": "linear", "hardware": {"gpus_per_node": 8},
        "workload": {"samples_per_epoch": 800, "batch_per_device": 8, "scaling": "strong", "global_batch": 8},
        "step_time": {"t_compute_s": 1.0}, "sharing": {2: 2.0, 4: 4.0}}))
    curves = tmp_path / "curves.csv"
    curves.write_text(CURVES)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="nasalloc.conf", version_base="1.3"):
        cfg = compose(config_name="recommend", overrides=[
            "scheduler=random", "n_trials=3", "scheduler.max_epochs=2", "cluster.gpus=4", "cluster.gpus_per_node=4",
            "workers=1", "plots=false", f"profile={profile}", "seeds=2", "allocations=[1,2,4]", "workload=replay",
            f"workload.path={curves}", *extra])
    settings = rec_cmd.load(cfg)
    return settings, recommend(run_grid(settings.points, workers=1), settings.objective, "max")


def test_the_time_to_target_verdict_gives_the_time_to_target_ratio(tmp_path):
    # 0.85 is first reached by trial 2's first epoch: at 100 s (k=1), 150 s (k=2), 125 s (k=4).
    # k=1 is recommended: 150 / 100 = 1.50x sooner than the slowest (k=2) and 1.00x vs k=1;
    # its makespan (200 s) is that of the slowest, a ratio of 1.00 that must not be shown.
    settings, rec = settings_for(tmp_path, "objective=time_to_target", "target=0.85")
    text = rec_cmd.verdict(settings, rec)
    assert "reaches the target 1.50x sooner than the slowest allocation of random, 1.00x vs 1 GPU per trial" in text
    assert "1.00x faster" not in text


def test_the_makespan_verdict_is_unchanged(tmp_path):
    # k=4: 150 s against 200 s at k=1 and k=2: 200 / 150 = 1.33x
    settings, rec = settings_for(tmp_path)
    assert "  1.33x faster than the slowest allocation of random, 1.33x vs 1 GPU per trial;" in rec_cmd.verdict(settings, rec)


def test_a_cost_objectives_verdict_names_the_makespan_ratio(tmp_path):
    settings, rec = settings_for(tmp_path, "objective=cost")
    assert "makespan 1.33x shorter than with the slowest allocation of random" in rec_cmd.verdict(settings, rec)


def _table_text(settings, rec) -> str:
    out = io.StringIO()
    Console(file=out, width=300).print(rec_cmd.render_table(settings, rec))
    return out.getvalue()


def test_the_cost_column_has_one_format_and_one_scale(tmp_path):
    # all 4 GPUs billed for the makespan at 0.0036 per GPU-hour: 0.0036 x 4 x 200 / 3600 =
    # 0.0008 at k=1 and k=2, 0.0036 x 4 x 150 / 3600 = 0.0006 at k=4. Below 0.01, so the
    # column shares a scale: 0.0006 = 600 x 1e-6; both seeds agree, the interval is 0.
    settings, rec = settings_for(tmp_path, "cost.per_gpu_hour=0.0036")
    text = _table_text(settings, rec)
    assert "cost [×1e-6]" in text
    rows = {line.split("│")[2].strip(): line.split("│")[-4].strip() for line in text.splitlines() if line.startswith("│")}
    assert rows == {"1": "800 ±0", "2": "800 ±0", "4": "600 ±0"}
    assert "e-0" not in text.replace("[×1e-6]", "")


@pytest.mark.parametrize("price, cells", [
    # 2.0 x 4 x 200 / 3600 = 0.444..., 2.0 x 4 x 150 / 3600 = 0.333...: three significant digits
    (2.0, {"1": "0.444 ±0.000", "4": "0.333 ±0.000"}),
    # x 1000: 444.4 and 333.3 -> no decimals
    (2000.0, {"1": "444 ±0", "4": "333 ±0"}),
])
def test_cost_cells_at_three_significant_digits(tmp_path, price, cells):
    settings, rec = settings_for(tmp_path, f"cost.per_gpu_hour={price}")
    text = _table_text(settings, rec)
    assert "cost [" not in text  # no scale needed
    rows = {line.split("│")[2].strip(): line.split("│")[-4].strip() for line in text.splitlines() if line.startswith("│")}
    assert {k: rows[k] for k in cells} == cells
