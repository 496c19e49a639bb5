"""The simpy engine: closed-form makespans, determinism, invariants, per-rung allocation."""

from __future__ import annotations

import pickle

import pytest

from nasalloc.sim.engine import simulate
from nasalloc.sim.trace import write_trace
from test_sim_support import check_invariants, make_profile, make_spec, make_workload, segments


@pytest.mark.parametrize("k, expected", [
    # k=1: 8 trials on 4 GPUs = 2 waves of (start-up 5 + 3 x (epoch 40 + decision 0.5))
    (1, 2 * (5 + 3 * (40 + 0.5))),
    # k=4: 8 trials one after another; start-up 5 + 1*log2(4) = 7, epoch 400/(4*10) steps x 1 s = 10
    (4, 8 * (7 + 3 * (10 + 0.5))),
    # k=2: 2 trials at once, 4 waves; start-up 6, epoch 20
    (2, 4 * (6 + 3 * (20 + 0.5))),
])
def test_random_search_closed_form_makespan(k, expected):
    spec = make_spec(k=k, profile=make_profile(decision=0.5))
    result = simulate(spec)
    assert result.summary.makespan_s == expected  # exact: sums of binary-exact numbers
    assert result.end_time == expected
    assert result.summary.trials == 8 and result.summary.completed == 8
    assert result.summary.epochs_trained == 24
    assert result.summary.gpu_utilization == pytest.approx(1.0)
    check_invariants(result)


def test_sharing_closed_form():
    # k=1/2: 8 trials on 8 half-devices at once; epoch 40 x 1.8 (sharing curve at m=2)
    result = simulate(make_spec(k=0.5, profile=make_profile(decision=0.5)))
    assert result.summary.makespan_s == pytest.approx(5 + 3 * (72 + 0.5))
    assert {len(s["devices"]) for s in segments(result.events)} == {1}
    check_invariants(result)


def test_a_sharing_trial_trains_at_the_speed_of_the_trainers_on_its_device():
    # 1 device at k=1/2, 3 one-epoch trials, epoch alone 40 s, start-up 5, sharing(2) = 1.8:
    # trials 0 and 1 train together [5, 77); trial 2 then has the device to itself [82, 122)
    # (a fixed 1/2-share slow-down would give 82 + 72 = 154)
    spec = make_spec(k=0.5, gpus=1, gpn=1, scheduler={"name": "random", "n_trials": 3, "max_epochs": 1},
                     profile=make_profile(gpn=1))
    result = simulate(spec)
    results = sorted(e.time for e in result.events if e.event == "result")
    assert results == pytest.approx([77.0, 77.0, 122.0])
    assert result.summary.makespan_s == pytest.approx(122.0) and result.end_time == pytest.approx(122.0)
    check_invariants(result)


def test_a_full_device_gives_the_sharing_curve_and_a_departure_speeds_up_the_rest():
    # 1 device, k=1/4, sharing {2: 1.8, 4: 3.5}: 4 trials train [5, 5 + 40 x 3.5 = 145) together
    four = make_spec(k=0.25, gpus=1, gpn=1, scheduler={"name": "random", "n_trials": 4, "max_epochs": 1},
                     profile=make_profile(gpn=1))
    assert sorted(e.time for e in simulate(four).events if e.event == "result") == pytest.approx([145.0] * 4)
    # 2 trials of different cost (config_cost on width) at k=1/2: both train at 1/1.8 of their alone
    # speed until the cheaper one ends, then the other trains alone at full speed
    cost = {"params": {"width": {"type": "int", "low": 16, "high": 256, "log": True, "slope": 1.5, "center": 0.5}}, "norm": 1.0}
    spec = make_spec(k=0.5, gpus=1, gpn=1, scheduler={"name": "random", "n_trials": 2, "max_epochs": 1},
                     profile=make_profile(gpn=1, config_cost=cost))
    result = simulate(spec)
    prof = spec.profile
    work = sorted(40.0 * prof.config_factor(e.config) for e in result.events if e.event == "start")
    assert work[0] < work[1]
    ends = sorted(e.time for e in result.events if e.event == "result")
    assert ends == pytest.approx([5 + 1.8 * work[0], 5 + 1.8 * work[0] + (work[1] - work[0])])
    check_invariants(result)


def test_sharing_trials_spread_over_free_devices_unless_whole_devices_are_in_the_schedule():
    spread = simulate(make_spec(k=0.5, gpus=2, gpn=2, scheduler={"name": "random", "n_trials": 2, "max_epochs": 1},
                                profile=make_profile(gpn=2)))
    assert sorted(e.devices for e in spread.events if e.event == "start") == [(0,), (1,)]
    assert spread.summary.makespan_s == pytest.approx(45.0)  # each alone on its device
    mixed = simulate(make_spec(k=[0.5, 1], gpus=2, gpn=2,
                               scheduler={"name": "asha", "n_trials": 2, "max_epochs": 3, "eta": 3},
                               profile=make_profile(gpn=2)))
    first = sorted(e.devices for e in mixed.events if e.event == "start")
    assert first == [(0,), (0,)]  # best fit: device 1 stays whole for the k=1 rung
    check_invariants(mixed)


def test_same_seed_same_bytes_other_seed_other_search(tmp_path):
    spec = make_spec(scheduler={"name": "asha", "n_trials": 30, "max_epochs": 9}, gpus=8, k=2)
    paths = []
    for i, s in enumerate((spec, pickle.loads(pickle.dumps(spec)), make_spec(scheduler={"name": "asha", "n_trials": 30, "max_epochs": 9}, gpus=8, k=2, seed=1))):
        path = tmp_path / f"t{i}.jsonl"
        write_trace(path, simulate(s).events)
        paths.append(path.read_bytes())
    assert paths[0] == paths[1]
    assert paths[0] != paths[2]


def test_curves_do_not_depend_on_the_allocation():
    """The same configuration reports the same metric at the same epoch under any k."""
    by_k = {}
    for k in (0.5, 1, 4):
        res = simulate(make_spec(k=k, scheduler={"name": "random", "n_trials": 6, "max_epochs": 3}))
        configs = {e.trial: e.config for e in res.events if e.event == "start"}
        by_k[k] = {(str(sorted(configs[e.trial].items())), e.epoch): e.metric for e in res.events if e.event == "result"}
    assert by_k[0.5] == by_k[1] == by_k[4]


@pytest.mark.parametrize("scheduler", [
    {"name": "asha", "n_trials": 40, "max_epochs": 27},
    {"name": "asha", "n_trials": 40, "max_epochs": 27, "variant": "promotion"},
    {"name": "hyperband", "n_trials": 30, "max_epochs": 27},
    {"name": "hyperband", "n_trials": 30, "max_epochs": 27, "promotion": "rerun"},
    {"name": "bohb", "n_trials": 30, "max_epochs": 27},
])
@pytest.mark.parametrize("k", [0.25, 1, 4, 8, [1, 2, 4, 8], [0.5, 1, 4]])
def test_invariants_for_every_scheduler(scheduler, k):
    prof = make_profile(decision=0.25, save=2.0, restore=3.0, eval_s=1.0, release=0.5)
    result = simulate(make_spec(scheduler=scheduler, gpus=16, k=k, profile=prof))
    check_invariants(result)
    assert result.summary.best_metric is not None
    assert result.summary.trials == scheduler["n_trials"]
    finals = {}
    for e in result.events:
        if e.event in ("stop", "complete"):
            finals[e.trial] = e.event
        elif e.event in ("start", "resume"):
            finals.pop(e.trial, None)
    assert len(finals) == scheduler["n_trials"], "every trial ends stopped or completed"


def test_per_rung_schedule_grows_the_allocation():
    """RASDA: an ASHA survivor moves to more devices at each rung, from its checkpoint."""
    prof = make_profile(save=2.0, restore=3.0)
    result = simulate(make_spec(scheduler={"name": "asha", "n_trials": 27, "max_epochs": 9, "eta": 3}, gpus=16, k=[1, 2, 4], profile=prof))
    check_invariants(result)
    for seg in segments(result.events):
        rung = 0 if seg["epoch0"] < 1 else (1 if seg["epoch0"] < 3 else 2)
        assert len(seg["devices"]) == [1, 2, 4][rung], seg
        if seg["epoch0"] > 0:
            assert seg["epoch0"] in (1, 3)
    completed = [e.trial for e in result.events if e.event == "complete"]
    assert completed
    resumed = {e.trial for e in result.events if e.event == "resume"}
    assert set(completed) <= resumed


def test_batch_size_effect_slows_progress_at_large_k():
    wl = make_workload(b_noise=40.0, rank_fidelity=1.0, noise=0.0)
    small = simulate(make_spec(k=1, workload=wl))
    large = simulate(make_spec(k=4, workload=wl))
    final = lambda r: sorted((e.trial, e.metric) for e in r.events if e.event == "result" and e.epoch == 3)  # noqa: E731
    assert all(lg < sm for (_, sm), (_, lg) in zip(final(small), final(large)))


def test_time_to_target_and_test_metric():
    """Time to target: the first result at or above it. The target is set between the first
    result's metric and the best, so it is reached later than the first result; above the
    best it is never reached."""
    events = simulate(make_spec()).events
    results = [(e.time, e.metric) for e in events if e.event == "result"]
    best = max(m for _, m in results)
    target = (results[0][1] + best) / 2
    first_at_target = min(t for t, m in results if m >= target)
    assert results[0][1] < target and first_at_target > results[0][0]
    s = simulate(make_spec(target=target)).summary
    assert s.time_to_target_s == first_at_target
    assert simulate(make_spec(target=best)).summary.time_to_target_s == min(t for t, m in results if m == best)
    assert simulate(make_spec(target=best + 1e-9)).summary.time_to_target_s is None
    assert s.best_test_metric is not None
    assert all(e.test_metric is not None for e in events if e.event == "result")


def test_spec_is_small_and_picklable():
    spec = make_spec()
    assert len(pickle.dumps(spec)) < 20_000


def test_config_cost_scales_each_trials_epoch_time():
    cost = {"params": {"width": {"type": "int", "low": 16, "high": 256, "log": True, "slope": 1.5, "center": 0.5}},
            "norm": 1.1}
    profile = make_profile(decision=0.5, save=0.25, config_cost=cost)
    result = simulate(make_spec(k=1, profile=profile))
    check_invariants(result)  # busy time = start-up + sum of (epoch x factor + decision) per trial
    configs = {ev.trial: ev.config for ev in result.events if ev.event == "start"}
    starts = {ev.trial: ev.time for ev in result.events if ev.event == "start"}
    results: dict[int, list[float]] = {}
    for ev in result.events:
        if ev.event == "result":
            results.setdefault(ev.trial, []).append(ev.time)
    # one epoch: the gap less the decision and the checkpoint after it (neither scaled)
    epoch = {t: times[1] - times[0] - 0.5 - 0.25 for t, times in results.items()}
    for t, times in results.items():
        f = profile.config_factor(configs[t])
        assert epoch[t] == pytest.approx(profile.epoch_time(1) * f)
        assert times[0] - starts[t] == pytest.approx(5 + profile.epoch_time(1) * f)  # start-up not scaled
    a, b = min(epoch, key=epoch.get), max(epoch, key=epoch.get)
    assert configs[a]["width"] != configs[b]["width"]
    assert epoch[b] / epoch[a] == pytest.approx(profile.config_factor(configs[b]) / profile.config_factor(configs[a]))
    assert epoch[b] / epoch[a] > 1.2


def test_config_cost_applied_to_compute_leaves_the_all_reduce_of_a_k2_epoch_unscaled():
    """The factor is measured at k = 1, where a step is all compute. At k = 2 (weak
    scaling: 400 samples / 20 = 20 steps) a step is 1 s of compute + 1 s of all-reduce (1e8
    bytes at 1e8 B/s, 2 (k-1)/k = 1); evaluation 4 s split over the 2 ranks. With
    `applies_to: compute` a trial of factor f trains an epoch in 20 (f + 1) + 2 f seconds;
    without it (the old profiles' meaning) in f x 42."""
    params = {"width": {"type": "int", "low": 16, "high": 256, "log": True, "slope": 1.5, "center": 0.5}}
    for applies_to in ("compute", None):
        cost = {"params": params, "norm": 1.1, **({"applies_to": applies_to} if applies_to else {})}
        profile = make_profile(decision=0.5, save=0.25, eval_s=4.0, bandwidth=1e8, config_cost=cost)
        result = simulate(make_spec(k=2, profile=profile))
        configs = {ev.trial: ev.config for ev in result.events if ev.event == "start"}
        results: dict[int, list[float]] = {}
        for ev in result.events:
            if ev.event == "result":
                results.setdefault(ev.trial, []).append(ev.time)
        factors = []
        for t, times in results.items():
            f = profile.config_factor(configs[t])
            factors.append(f)
            epoch = times[1] - times[0] - 0.5 - 0.25  # less the decision and the save (not scaled)
            assert epoch == pytest.approx(20 * (f + 1) + 2 * f if applies_to else 42 * f)
        assert max(factors) / min(factors) > 1.5  # the configurations differ enough to tell the two apart


def test_a_resumed_job_and_the_end_of_a_job_cost_what_the_profile_measured_at_their_k():
    """With `resume_s` (+ per doubling) a job that starts from a checkpoint pays
    resume(k) before its first epoch instead of start-up(k) + checkpoint_restore_s, and every
    job's end pays release(k). ASHA on the per-rung schedule [1, 2]: rung 0 at k = 1, every
    promotion resumes at k = 2. Start-up 5 s + 1 s per doubling, restore 7 s (not paid),
    resume 2 s + 3 s per doubling, release 0.5 s + 0.25 s per doubling; decision 0.1 s, save
    0.2 s (at a pause or a completion, not at a stop)."""
    import dataclasses

    from nasalloc.sim.cluster import ClusterSpec, parse_allocation

    base = make_profile(decision=0.1, save=0.2, restore=7.0, release=0.5, gpn=2)
    profile = dataclasses.replace(base, overheads=dataclasses.replace(
        base.overheads, resume_s=2.0, resume_per_doubling_s=3.0, release_per_doubling_s=0.25))
    spec = make_spec(k=parse_allocation([1, 2], ClusterSpec("test", 2, 2)), gpus=2, gpn=2, profile=profile,
                     scheduler={"name": "asha", "n_trials": 8, "max_epochs": 9})
    events = simulate(spec).events
    resumed = seen_end = 0
    open_at: dict[int, tuple[str, float, int]] = {}
    last_result: dict[int, float] = {}
    for ev in events:
        if ev.event in ("start", "resume"):
            open_at[ev.trial] = (ev.event, ev.time, len(ev.devices))
        elif ev.event == "result" and ev.trial in open_at:
            kind, t0, k = open_at.pop(ev.trial)
            before = ev.time - t0 - profile.epoch_time(k)  # what the job paid before its first epoch
            if kind == "resume":
                assert k == 2 and before == pytest.approx(2.0 + 3.0)  # resume(2), no restore on top
                resumed += 1
            else:
                assert before == pytest.approx(5.0 + 1.0 * (k - 1))  # start-up(k)
        if ev.event == "result":
            last_result[ev.trial] = ev.time
        elif ev.event in ("pause", "stop", "complete") and ev.devices:
            release = 0.5 + 0.25 * (len(ev.devices) - 1)  # release(k), k = 1 or 2
            save = 0.0 if ev.event == "stop" else 0.2  # a stopped trial keeps no checkpoint
            assert ev.time - last_result[ev.trial] == pytest.approx(0.1 + save + release)
            seen_end += len(ev.devices) == 2
    assert resumed >= 2 and seen_end >= 2


def test_a_job_across_nodes_pays_the_inter_node_start_up_on_top():
    """`startup_inter_node_s` 10 s: on nodes of 2, per-rung [1, 4] (every promotion resumes
    on 4 devices, two nodes) pays resume(4) = 2 + 3 x log2 4 = 8 s, plus 10 s; the k = 1 jobs
    inside a node pay start-up(1) = 5 s only."""
    import dataclasses

    from nasalloc.sim.cluster import ClusterSpec, parse_allocation

    base = make_profile(gpn=2)
    profile = dataclasses.replace(base, overheads=dataclasses.replace(
        base.overheads, resume_s=2.0, resume_per_doubling_s=3.0, startup_inter_node_s=10.0))
    spec = make_spec(k=parse_allocation([1, 4], ClusterSpec("test", 4, 2)), gpus=4, gpn=2, profile=profile,
                     scheduler={"name": "asha", "n_trials": 8, "max_epochs": 9})
    paid: dict[str, list[float]] = {"start": [], "resume": []}
    open_at: dict[int, tuple[str, float, int]] = {}
    for ev in simulate(spec).events:
        if ev.event in ("start", "resume"):
            open_at[ev.trial] = (ev.event, ev.time, len(ev.devices))
        elif ev.event == "result" and ev.trial in open_at:
            kind, t0, k = open_at.pop(ev.trial)
            paid[kind].append(ev.time - t0 - profile.epoch_time(k))
            assert k == (4 if kind == "resume" else 1)
    assert paid["start"] and paid["start"] == pytest.approx([5.0] * len(paid["start"]))
    assert paid["resume"] and paid["resume"] == pytest.approx([2.0 + 3.0 * 2 + 10.0] * len(paid["resume"]))


def test_the_schedulers_own_time_is_spent_in_the_one_search_loop():
    """One device, 2 random-search trials of 2 epochs; start-up 5 s, epoch 40 s, no decision
    latency; the scheduler's own time: 1 s per ask, 0.5 s per result. The loop asks for
    trial 0 (busy until 1), which starts then: results at 1 + 5 + 40 = 46 and, after 0.5 s of
    on_result, 46.5 + 40 = 86.5; its completion waits for the last on_result (87). The release
    asks for trial 1 (busy until 88): results at 88 + 45 = 133 and 173.5, completion 174.
    Without scheduler_time the same search takes 2 x (5 + 80) = 170 s."""
    import dataclasses

    base = make_profile(gpn=1)
    spec = make_spec(k=1, gpus=1, gpn=1, scheduler={"name": "random", "n_trials": 2, "max_epochs": 2}, profile=base)
    assert simulate(spec).summary.makespan_s == 170.0
    timed = dataclasses.replace(base, scheduler_times={"random": (1.0, 0.5)})
    result = simulate(dataclasses.replace(spec, profile=timed))
    assert [e.time for e in result.events if e.event == "result"] == [46.0, 86.5, 133.0, 173.5]
    assert [(e.time, e.trial) for e in result.events if e.event == "complete"] == [(87.0, 0), (174.0, 1)]
    assert [(e.time, e.trial) for e in result.events if e.event == "start"] == [(0.0, 0), (87.0, 1)]
    other = dataclasses.replace(base, scheduler_times={"bohb": (1.0, 0.5)})  # another scheduler's time: not charged
    assert simulate(dataclasses.replace(spec, profile=other)).summary.makespan_s == 170.0
