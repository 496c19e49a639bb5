"""Elastic allocation (sim/elastic.py): where it starts, when it grows, and that it never
takes devices that are not free. Expected values are worked out by hand from the profiles
below (epoch times are whole seconds by construction)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from nasalloc import cli
from nasalloc.sim.cluster import ClusterSpec
from nasalloc.sim.elastic import efficiency, elastic_allocation
from nasalloc.sim.engine import simulate
from nasalloc.sim.errors import UserError
from nasalloc.sim.profile import parse_profile
from test_sim_support import check_invariants, make_spec


def profile(*, epoch_s: float = 100.0, scaling: str = "ideal", startup: float = 2.0, save: float = 1.0,
            restore: float = 1.0, sharing2: float = 2.0, gpn: int = 8, resume: float | None = None):
    """Epoch time `epoch_s` on one device; "ideal": epoch_s / k on k devices; "none": the
    same on any k (communication eats the gain)."""
    step = {"t_compute_s": epoch_s / 4}
    if scaling == "none":  # T_net(k) = 2(k-1)/k * M/B >= T_c for k >= 2 with g = 10 (max): no faster than one device
        step.update(gamma=10.0, grad_bytes=epoch_s, intra_bandwidth_Bps=1.0, inter_bandwidth_Bps=1.0)
    return parse_profile({
        "name": f"hand_{scaling}",
        "workload": {"samples_per_epoch": 32, "batch_per_device": 8, "scaling": "strong", "global_batch": 8},
        "step_time": step,
        "overheads": {"startup_s": startup, "eval_s": 0.0, "checkpoint_save_s": save, "checkpoint_restore_s": restore,
                      "decision_latency_s": 0.0, **({} if resume is None else {"resume_s": resume})},
        "hardware": {"gpus_per_node": gpn},
        "sharing": {1: 1.0, 2: sharing2},
    }, "hand profile")


def test_efficiency_and_the_start_allocation():
    cluster = ClusterSpec("c", 8, 8)
    fast_share = profile(sharing2=1.6)  # two trials on one device: each at 1/1.6 speed -> 2/1.6 = 1.25 per device
    assert efficiency(fast_share, 0.5) == pytest.approx(1.25)
    assert efficiency(fast_share, 2) == pytest.approx(0.5 * (100 / 50))  # ideal scaling: 1 per device
    assert elastic_allocation(cluster, fast_share, 0.5, 4).schedule[0] == 0.5
    slow_share = profile(sharing2=2.5)  # 2 / 2.5 = 0.8 per device: one trial per device is better
    alloc = elastic_allocation(cluster, slow_share, 0.5, 4)
    assert alloc.schedule[0] == 1 and list(alloc.grow) == [2, 4]  # equal efficiency at 1, 2, 4: the smallest
    assert str(alloc) == "elastic" and alloc.label == "elastic"
    with pytest.raises(UserError, match=r"elastic.min=4 is above elastic.max=2"):
        elastic_allocation(cluster, slow_share, 4, 2)
    with pytest.raises(UserError, match=r"elastic.max=3: not allowed"):
        elastic_allocation(cluster, slow_share, 1, 3)


def _one_trial(prof, max_epochs: int):
    """One trial of a random search (no rungs: its next decision is its last epoch) on 2 devices."""
    alloc = elastic_allocation(ClusterSpec("c", 2, 2), prof, 1, 2)
    spec = make_spec(scheduler={"name": "random", "n_trials": 1, "max_epochs": max_epochs}, gpus=2, gpn=2, k=alloc,
                     profile=prof)
    return simulate(spec)


def test_a_trial_grows_when_the_gain_beats_the_move():
    """t(1) = 100 s, t(2) = 50 s; the move costs save 1 + start-up 2 + restore 1 = 4 s.
    After epoch 1, 8 epochs are left: gain 8 x 50 - 4 = 396 s > 0, so it moves:
    start-up 2 + epoch 100 = 102 (result 1), save -> pause 103, resume 103, start-up 2 +
    restore 1 + 50 = 156 (result 2), then 7 x (save 1 + 50) to result 9 at 513 and the
    completed trial's save: complete at 514 (without the move: 2 + 9 x 100 + 9 saves = 911)."""
    result = _one_trial(profile(), max_epochs=9)
    events = [(e.event, e.epoch, e.devices, e.info) for e in result.events]
    assert events[:4] == [("start", 0, (0,), None), ("result", 1, (0,), None), ("pause", 1, (0,), "reallocate"),
                          ("resume", 1, (0, 1), "reallocate")]
    assert [e.time for e in result.events if e.event == "pause"] == [pytest.approx(103.0)]
    assert result.summary.makespan_s == pytest.approx(514.0)


def test_a_measured_resume_is_what_a_move_costs():
    """Start-up 2, restore 1, but a resume measured as 60 s (`resume_s`): the move costs save 1
    + 60 s, more than the 50 s it saves over the one epoch left, so the trial stays on one
    device: 2 + 2 x 100 + a save after each epoch = 204 s. (Priced as start-up + restore, 4 s,
    the move would pay.) With 8 epochs left it pays and the resumed job pays the 60 s: 2 +
    100 + 1 (pause 103) + 60 + 50 (result 2 at 213) + 7 x (1 + 50) + 1 = 571 s."""
    stays = _one_trial(profile(resume=60.0), max_epochs=2)
    assert not [e for e in stays.events if e.info == "reallocate"]
    assert stays.summary.makespan_s == pytest.approx(204.0)
    moves = _one_trial(profile(resume=60.0), max_epochs=9)
    assert [e.time for e in moves.events if e.event == "result"][:2] == [pytest.approx(102.0), pytest.approx(213.0)]
    assert moves.summary.makespan_s == pytest.approx(571.0)


def test_no_move_when_the_model_predicts_no_gain():
    """Start-up 60 s: the move costs 62 s but saves 1 x 50 s (one epoch left): it stays on one
    device: 60 + 2 x 100 + a save after each of the 2 epochs = 262 s."""
    result = _one_trial(profile(startup=60.0), max_epochs=2)
    assert not any(e.info == "reallocate" for e in result.events)
    assert result.summary.makespan_s == pytest.approx(262.0)


@pytest.mark.parametrize("scheduler", [
    {"name": "asha", "n_trials": 40, "max_epochs": 27},
    {"name": "hyperband", "n_trials": 30, "max_epochs": 27},
    {"name": "bohb", "n_trials": 30, "max_epochs": 27},
])
def test_elastic_searches_keep_every_invariant_and_are_deterministic(scheduler):
    cluster = ClusterSpec("c", 16, 4)
    prof = profile(gpn=4)
    alloc = elastic_allocation(cluster, prof, 1, 8)
    spec = make_spec(scheduler=scheduler, gpus=16, gpn=4, k=alloc, profile=prof, seed=3)
    first, again = simulate(spec), simulate(spec)
    assert [e.to_dict() for e in first.events] == [e.to_dict() for e in again.events]
    moves = [e for e in first.events if e.event == "resume" and e.info == "reallocate"]
    assert moves and all(len(e.devices) in (2, 4, 8) for e in moves)
    check_invariants_elastic(first)


def check_invariants_elastic(result) -> None:
    """No device is held by two trials at once (k >= 1 here), and every hold is released."""
    holder: dict[int, int] = {}
    held: dict[int, tuple[int, ...]] = {}
    for e in result.events:
        if e.event in ("start", "resume"):
            for d in e.devices:
                assert d not in holder, f"device {d} given to trial {e.trial} while trial {holder[d]} holds it"
                holder[d] = e.trial
            held[e.trial] = e.devices
        elif e.event in ("pause", "stop", "complete", "fail") and e.devices:
            for d in held.pop(e.trial):
                del holder[d]
    assert not held


def test_no_move_at_all_when_scaling_gains_nothing():
    cluster = ClusterSpec("c", 16, 4)
    prof = profile(gpn=4, scaling="none")
    assert prof.epoch_time(2) >= prof.epoch_time(1)
    alloc = elastic_allocation(cluster, prof, 1, 8)
    result = simulate(make_spec(scheduler={"name": "asha", "n_trials": 40, "max_epochs": 27}, gpus=16, gpn=4, k=alloc,
                                profile=prof))
    assert not any(e.info == "reallocate" for e in result.events)
    check_invariants(result)


@pytest.mark.parametrize("override, message", [
    ("elastic.min=4", "elastic.min=4 is above elastic.max=2"),
    ("elastic.max=3", "elastic.max=3: not allowed"),
])
def test_bad_elastic_settings_are_one_line_and_nothing_is_written(override, message, tmp_path, capsys):
    out = tmp_path / "never"
    extra = ["elastic.max=2"] if override == "elastic.min=4" else []
    assert cli.main(["simulate", "gpus_per_trial=elastic", override, *extra, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_run_needs_a_profile_for_elastic(tmp_path: Path, capsys):
    out = tmp_path / "never"
    assert cli.main(["run", "gpus_per_trial=elastic", f"out_dir={out}"]) == 2
    assert "gpus_per_trial=elastic: needs profile=" in capsys.readouterr().err
    assert not out.exists()


def test_busy_device_time_is_accounted_per_hold():
    """device_seconds equals the sum over holds of k x held time, read from the trace."""
    cluster = ClusterSpec("c", 8, 4)
    prof = profile(gpn=4)
    result = simulate(make_spec(scheduler={"name": "asha", "n_trials": 16, "max_epochs": 9}, gpus=8, gpn=4,
                                k=elastic_allocation(cluster, prof, 1, 4), profile=prof))
    since: dict[int, tuple[float, int]] = {}
    total = defaultdict(float)
    for e in result.events:
        if e.event in ("start", "resume"):
            since[e.trial] = (e.time, len(e.devices))
        elif e.event in ("pause", "stop", "complete", "fail") and e.devices:
            t0, k = since.pop(e.trial)
            total[e.trial] += k * (e.time - t0)
    assert result.device_seconds == pytest.approx(sum(total.values()))


def _groups(makespans: dict[str, list[float]]):
    from nasalloc.sim.ranking import group_runs
    from nasalloc.sim.sweep import RunMetrics

    runs = [RunMetrics("asha", 8, alloc, seed, m, None, 0.7, 0.6, None, 1.0, 1.0, 0.9, 10, 20)
            for alloc, values in makespans.items() for seed, m in enumerate(values)]
    return group_runs(runs)


def test_elastic_is_recommended_only_where_it_wins_over_the_seeds():
    from nasalloc.sim.ranking import choose

    # elastic is faster on average, but by 2 s +- 28 s over the seeds: k=2 cannot be told apart
    noisy = _groups({"1": [200.0, 210, 190, 205], "2": [100.0, 150, 90, 140], "elastic": [120.0, 110, 100, 142]})
    best, same = choose(noisy, "makespan", "max")
    assert best.allocation == "2" and "elastic" in [g.allocation for g in same]
    # faster on every seed by 20-30 s: elastic wins
    clear = _groups({"1": [200.0, 210, 190, 205], "2": [100.0, 150, 90, 140], "elastic": [75.0, 122, 68, 115]})
    best, _ = choose(clear, "makespan", "max")
    assert best.allocation == "elastic"


def test_a_worse_allocation_that_only_scatters_does_not_displace_elastic():
    from nasalloc.sim.ranking import choose

    # elastic beats k=2 (the best other allocation) on every seed by 20-30 s, so it wins; the
    # schedule's seeds scatter so widely (mean 200 s) that the paired test cannot tell it from
    # elastic either, but it is worse than k=2 and must not be recommended in elastic's place
    groups = _groups({"2": [100.0, 150, 90, 140], "[1,2]": [60.0, 400, 40, 300],
                      "elastic": [75.0, 122, 68, 115]})
    best, same = choose(groups, "makespan", "max")
    assert best.allocation == "elastic" and "[1,2]" in [g.allocation for g in same]
