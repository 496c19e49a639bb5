"""Replayed epoch times: each (trial, epoch) takes its recorded time, scaled to the simulated k by
the profile's epoch_time(k) / epoch_time(k recorded) (`sim/timings.py`, `sim/engine.py`)."""

from __future__ import annotations

import pytest

from nasalloc.sim.config import shipped
from nasalloc.sim.engine import simulate
from nasalloc.sim.trace import write_trace
from nasalloc.sim.workload import workload_from_config
from test_sim_support import SPACE, make_profile, make_spec

METRIC = {"name": "acc", "mode": "max", "low": 0.0, "high": 1.0}
ZERO = {"startup": 0.0, "per_doubling": 0.0, "decision": 0.0}  # a profile without overheads


def replay(path, **over):
    return workload_from_config({**shipped("workload", "replay"), "path": str(path), "metric": METRIC, "space": SPACE, **over})


def write_csv(tmp_path, rows, header="config_id,epoch,metric,epoch_seconds"):
    path = tmp_path / "curves.csv"
    path.write_text(header + "\n" + "\n".join(",".join(str(x) for x in row) for row in rows) + "\n")
    return path


def results(result):
    """trial -> [(epoch, time of its result)]"""
    out = {}
    for ev in result.events:
        if ev.event == "result":
            out.setdefault(ev.trial, []).append((ev.epoch, ev.time))
    return out


# Four recorded trials (curve, seconds per epoch): A 3 s, B 2 s, C 1.5 s, D 1.25 s.
IDEAL = [("A", e, m, 3.0) for e, m in zip((1, 2, 3, 4), (0.5, 0.6, 0.7, 0.8))] \
      + [("B", e, m, 2.0) for e, m in zip((1, 2, 3, 4), (0.4, 0.5, 0.55, 0.6))] \
      + [("C", e, m, 1.5) for e, m in zip((1, 2, 3, 4), (0.6, 0.7, 0.75, 0.8))] \
      + [("D", e, m, 1.25) for e, m in zip((1, 2, 3, 4), (0.55, 0.5, 0.6, 0.7))]


def test_ideal_replay_is_the_hand_computed_event_loop(tmp_path):
    # ASHA (stopping, Ray's rule), eta 2, rungs at epochs 1 and 2, max 4 epochs; 4 trials on
    # 2 GPUs at k=1 (the recorded k), no start-up, decision or checkpoint costs. Trial i
    # replays recorded trial i. The ideal event loop, by hand:
    #   t=0     trials 0 (A) and 1 (B) start
    #   t=2     1@1 = 0.40: first at rung 1, continue              rung 1 {0.4}
    #   t=3     0@1 = 0.50: 50th pct of {0.4} = 0.4, continue      rung 1 {0.4, 0.5}
    #   t=4     1@2 = 0.50: first at rung 2, continue              rung 2 {0.5}
    #   t=6     1@3, and 0@2 = 0.60 >= 0.5: continue               rung 2 {0.5, 0.6}
    #   t=8     1@4: complete; trial 2 (C) starts
    #   t=9     0@3
    #   t=9.5   2@1 = 0.60 >= pct {0.4, 0.5} = 0.45: continue      rung 1 {0.4, 0.5, 0.6}
    #   t=11    2@2 = 0.70 >= pct {0.5, 0.6} = 0.55: continue      rung 2 {0.5, 0.6, 0.7}
    #   t=12    0@4: complete; trial 3 (D) starts
    #   t=12.5  2@3
    #   t=13.25 3@1 = 0.55 >= pct {0.4, 0.5, 0.6} = 0.5: continue
    #   t=14    2@4: complete
    #   t=14.5  3@2 = 0.50 < pct {0.5, 0.6, 0.7} = 0.6: stop       makespan 14.5 s
    wl = replay(write_csv(tmp_path, IDEAL))
    spec = make_spec(workload=wl, gpus=2, gpn=2, profile=make_profile(gpn=2, **ZERO),
                     scheduler={"name": "asha", "n_trials": 4, "max_epochs": 4, "eta": 2, "min_epochs": 1,
                                "variant": "stopping", "rule": "ray"})
    result = simulate(spec)
    assert result.summary.makespan_s == 14.5  # exact: sums of binary-exact numbers
    assert results(result) == {
        0: [(1, 3.0), (2, 6.0), (3, 9.0), (4, 12.0)],
        1: [(1, 2.0), (2, 4.0), (3, 6.0), (4, 8.0)],
        2: [(1, 9.5), (2, 11.0), (3, 12.5), (4, 14.0)],
        3: [(1, 13.25), (2, 14.5)],
    }
    assert result.summary.epochs_trained == 14 and result.summary.stopped == 1 and result.summary.completed == 3
    assert result.workload_stats["epoch_times"].startswith("recorded: CSV")
    assert result.workload_stats["epoch_times_held"] == 0


def test_without_timings_the_profile_times_every_epoch(tmp_path):
    # workload.timings=false: the same records, every epoch 40 s (the profile's epoch_time(1))
    wl = replay(write_csv(tmp_path, IDEAL), timings=False)
    spec = make_spec(workload=wl, gpus=2, gpn=2, profile=make_profile(gpn=2, **ZERO),
                     scheduler={"name": "random", "n_trials": 1, "max_epochs": 2})
    result = simulate(spec)
    assert results(result) == {0: [(1, 40.0), (2, 80.0)]}
    assert result.workload_stats["epoch_times"] == "profile (workload.timings=false; the CSV holds epoch times)"


# Recorded at k=2: epochs of 3 s and 5 s. The test profile: epoch_time(k) = 40 / k s for
# whole k (400 samples, 10 per device, 1 s steps, infinite bandwidth), epoch_time(1/2) =
# 40 x sharing(2) = 72 s. Scaled to k: x epoch_time(k) / epoch_time(2) = x 2 / k.
AT_2 = [("A", 1, 0.5, 3.0, 2), ("A", 2, 0.6, 5.0, 2), ("B", 1, 0.4, 3.0, 2), ("B", 2, 0.5, 5.0, 2)]


@pytest.mark.parametrize("k, ends", [
    (2, [3.0, 8.0]),       # the recorded k: the recorded times
    (1, [6.0, 16.0]),      # x 40 / 20
    (4, [1.5, 4.0]),       # x 10 / 20
    ("1/2", [6.0, 16.0]),  # alone on its device: the work alone (x 40 / 20), not slowed
])
def test_recorded_times_scale_across_k(tmp_path, k, ends):
    wl = replay(write_csv(tmp_path, AT_2, header="config_id,epoch,metric,epoch_seconds,gpus_per_trial"))
    spec = make_spec(workload=wl, k=k, profile=make_profile(**ZERO), scheduler={"name": "random", "n_trials": 1, "max_epochs": 2})
    result = simulate(spec)
    assert [t for _, t in results(result)[0]] == pytest.approx(ends, rel=1e-12)
    assert "recorded at k = 2" in result.workload_stats["epoch_times"]


def test_trials_sharing_a_device_slow_recorded_work_by_the_sharing_curve(tmp_path):
    # 1 device, k=1/2, both recorded trials train together: each epoch's work alone is
    # 2 x recorded (x 40 / 20), slowed by sharing(2) = 1.8: 10.8 s, then 18 s
    wl = replay(write_csv(tmp_path, AT_2, header="config_id,epoch,metric,epoch_seconds,gpus_per_trial"))
    spec = make_spec(workload=wl, k=0.5, gpus=1, gpn=1, profile=make_profile(gpn=1, **ZERO),
                     scheduler={"name": "random", "n_trials": 2, "max_epochs": 2})
    ends = results(simulate(spec))
    assert [t for _, t in ends[0]] == pytest.approx([10.8, 28.8]) and [t for _, t in ends[1]] == pytest.approx([10.8, 28.8])


def test_a_time_recorded_while_sharing_is_scaled_from_that_share(tmp_path):
    # recorded at k=1/2: 7.2 s; at k=1 that is 7.2 x 40 / 72 = 4 s
    wl = replay(write_csv(tmp_path, [("A", 1, 0.5, 7.2, "1/2")], header="config_id,epoch,metric,epoch_seconds,gpus_per_trial"))
    spec = make_spec(workload=wl, k=1, profile=make_profile(**ZERO), scheduler={"name": "random", "n_trials": 1, "max_epochs": 1})
    assert simulate(spec).summary.makespan_s == pytest.approx(4.0)


def test_epochs_beyond_the_recording_take_the_last_recorded_time(tmp_path):
    # recorded 3 s and 5 s (k=1 assumed: workload.recorded_k); a 4-epoch trial: 3, 5, 5, 5
    wl = replay(write_csv(tmp_path, [("A", 1, 0.5, 3.0), ("A", 2, 0.6, 5.0)]))
    spec = make_spec(workload=wl, profile=make_profile(**ZERO), scheduler={"name": "random", "n_trials": 1, "max_epochs": 4})
    result = simulate(spec)
    assert [t for _, t in results(result)[0]] == [3.0, 8.0, 13.0, 18.0]
    assert result.workload_stats["epoch_times_held"] == 2
    assert "workload.recorded_k=1 assumed" in result.workload_stats["epoch_times"]


def test_recorded_k_setting_is_the_k_of_records_that_do_not_say(tmp_path):
    # the same 3 s epoch, said to have run at k=4 (10 s in the profile): at k=1 (40 s) it takes 12 s
    wl = replay(write_csv(tmp_path, [("A", 1, 0.5, 3.0)]), recorded_k=4)
    spec = make_spec(workload=wl, profile=make_profile(**ZERO), scheduler={"name": "random", "n_trials": 1, "max_epochs": 1})
    assert simulate(spec).summary.makespan_s == pytest.approx(12.0)


@pytest.mark.parametrize("resume", [None, (3.0, 2.5)])
def test_a_replayed_nasalloc_trace_reproduces_its_run(tmp_path, resume):
    # A run with start-up (5 s + 1 s per doubling), decision (0.5 s), checkpoint save and
    # restore, per-configuration epoch cost and pauses (ASHA's promotion variant), at k=2.
    # Replaying its trace with the same profile and scheduler seed gives the same search: the
    # trace's first epoch of each job less start-up (and restore), later ones less the
    # decision, plus what the engine adds back, are the recorded result times. With a resume
    # measured as such (resume_s 3 s + 2.5 s per doubling) a resumed job's first
    # epoch is less resume(k) instead.
    import dataclasses

    cost = {"params": {"width": {"type": "int", "low": 16, "high": 256, "log": True, "slope": 1.5, "center": 0.5}}, "norm": 1.0}
    profile = make_profile(decision=0.5, save=2.0, restore=1.5, config_cost=cost)
    if resume is not None:
        profile = dataclasses.replace(profile, overheads=dataclasses.replace(
            profile.overheads, resume_s=resume[0], resume_per_doubling_s=resume[1]))
    sched = {"name": "asha", "n_trials": 12, "max_epochs": 9, "eta": 3, "variant": "promotion"}
    first = simulate(make_spec(k=2, scheduler=sched, profile=profile, seed=4))
    assert any(ev.event == "resume" for ev in first.events)  # restores happened
    path = tmp_path / "trace.jsonl"
    write_trace(path, first.events)
    again = simulate(make_spec(k=2, scheduler=sched, profile=profile, seed=4, workload=replay(path)))
    assert [(e.event, e.trial, e.epoch) for e in again.events] == [(e.event, e.trial, e.epoch) for e in first.events]
    assert [e.time for e in again.events] == pytest.approx([e.time for e in first.events], abs=1e-6)
    assert again.summary.makespan_s == pytest.approx(first.summary.makespan_s, abs=1e-6)
    assert again.workload_stats["epoch_times_below_overheads"] == 0
