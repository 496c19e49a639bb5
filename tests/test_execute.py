"""The executor (`nasalloc run`): allocation, journal replay, real searches on CPU slots.

The end-to-end tests start real warm workers (gloo on loopback) and run the toy workload
(a known curve, 0.02 s epochs) so they check behaviour, not speed.
"""

from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nasalloc.execute.devices import Slot, SlotMap
from nasalloc.execute.journal import Journal, replay
from nasalloc.execute.run import settings_from, shipped_backend
from nasalloc.execute.search import run_search
from nasalloc.execute.trainers.toy import curve
from nasalloc.sim.cluster import DevicePool, machine, parse_allocation
from nasalloc.sim.config import shipped
from nasalloc.sim.dispatch import WAITED
from nasalloc.sim.errors import UserError
from nasalloc.sim.schedulers import Decision, Job, make_scheduler, scheduler_config
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.trace import read_trace, write_trace
from test_sim_support import scheduler_node

TOY = "nasalloc.execute.trainers.toy:train"


# ----- helpers shared by the test_execute*.py files ---------------------------------------
def toy_raw(scheduler: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    params = {"epoch_s": 0.02, "steps_per_epoch": 2, "faults": top.pop("faults", [])}
    raw = {
        "seed": 0,
        "scheduler": scheduler_node({"name": "random", "n_trials": 4, "max_epochs": 3, **(scheduler or {})}),
        "train": {"name": "toy", "entrypoint": TOY, "space": {"quality": {"type": "float", "low": 0.1, "high": 1.0}},
                  "params": params},
        "devices": {**shipped("devices", "cpu"), "count": 2},
        "gpus_per_trial": 1, "trial_timeout_s": 30, "checkpoint_every": 1, "progress": "none",
        "target": None, "profile": None, "resume": None, "unshare": True, **shipped_backend(),
    }
    raw.update(top)
    return raw


def run_toy(tmp_path: Path, scheduler: dict[str, Any] | None = None, **top: Any) -> tuple[dict[str, Any], list]:
    summary = run_search(settings_from(toy_raw(scheduler, **top)), tmp_path)
    return summary, read_trace(tmp_path / "trace.jsonl")


def child_pids() -> list[int]:
    """Live (non-zombie) direct children of this process, from /proc."""
    me, out = os.getpid(), []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me and fields[0] != "Z":
            out.append(int(d.name))
    return out


def run_workers(run_dir: Path) -> set[int]:
    """Live worker processes of the run in `run_dir`: a worker's stdout is a file in the run's
    logs/ folder (its own log in logs/workers, or the log of the trial it runs), which names
    the run whoever its parent is now (a worker orphaned by a killed executor is
    re-parented) and whatever else runs on the machine."""
    folder = str((Path(run_dir) / "logs").resolve()) + os.sep
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.readlink(d / "fd" / "1").startswith(folder):
                    out.add(int(d.name))
            except OSError:
                continue
    return out


class Budget:
    """One test's wall-clock allowance, shared by all its waits so that together they end
    before the test's own timeout marker (which kills without saying what was awaited)."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())


def wait_for(predicate: Any, budget: Budget, what: str) -> None:
    """Poll `predicate` until true; AssertionError naming `what` when the budget runs out."""
    while not predicate():
        if budget.left() <= 0.1:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def run_search_stopped_when(raw: dict[str, Any], run_dir: Path, marker: Path, budget: Budget) -> dict[str, Any]:
    """run_search of `raw` in `run_dir`, stopped as Ctrl-C would stop it once `marker` exists:
    a SIGTERM to this process, which the search's own handler turns into a resumable stop."""
    import signal
    import threading

    finished = threading.Event()

    def interrupt() -> None:
        while not finished.is_set() and budget.left() > 0.1:
            if marker.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    try:
        return run_search(settings_from(raw), run_dir)
    finally:
        finished.set()
        watcher.join()


def check_history(events: list) -> None:
    """Per trial, holds and releases alternate; each hold reports epochs one after another
    from the checkpoint it started from, so an epoch is recorded twice only when a restart
    from an older checkpoint trained it again."""
    holding: dict[int, bool] = {}
    last: dict[int, int] = {}  # trial -> newest epoch of its current hold
    for ev in events:
        if ev.event == "result":
            assert holding.get(ev.trial), f"result of trial {ev.trial} while it holds no devices"
            assert ev.epoch == last[ev.trial] + 1, f"trial {ev.trial}: epoch {ev.epoch} after {last[ev.trial]}"
            last[ev.trial] = ev.epoch
        elif ev.event in ("start", "resume"):
            assert not holding.get(ev.trial), f"trial {ev.trial} started twice"
            holding[ev.trial] = True
            last[ev.trial] = ev.epoch
        elif ev.event in ("pause", "complete", "fail") or (ev.event == "stop" and holding.get(ev.trial)):
            assert holding.get(ev.trial), f"{ev.event} of trial {ev.trial} that holds nothing"
            holding[ev.trial] = False
    assert not any(holding.values()), "trial still holding devices at the end"
    times = [ev.time for ev in events]
    assert times == sorted(times)


# ----- allocation and placement on one machine (no processes) ------------------------------
def test_allocation_parsing_and_errors() -> None:
    """The executor's devices are a one-node cluster: the simulator's syntax and rules."""
    assert parse_allocation(2, machine(4)).schedule == (Fraction(2),)
    assert parse_allocation(0.25, machine(2)).slots_per_device == 4
    a = parse_allocation([1, 2], machine(2))
    assert a.per_rung and a.k_at(0) == 1 and a.k_at(5) == 2 and a.label == [1, 2]
    assert parse_allocation("1/4", machine(2)).schedule == (Fraction(1, 4),)
    allowed = "allowed: 1/m for m trials per device"
    for bad, msg in [(4, "more devices"), (1.5, allowed), (0.3, allowed), (0, allowed), ("x", "not a number"), (3, allowed)]:
        with pytest.raises(UserError, match=msg):
            parse_allocation(bad, machine(2 if bad != 3 else 4))


def test_pool_never_oversubscribes_and_frees() -> None:
    pool = DevicePool(machine(2), (Fraction(1, 2),))
    a = pool.place(Fraction(1, 2))
    b = pool.place(Fraction(1, 2))
    assert a and b and a[0] != b[0]  # spread
    assert pool.place(Fraction(1)) is None  # both devices partly used
    c = pool.place(Fraction(1, 2))
    d = pool.place(Fraction(1, 2))
    assert c and d and pool.place(Fraction(1, 2)) is None
    for x in (a, b, c, d):
        pool.release(x, Fraction(1, 2))
    assert pool.place(Fraction(2)) == (0, 1)
    assert pool.busy_devices == 2


def test_pool_places_shares_by_the_simulators_rule() -> None:
    assert parse_allocation("1/2", machine(2)).spreads_fractions
    mixed = parse_allocation(["1/2", 1], machine(2))
    assert not mixed.spreads_fractions
    pack = DevicePool(machine(2), mixed.ks)  # [1/2, 1]: keep device 1 whole
    a, b = pack.place(Fraction(1, 2)), pack.place(Fraction(1, 2))
    assert a and b and a[0] == b[0] == 0
    assert pack.place(Fraction(1)) == (1,)


def test_slots_pick_a_free_worker_on_each_placed_device() -> None:
    slots = SlotMap([3, 5], slots_per_device=2)
    assert slots.all_slots() == [Slot(3, 0), Slot(3, 1), Slot(5, 0), Slot(5, 1)]
    first, second = slots.take([3]), slots.take([3])
    assert first == [Slot(3, 0)] and second == [Slot(3, 1)]
    with pytest.raises(RuntimeError, match="no free worker"):
        slots.take([3])
    slots.give_back(first)
    assert slots.take([3, 5]) == [Slot(3, 0), Slot(5, 0)]


def test_replay_reaches_the_same_state(tmp_path: Path) -> None:
    cfg = scheduler_config(scheduler_node({"name": "asha", "n_trials": 6, "max_epochs": 9, "min_epochs": 1, "eta": 3}))
    space = SearchSpace.from_config({"quality": {"type": "float", "low": 0.1, "high": 1.0}})
    a = make_scheduler(cfg, space, np.random.default_rng(1))
    # Drive `a` by hand (one job at a time), journaling as the loop does.
    path = tmp_path / "trace.jsonl"
    j = Journal(path)
    for _ in range(4):
        job = a.ask()
        assert isinstance(job, Job)
        j.write("start", job.trial, epoch=0, devices=[0], config=job.config)
        for e in range(job.start_epoch + 1, job.until_epoch + 1):
            d = a.on_result(job.trial, e, curve(job.config["quality"], e))
            j.write("result", job.trial, epoch=e, metric=curve(job.config["quality"], e), devices=[0])
            if d is not Decision.CONTINUE:
                j.write("stop" if d is Decision.STOP else "pause", job.trial, epoch=e, devices=[0])
                break
    j.close()
    b = make_scheduler(cfg, space, np.random.default_rng(1))
    rep = replay(read_trace(path), b, lambda tid, at: at)
    assert {t: (x.status, x.metrics) for t, x in a.trials.items()} == {t: (x.status, x.metrics) for t, x in b.trials.items()}
    assert a.ask() == b.ask() and not rep.restart
    # Another seed hands out the same trial ids with other configurations: refused, naming the first start.
    c = make_scheduler(cfg, space, np.random.default_rng(2))
    with pytest.raises(UserError, match=r"^resume: trace.jsonl event 1 \(start of trial 0\) has config"):
        replay(read_trace(path), c, lambda tid, at: at)


def _random_journal(path: Path, max_epochs: int, seed: int = 0) -> dict[str, Any]:
    """A journal of the random scheduler: trial 0 trains epochs 1..max_epochs and completes."""
    sched = make_scheduler(scheduler_config(scheduler_node({"name": "random", "n_trials": 1, "max_epochs": max_epochs})),
                           SearchSpace.from_config({"quality": {"type": "float", "low": 0.1, "high": 1.0}}),
                           np.random.default_rng(seed))
    job = sched.ask()
    assert isinstance(job, Job)
    j = Journal(path)
    j.write("start", 0, epoch=0, devices=[0], config=job.config)
    for e in range(1, max_epochs + 1):
        j.write("result", 0, epoch=e, metric=curve(job.config["quality"], e), devices=[0])
    j.write("complete", 0, epoch=max_epochs, devices=[0])
    j.close()
    return job.config


@pytest.mark.parametrize(("max_epochs", "message"), [
    (2, "event 3 (result of trial 0) was answered stop by the scheduler, but the journal goes on with result at epoch 3"),
    (4, "event 4 (result of trial 0) was answered continue by the scheduler, but the journal goes on with complete"),
])
def test_replay_refuses_a_journal_of_other_scheduler_settings(tmp_path: Path, max_epochs: int, message: str) -> None:
    """The journal trained trial 0 for 3 epochs (max_epochs=3). Same seed, so the same trial and
    configuration, but max_epochs=2 stops it at epoch 2 (the journal has a third), and
    max_epochs=4 continues it at epoch 3 (the journal completes it there)."""
    _random_journal(tmp_path / "trace.jsonl", max_epochs=3)
    other = make_scheduler(scheduler_config(scheduler_node({"name": "random", "n_trials": 1, "max_epochs": max_epochs})),
                           SearchSpace.from_config({"quality": {"type": "float", "low": 0.1, "high": 1.0}}),
                           np.random.default_rng(0))
    with pytest.raises(UserError, match="^resume: trace.jsonl " + message.replace("(", r"\(").replace(")", r"\)")):
        replay(read_trace(tmp_path / "trace.jsonl"), other, lambda tid, at: at)


@pytest.mark.parametrize(("edit", "message"), [
    ({"seed": 1}, "has config"),
    ({"scheduler": {"max_epochs": 4}}, "was answered continue by the scheduler"),
])
def test_resume_with_an_edited_run_config_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  edit: dict[str, Any], message: str) -> None:
    """The run folder's run_config.yaml no longer matches its journal (seed 0, max_epochs 3):
    `nasalloc run resume=` refuses before any worker starts, and appends nothing."""
    import yaml

    from nasalloc.cli import main as cli_main

    _random_journal(tmp_path / "trace.jsonl", max_epochs=3)
    raw = toy_raw({"n_trials": 1, "max_epochs": 3})
    raw.pop("resume")
    raw["seed"] = edit.get("seed", raw["seed"])
    raw["scheduler"].update(edit.get("scheduler", {}))
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    before = (tmp_path / "trace.jsonl").read_text()
    assert cli_main(["run", f"resume={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasalloc run: resume: trace.jsonl event") and message in err and err.count("\n") == 1, err
    assert (tmp_path / "trace.jsonl").read_text() == before and not (tmp_path / "logs").exists()


def test_a_saved_run_config_with_old_names_is_translated_on_resume(tmp_path: Path) -> None:
    """A run folder of an older version (devices.threads_per_slot, the built-in trainer under
    nasalloc.execute.workloads) stays resumable and validatable: old names are translated."""
    import yaml
    from omegaconf import OmegaConf

    from nasalloc.validate.validate import read_run
    from nasalloc.cli import COMMANDS, _compose
    from nasalloc.execute.run import RUN_CONFIG, load, read_run_config
    from nasalloc.sim.profile import load_profile

    saved = OmegaConf.to_container(_compose(COMMANDS["run"], ["devices.threads_per_rank=1"]), resolve=True)
    saved.pop("resume")  # as `nasalloc run` saves it
    saved["devices"]["threads_per_slot"] = saved["devices"].pop("threads_per_rank")
    saved["train"]["entrypoint"] = "nasalloc.execute.workloads.digits:train"
    (tmp_path / RUN_CONFIG).write_text(yaml.safe_dump(saved), encoding="utf-8")
    (tmp_path / "trace.jsonl").write_text('{"time": 0.0, "event": "start", "trial": 0, "epoch": 0, "metric": null, '
                                          '"devices": [0], "config": {"lr": 0.1, "width": 8, "momentum": 0.5}}\n'
                                          '{"time": 1.0, "event": "result", "trial": 0, "epoch": 1, "metric": 0.5, '
                                          '"devices": [0]}\n', encoding="utf-8")
    settings = load(OmegaConf.create({"resume": str(tmp_path)}))
    assert settings.devices.threads_per_rank == 1
    assert settings.train.entrypoint == "nasalloc.execute.trainers.digits:train"
    assert read_run(tmp_path, read_run_config(tmp_path), load_profile("digits_cpu")).spec.cluster.gpus == 2


# ----- real searches -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_rank_ddp_trials_and_sharing(tmp_path: Path) -> None:
    summary, events = run_toy(tmp_path / "k2", gpus_per_trial=2)
    check_history(events)
    assert all(ev.devices == (0, 1) for ev in events if ev.event in ("start", "result"))
    assert summary["completed"] == 4 and summary["epochs_trained"] == 12
    for ev in events:
        if ev.event == "result":
            q = next(e.config for e in events if e.event == "start" and e.trial == ev.trial)["quality"]
            assert ev.metric == pytest.approx(curve(q, ev.epoch))
    summary, events = run_toy(tmp_path / "half", gpus_per_trial=0.5, devices={**shipped("devices", "cpu"), "count": 1})
    check_history(events)
    assert summary["completed"] == 4
    assert max(sum(1 for e in events[: i + 1] if e.event == "start") - sum(1 for e in events[: i + 1] if e.event == "complete")
               for i in range(len(events))) == 2  # two trials shared the one device
    assert not child_pids()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "info"), [("hyperband", None), ("asha", "reallocate")])
def test_paused_trials_resume_from_checkpoints_on_more_devices(tmp_path: Path, name: str, info: str | None) -> None:
    """Per-rung [1, 2]: a trial past rung 1 resumes on 2 ranks from its checkpoint.

    HyperBand pauses trials at rungs itself; ASHA (stopping variant) says CONTINUE, so the
    executor checkpoints, releases and re-acquires on its own ("reallocate").
    """
    sched = {"name": name, "n_trials": 9, "max_epochs": 9, "min_epochs": 1, "eta": 3}
    summary, events = run_toy(tmp_path, sched, gpus_per_trial=[1, 2])
    check_history(events)
    resumes = [ev for ev in events if ev.event == "resume"]
    # a promotion that had to wait for 2 free devices records when it was asked (for replay)
    assert resumes and all(ev.epoch > 0 and (ev.info == info or (info is None and ev.info == WAITED and ev.asked_after is not None))
                           for ev in resumes)
    assert any(len(ev.devices) == 2 for ev in resumes)
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    for ev in events:
        if ev.event == "result":
            assert ev.metric == pytest.approx(curve(configs[ev.trial]["quality"], ev.epoch))
            assert len(ev.devices) == (1 if ev.epoch <= 1 else 2)
    epochs: dict[int, list[int]] = {}
    for ev in events:
        if ev.event == "result":
            epochs.setdefault(ev.trial, []).append(ev.epoch)
    assert all(v == list(range(1, len(v) + 1)) for v in epochs.values())  # no epoch twice, none skipped
    assert summary["completed"] >= 1 and summary["failed"] == 0
    assert not child_pids()


def test_replay_closes_trials_whose_release_event_was_lost(tmp_path: Path) -> None:
    """Killed after journaling a final result but before "complete": resume writes it."""
    cfg = scheduler_config(scheduler_node({"name": "random", "n_trials": 2, "max_epochs": 2}))
    space = SearchSpace.from_config({"quality": {"type": "float", "low": 0.1, "high": 1.0}})
    a = make_scheduler(cfg, space, np.random.default_rng(0))
    j = Journal(tmp_path / "trace.jsonl")
    first, second = a.ask(), a.ask()
    assert isinstance(first, Job) and isinstance(second, Job)
    j.write("start", 0, epoch=0, devices=[0], config=first.config)
    j.write("start", 1, epoch=0, devices=[1], config=second.config)
    for e in (1, 2):
        j.write("result", 0, epoch=e, metric=0.1 * e, devices=[0])
    j.write("result", 1, epoch=1, metric=0.3, devices=[1])
    j.write("pause", 0, epoch=2, devices=[0], info="interrupted")  # the old bug: STOP recorded as interrupted
    j.close()
    b = make_scheduler(cfg, space, np.random.default_rng(0))
    rep = replay(read_trace(tmp_path / "trace.jsonl"), b, lambda tid, at: 1)
    assert ("complete", 0, 2, (), None) in rep.fixups
    assert ("pause", 1, 1, (1,), "interrupted") in rep.fixups
    assert [(job.trial, job.start_epoch, job.until_epoch) for job in rep.restart] == [(1, 1, 2)]


# A journal as runs wrote it before `asked_after` and `resume_epoch` were fields (they were at
# the end of `info`). ASHA (promotion) on 2 devices with per-rung [1, 2]: trials 0-3 pause at
# rung 1 (metrics 0.5, 0.9, 0.7, 0.95); after trial 2's result (7 calls: 4 asks, 3 results)
# trial 1, the best of three, is promoted and waits for 2 devices; then trial 1 crashes in
# epoch 3 with its epoch-2 checkpoint, and the run is killed.
OLD_JOURNAL = """\
{"time": 0.0, "event": "start", "trial": 0, "epoch": 0, "metric": null, "devices": [0], "config": {"x": "a"}}
{"time": 0.0, "event": "start", "trial": 1, "epoch": 0, "metric": null, "devices": [1], "config": {"x": "a"}}
{"time": 1.0, "event": "result", "trial": 0, "epoch": 1, "metric": 0.5, "devices": [0]}
{"time": 1.0, "event": "pause", "trial": 0, "epoch": 1, "metric": null, "devices": [0]}
{"time": 1.0, "event": "start", "trial": 2, "epoch": 0, "metric": null, "devices": [0], "config": {"x": "a"}}
{"time": 1.0, "event": "result", "trial": 1, "epoch": 1, "metric": 0.9, "devices": [1]}
{"time": 1.0, "event": "pause", "trial": 1, "epoch": 1, "metric": null, "devices": [1]}
{"time": 1.0, "event": "start", "trial": 3, "epoch": 0, "metric": null, "devices": [1], "config": {"x": "a"}}
{"time": 2.0, "event": "result", "trial": 2, "epoch": 1, "metric": 0.7, "devices": [0]}
{"time": 2.0, "event": "pause", "trial": 2, "epoch": 1, "metric": null, "devices": [0]}
{"time": 2.0, "event": "result", "trial": 3, "epoch": 1, "metric": 0.95, "devices": [1]}
{"time": 2.0, "event": "pause", "trial": 3, "epoch": 1, "metric": null, "devices": [1]}
{"time": 2.0, "event": "resume", "trial": 1, "epoch": 1, "metric": null, "devices": [0, 1], "info": "waited for devices; asked_after=7"}
{"time": 3.0, "event": "result", "trial": 1, "epoch": 2, "metric": 0.9, "devices": [0, 1]}
{"time": 3.5, "event": "fail", "trial": 1, "epoch": 2, "metric": null, "devices": [0, 1], "info": "rank 0 died (exit status 17); resume_epoch=2"}
"""


def test_a_journal_written_before_the_typed_fields_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    path.write_text(OLD_JOURNAL, encoding="utf-8")
    events = read_trace(path)
    assert (events[12].asked_after, events[12].info) == (7, WAITED)
    assert (events[14].resume_epoch, events[14].info) == (2, "rank 0 died (exit status 17)")
    cfg = scheduler_config(scheduler_node({"name": "asha", "n_trials": 4, "max_epochs": 3, "min_epochs": 1, "eta": 3,
                                           "variant": "promotion", "max_retries": 1}))
    sched = make_scheduler(cfg, SearchSpace.from_config({"x": {"type": "categorical", "choices": ["a"]}}),
                           np.random.default_rng(0))
    # asked after 7 calls the promotion is trial 1's; asked at its resume event (after trial 3's
    # 0.95) it would be trial 3's, and the replay would refuse the journal
    rep = replay(events, sched, lambda tid, at_most: at_most)
    assert rep.calls == 5 + 5 + 1  # asks that gave a job, results, the failure
    assert (rep.restart, rep.fixups) == ([], [])
    assert sched.ask() == Job(1, {"x": "a"}, 2, 3, resume=True, attempt=1)  # the retry, from its epoch-2 checkpoint
    write_trace(path, events)  # what a resumed run does first: the old lines are rewritten in the new form
    rewritten = path.read_text(encoding="utf-8").splitlines()
    assert rewritten[12].endswith('"asked_after": 7, "info": "waited for devices"}')
    assert rewritten[14].endswith('"resume_epoch": 2, "info": "rank 0 died (exit status 17)"}')
    assert read_trace(path) == events


def test_replay_of_fail_events_retries_and_drops_as_the_run_did(tmp_path: Path) -> None:
    """Random search, 2 trials, 3 epochs, one retry. Trial 0 fails after epoch 1 (checkpoint
    1), is retried from there, fails again after epoch 2 and is dropped; trial 1 was running
    epoch 2 when the run died. The journal is written by driving a scheduler as the executor
    does; a fresh one fed the journal must reach the same state."""
    cfg = scheduler_config(scheduler_node({"name": "random", "n_trials": 2, "max_epochs": 3, "max_retries": 1}))
    space = SearchSpace.from_config({"quality": {"type": "float", "low": 0.1, "high": 1.0}})
    a = make_scheduler(cfg, space, np.random.default_rng(0))
    j = Journal(tmp_path / "trace.jsonl")
    first, second = a.ask(), a.ask()
    assert isinstance(first, Job) and isinstance(second, Job)
    j.write("start", 0, epoch=0, devices=[0], config=first.config)
    j.write("start", 1, epoch=0, devices=[1], config=second.config)
    assert a.on_result(0, 1, 0.3) is Decision.CONTINUE
    j.write("result", 0, epoch=1, metric=0.3, devices=[0])
    assert a.on_failure(0, 1)  # retried
    j.write("fail", 0, epoch=1, devices=[0], info="rank 0 died; resume_epoch=1")
    retry = a.ask()
    assert retry == Job(0, first.config, 1, 3, resume=True, attempt=1)
    j.write("resume", 0, epoch=1, devices=[0])
    a.on_result(1, 1, 0.2)
    j.write("result", 1, epoch=1, metric=0.2, devices=[1])
    a.on_result(0, 2, 0.4)
    j.write("result", 0, epoch=2, metric=0.4, devices=[0])
    assert not a.on_failure(0, 2)  # out of retries: dropped
    j.write("fail", 0, epoch=2, devices=[0], info="rank 0 died; resume_epoch=2")
    j.close()

    b = make_scheduler(cfg, space, np.random.default_rng(0))
    rep = replay(read_trace(tmp_path / "trace.jsonl"), b, lambda tid, at_most: at_most)
    assert b.trials[0].status.value == "dropped" and b.trials[0].failures == 2
    assert b.trials[0].metrics == {1: 0.3, 2: 0.4}
    assert {t: (x.status, x.failures, x.metrics) for t, x in a.trials.items()} == {
        t: (x.status, x.failures, x.metrics) for t, x in b.trials.items()}
    assert rep.calls == 3 + 3 + 2  # asks that gave a job, results, failures
    assert rep.fixups == [("pause", 1, 1, (1,), "interrupted")]  # the dropped trial holds nothing
    assert [(job.trial, job.start_epoch, job.until_epoch) for job in rep.restart] == [(1, 1, 3)]
