"""Trials sharing a device while others idle: the statistic in summary.json, and the move off
a shared device (`sim/unshare.py`, a rule of the dispatch core) — when it must happen, when
it must not, with makespans worked out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from nasalloc.sim.config import upgrade_saved
from nasalloc.sim.engine import simulate
from nasalloc.sim.trace import TraceEvent, holds, shared_while_idle, summarize
from test_sim_support import check_invariants, make_profile, make_spec

# ----- the statistic ------------------------------------------------------------------------


def _ev(t: float, event: str, trial: int, device: int) -> TraceEvent:
    return TraceEvent(time=t, event=event, trial=trial, epoch=0, devices=(device,))


def test_shared_while_idle_counts_time_and_the_idle_devices_the_extra_trials_could_use():
    # 3 devices. Device 0 holds trials 0, 1, 4 over [0, 20) (two beyond the first); device 1
    # holds trial 2 over [0, 10) and trial 3 from the same instant 10 to 15 (a release and a
    # hold at one instant leave it busy); device 2 never holds a trial.
    events = [_ev(0, "start", 0, 0), _ev(0, "start", 1, 0), _ev(0, "start", 4, 0), _ev(0, "start", 2, 1),
              _ev(10, "complete", 2, 1), _ev(10, "start", 3, 1), _ev(15, "complete", 3, 1),
              _ev(20, "complete", 0, 0), _ev(20, "complete", 4, 0), _ev(30, "complete", 1, 0)]
    # [0, 15): 1 idle device, 2 extra trials -> min 1; [15, 20): 2 idle, 2 extra -> 2; from 20 on,
    # trial 1 is alone on device 0: nothing shared
    wall, device_s = shared_while_idle(holds(events), 3)
    assert wall == 20.0
    assert device_s == 15 * 1 + 5 * 2
    s = summarize(events, mode="max", n_devices=3, scheduler="x", gpus_per_trial=0.25)
    assert (s.shared_while_idle_s, s.shared_while_idle_device_s) == (20.0, 25.0)
    # on 2 devices nothing idles before 15: [15, 20) only
    assert shared_while_idle(holds(events), 2) == (5.0, 5.0)


def test_trials_one_after_another_on_a_device_are_not_sharing():
    events = [_ev(0, "start", 0, 0), _ev(5, "pause", 0, 0), _ev(5, "resume", 1, 0), _ev(9, "complete", 1, 0)]
    s = summarize(events, mode="max", n_devices=4, scheduler="x", gpus_per_trial=1)
    assert (s.shared_while_idle_s, s.shared_while_idle_device_s) == (0.0, 0.0)


# ----- the move -----------------------------------------------------------------------------
# 2 devices at k = 1/2, random search (no early stopping), 3 trials of 4 epochs; epoch alone
# 40 s (400 samples / batch 10 x 1 s), sharing(2) = 1.5, no start-up, decision or save cost;
# checkpoint restore `restore` s. Spread placement: trial 0 -> device 0, trial 1 -> device 1,
# trial 2 -> device 0 (both devices have one share free; the lowest id).
# - Trial 1 trains alone: 4 x 40 = 160 s, then device 1 idles (every trial has started).
# - Trials 0 and 2 share device 0: 60 s per epoch; both report epoch 3 at 180 s.
# - The first of them to report epoch 3 may move: its remaining epochs 1 (40 s alone), its
#   partner's 1 (it has reported 2, so its next boundary is 3): window 40 s, gain
#   40 x (1.5 - 1) = 20 s; cost = restore. So it moves iff restore < 20 s, then trains epoch
#   4 alone on device 1 after the restore: 180 + restore + 40; its partner is alone on device 0
#   from 180 (the mover released it at once: no save, no decision time): 180 + 40 = 220.
# - No move: both train epoch 4 together, 180 + 60 = 240.
# Shared while idle: from 160 (device 1 empty) until the move at 180, or until 240 without.


def _spec(restore: float, unshare: bool):
    profile = make_profile(gpn=2, startup=0.0, per_doubling=0.0, restore=restore, sharing={1: 1.0, 2: 1.5})
    spec = make_spec(k=0.5, gpus=2, gpn=2, scheduler={"name": "random", "n_trials": 3, "max_epochs": 4},
                     profile=profile)
    return dataclasses.replace(spec, unshare=unshare)


@pytest.mark.parametrize("restore, moves, makespan, shared_s", [
    (19.0, True, 180 + 19 + 40, 20.0),   # gain 20 > cost 19
    (21.0, False, 240.0, 80.0),          # gain 20 < cost 21
])
def test_a_sharing_trial_moves_to_the_idle_device_only_when_it_pays(restore, moves, makespan, shared_s):
    result = simulate(_spec(restore, unshare=True))
    pauses = [e for e in result.events if e.event == "pause"]
    resumes = [e for e in result.events if e.event == "resume"]
    if moves:
        assert len(pauses) == 1 and pauses[0].info == "reallocate" and pauses[0].time == pytest.approx(180.0)
        assert pauses[0].trial in (0, 2) and pauses[0].devices == (0,) and pauses[0].epoch == 3
        assert len(resumes) == 1 and resumes[0].trial == pauses[0].trial and resumes[0].devices == (1,)
        assert resumes[0].time == pytest.approx(180.0) and resumes[0].epoch == 3
        partner = 2 if pauses[0].trial == 0 else 0
        done = {e.trial: e.time for e in result.events if e.event == "complete"}
        assert done[partner] == pytest.approx(220.0) and done[pauses[0].trial] == pytest.approx(makespan)
    else:
        assert not pauses and not resumes
    s = result.summary
    assert s.makespan_s == pytest.approx(makespan)
    assert s.shared_while_idle_s == pytest.approx(shared_s) and s.shared_while_idle_device_s == pytest.approx(shared_s)
    assert s.epochs_trained == 12
    check_invariants(result)


def test_unshare_false_keeps_sharing_trials_where_they_are():
    result = simulate(_spec(0.0, unshare=False))  # the move would pay most here
    assert not any(e.event in ("pause", "resume") for e in result.events)
    assert result.summary.makespan_s == pytest.approx(240.0)
    assert result.summary.shared_while_idle_s == pytest.approx(80.0)


def test_a_trial_alone_on_its_device_never_moves():
    # 5 trials: trials 0-3 share both devices over [0, 120) (2 epochs x 60 s); trial 4 then starts
    # alone on device 0 while device 1 idles: no partner, nothing to move; 120 + 2 x 40
    profile = make_profile(gpn=2, startup=0.0, per_doubling=0.0, sharing={1: 1.0, 2: 1.5})
    spec = dataclasses.replace(make_spec(k=0.5, gpus=2, gpn=2, scheduler={"name": "random", "n_trials": 5, "max_epochs": 2},
                                         profile=profile), unshare=True)
    result = simulate(spec)
    assert not any(e.event == "pause" for e in result.events)
    assert result.summary.makespan_s == pytest.approx(200.0)
    assert result.summary.shared_while_idle_s == 0.0


# ----- the rule's arithmetic, on a pool set up by hand ----------------------------------------
# ASHA-like rungs at epochs 1, 3, 9 (eta 3: 1/3 survive a rung); epoch alone 40 s, sharing(2)
# 1.5; move cost = save 2 + restore 3 + start-up at k = 1/2 5 (no per-doubling term below 1).
# The mover reports epoch 1 of a job that runs to 9: expected epochs left 2 (to the rung at 3)
# + 6 / 3 = 4, 160 s alone.


def _policy_setup(partner_last: int, partner_ending: bool = False, target_holds: int = 0):
    from types import SimpleNamespace

    from nasalloc.sim.cluster import ClusterSpec, DevicePool
    from nasalloc.sim.unshare import UnsharePolicy

    profile = make_profile(gpn=2, save=2.0, restore=3.0, sharing={1: 1.0, 2: 1.5})
    pool = DevicePool(ClusterSpec("t", 2, 2), (0.5,))
    for d in (0, 0, *([1] * target_holds)):
        pool.occupy((d,), 0.5)
    seg = SimpleNamespace(trial=0, config={}, until_epoch=9, k=0.5, devices=(0,), last_epoch=1, ending=False)
    partner = SimpleNamespace(trial=1, config={}, until_epoch=9, k=0.5, devices=(0,), last_epoch=partner_last,
                              ending=partner_ending)
    core = SimpleNamespace(pool=pool, running={0: seg, 1: partner})
    return UnsharePolicy(profile, [1, 3, 9]), core, seg


@pytest.mark.parametrize("partner_last, ending, gain", [
    (6, False, 80 * 0.5),   # partner's next boundary 7: 2 epochs left (80 s): the window is 80 s
    (0, False, 160 * 0.5),  # partner as far from the end as the mover: the mover's 160 s
    (6, True, 0.0),         # partner saving its last checkpoint: it leaves anyway
])
def test_gain_is_the_shared_window_times_the_slowdown_saved_and_cost_the_restart(partner_last, ending, gain):
    policy, core, seg = _policy_setup(partner_last, ending)
    assert policy.gain_and_cost(core, seg, 1, 1) == pytest.approx((gain, 2 + 3 + 5))
    assert policy.pays(core, seg, 1, 1) is (gain > 10)


def test_the_cost_is_save_and_the_resume_where_the_profile_measured_a_resume():
    """resume_s 4 (+ 1 per doubling, none below k = 1) in place of start-up 5 + restore 3."""
    import dataclasses

    from nasalloc.sim.unshare import UnsharePolicy

    _, core, seg = _policy_setup(0)
    profile = make_profile(gpn=2, save=2.0, restore=3.0, sharing={1: 1.0, 2: 1.5})
    measured = dataclasses.replace(profile, overheads=dataclasses.replace(
        profile.overheads, resume_s=4.0, resume_per_doubling_s=1.0))
    assert UnsharePolicy(measured, [1, 3, 9]).gain_and_cost(core, seg, 1, 1) == pytest.approx((160 * 0.5, 2 + 4))


def test_a_device_with_as_many_trials_is_no_better():
    policy, core, seg = _policy_setup(0, target_holds=1)  # device 1 holds one other trial: 2 there too
    assert policy.gain_and_cost(core, seg, 1, 1)[0] == 0.0 and not policy.pays(core, seg, 1, 1)


def test_a_saved_run_config_from_before_the_setting_ran_without_moves():
    assert upgrade_saved("run", {"seed": 1})["unshare"] is False
    assert upgrade_saved("run", {"unshare": True})["unshare"] is True


def test_the_report_says_how_long_trials_shared_while_devices_idled():
    from nasalloc.sim.simulate import report

    kept = report(simulate(_spec(0.0, unshare=False)), None, 0.1)
    line = next(ln for ln in kept.splitlines() if ln.strip().startswith("shared devices"))
    assert "for 80.0 s" in line and "(0.0 idle device-hours" in line and "unshare=true" in line, line
    moved = report(simulate(_spec(0.0, unshare=True)), None, 0.1)  # shared [160, 180) only
    assert "for 20.0 s" in moved and "unshare=true" not in moved
    assert "shared devices" not in report(simulate(make_spec(k=1)), None, 0.1)


def test_run_prints_the_shared_while_idle_time_only_when_trials_shared_a_device_while_one_idled(capsys, tmp_path) -> None:
    from nasalloc.execute.run import _print_summary

    base = {"scheduler": "asha", "gpus_per_trial": 1.0, "makespan_s": 10.0}
    _print_summary({**base, "shared_while_idle_s": 0.0}, tmp_path)
    assert "shared_while_idle_s" not in capsys.readouterr().out  # k >= 1: trials never share
    _print_summary({**base, "gpus_per_trial": 0.5, "shared_while_idle_s": 3.0}, tmp_path)
    assert any(line.split()[:1] == ["shared_while_idle_s"] for line in capsys.readouterr().out.splitlines())
