"""Executor faults: crashed, raising, hung and silent ranks; bad input; kill and resume.

Each fault must fail only its own trial (journaled "fail", then a retry from the last
checkpoint), leave the rest of the search untouched, and leave no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_execute import (Budget, check_history, child_pids, run_search_stopped_when, run_toy, run_workers, toy_raw,
                          wait_for)

from nasalloc.cli import main as cli_main
from nasalloc.execute.run import settings_from
from nasalloc.execute.search import run_search
from nasalloc.execute.trainers.toy import curve
from nasalloc.sim.trace import TraceEvent, read_trace


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_crashed_and_raising_ranks_fail_their_trial_and_retry(tmp_path: Path) -> None:
    faults = [
        {"trial": 0, "epoch": 2, "mode": "exit"},  # the rank process dies
        {"trial": 1, "epoch": 2, "mode": "raise"},  # train() raises
    ]
    summary, events = run_toy(tmp_path, {"n_trials": 3, "max_epochs": 3, "max_retries": 1}, faults=faults)
    check_history(events)
    fails = {ev.trial: ev for ev in events if ev.event == "fail"}
    assert set(fails) == {0, 1}
    assert "died (exit status 17)" in fails[0].info and "RuntimeError: injected" in fails[1].info
    assert all(ev.resume_epoch == 1 for ev in fails.values())
    retry = {ev.trial: ev for ev in events if ev.event == "resume"}
    assert retry[0].epoch == 1 and retry[1].epoch == 1  # from the last checkpoint
    assert summary["completed"] == 3 and summary["failed"] == 0  # retried to the end
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    results = [(ev.trial, ev.epoch, ev.metric) for ev in events if ev.event == "result"]
    assert len(results) == 9  # no epoch lost or doubled
    assert all(m == pytest.approx(curve(configs[t]["quality"], e)) for t, e, m in results)
    assert "Traceback" in (tmp_path / "logs" / "trial_0001.log").read_text()
    assert not child_pids()


def longest_silence(events: list[TraceEvent]) -> float:
    """Longest time a trial went without a report: from its start or resume to its first
    result, and between results (what `trial_timeout_s` bounds)."""
    since: dict[int, float] = {}
    longest = 0.0
    for ev in events:
        if ev.event in ("start", "resume"):
            since[ev.trial] = ev.time
        elif ev.event == "result":
            longest = max(longest, ev.time - since[ev.trial])
            since[ev.trial] = ev.time
    return longest


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_hung_rank_and_silent_training_fail_by_timeout_not_hang(tmp_path: Path) -> None:
    """2-rank groups: rank 1 hangs mid-run (trial 0); trial 1 never reports at all.

    The timeout must catch the hung rank but never a healthy 2-rank gloo group, however busy
    the machine: it is set from this machine's speed now, 5x the longest silence of the
    same search without faults (at least 2.5 s), so the outcome does not depend on load.
    """
    sched = {"n_trials": 2, "max_epochs": 2, "max_retries": 1}
    _, healthy = run_toy(tmp_path / "healthy", sched, gpus_per_trial=2)
    timeout = round(max(2.5, 5 * longest_silence(healthy)), 1)
    faults = [
        {"trial": 0, "epoch": 2, "mode": "hang", "rank": 1},
        {"trial": 1, "epoch": 1, "mode": "silent", "once": False},
    ]
    summary, events = run_toy(tmp_path / "faults", sched, faults=faults, gpus_per_trial=2, trial_timeout_s=timeout)
    check_history(events)
    fails = [ev for ev in events if ev.event == "fail"]
    assert [ev.trial for ev in fails] == [0, 1, 1]  # trial 1: first try and its one retry, then dropped
    assert all(f"no report for {timeout:g} s" in ev.info for ev in fails)
    assert fails[0].resume_epoch == 1
    assert summary["completed"] == 1 and summary["failed"] == 1
    assert not child_pids()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gpus_per_trial=4", "gpus_per_trial=4: not allowed: more devices per trial than the 2 of this machine"),
        ("train.entrypoint=no_such_module:train", "train.entrypoint='no_such_module:train': cannot load it"),
        ("devices=cuda", "devices=cuda: no CUDA GPU"),
        ("gpus_per_trial=0.3", "1/m"),
        ("trial_timeout_s=-1", "trial_timeout_s=-1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli_main(["run", override, f"out_dir={tmp_path / 'never'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()


def _results(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if '"result"' in line)
    except OSError:
        return 0


def _marker(run_dir: Path, trial: int, fault: int = 0) -> Path:
    """The file the toy trainer writes right before fault number `fault` fires in `trial`."""
    return run_dir / "checkpoints" / f"trial_{trial:04d}" / f"faulted_{fault}_rank0"


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_sigkill_mid_search_then_resume_continues_one_history(tmp_path: Path) -> None:
    budget = Budget(240)  # every wait below shares it
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "scheduler=asha", "scheduler.n_trials=8",
            "scheduler.max_epochs=9", "train.params.epoch_s=0.1", "progress=plain", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _results(out / "trace.jsonl") >= 10, budget, "10 results")
        ours = run_workers(out)
        assert ours, "no warm workers of this run seen"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=budget.left())
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not run_workers(out), budget, "the workers of the SIGKILLed executor to exit")
    old = read_trace(out / "trace.jsonl", tolerate_torn_tail=True)
    old_results = {(ev.trial, ev.epoch): ev.metric for ev in old if ev.event == "result"}
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=budget.left())
    assert done.returncode == 0, done.stderr[-2000:]
    assert not run_workers(out)
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    assert events[: len(old)] == old  # the old history is kept as it was
    new_results = {(ev.trial, ev.epoch): ev.metric for ev in events if ev.event == "result"}
    assert all(new_results[k] == v for k, v in old_results.items())
    assert all(ev.time >= old[-1].time for ev in events[len(old):])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 8 and summary["resumed"]
    assert summary["completed"] + summary["stopped"] == 8
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    assert all(m == pytest.approx(curve(configs[t]["quality"], e)) for (t, e), m in new_results.items())


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_sigkill_while_a_checkpoint_is_written_then_resume_uses_the_one_before(tmp_path: Path) -> None:
    """The executor dies while trial 0 writes its epoch-6 checkpoint (checkpoint_every=3): the
    journal has epoch 6, the disk epoch 3 and a torn temporary file. The resume restarts
    trial 0 from epoch 3, retrains 4-6, and its metrics stay on the curve (the toy's metric
    is carried in the checkpoint, so a wrong or missing one shows)."""
    budget = Budget(240)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "scheduler=random", "scheduler.n_trials=3",
            "scheduler.max_epochs=9", "checkpoint_every=3", "trial_timeout_s=600",
            "train.params.faults=[{trial: 0, epoch: 6, mode: hang_in_save}]", "progress=none", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(_marker(out, 0).exists, budget, "trial 0 to start writing its epoch-6 checkpoint")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=budget.left())
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not run_workers(out), budget, "the workers of the SIGKILLed executor to exit")
    folder = out / "checkpoints" / "trial_0000"
    assert sorted(p.name for p in folder.glob("epoch_*")) == ["epoch_00003.pt"]
    # the hang came before torch.save's first byte; leave what a kill during the write leaves
    (folder / "epoch_00006.pt.tmp4242").write_bytes(b"PK\x03\x04 torn")
    old = read_trace(out / "trace.jsonl", tolerate_torn_tail=True)
    assert any(ev.event == "result" and ev.trial == 0 and ev.epoch == 6 for ev in old)
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=none"],
                          capture_output=True, text=True, timeout=budget.left())
    assert done.returncode == 0, done.stderr[-2000:]
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    new = events[len(old):]
    assert [(ev.event, ev.epoch, ev.info) for ev in new if ev.trial == 0 and ev.event in ("pause", "resume")] == [
        ("pause", 6, "interrupted"), ("resume", 3, "interrupted")]
    assert [ev.epoch for ev in new if ev.trial == 0 and ev.event == "result"] == [4, 5, 6, 7, 8, 9]
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    assert all(ev.metric == pytest.approx(curve(configs[ev.trial]["quality"], ev.epoch)) for ev in events
               if ev.event == "result")
    assert json.loads((out / "summary.json").read_text())["completed"] == 3


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_cli_run_sigterm_then_resume_writes_every_output(tmp_path: Path) -> None:
    """`nasalloc run` (toy, random search): SIGTERM ends it resumably; resume finishes it.

    Trial 0 hangs in its second epoch (once), so the SIGTERM, sent when that happens, always
    lands mid-trial; the hang is not repeated when the resume retrains the epoch.
    """
    budget = Budget(240)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "scheduler=random", "scheduler.n_trials=4",
            "scheduler.max_epochs=3", "trial_timeout_s=600", "train.params.faults=[{trial: 0, epoch: 2, mode: hang}]",
            "progress=plain", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(_marker(out, 0).exists, budget, "trial 0 to hang in epoch 2")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=budget.left())
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and f"resume={out}" in err, err[-2000:]
    assert not run_workers(out)  # the executor stopped its own workers before exiting
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    assert {ev.info for ev in events if ev.event == "pause"} <= {"interrupted", None}
    assert ("pause", 0, 1, "interrupted") in [(ev.event, ev.trial, ev.epoch, ev.info) for ev in events]
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=budget.left())
    assert done.returncode == 0, done.stderr[-2000:]
    assert not run_workers(out)
    assert str(out) in done.stdout and "best_metric" in done.stdout
    for name in ("trace.jsonl", "summary.json", "run_config.yaml", "logs/trial_0000.log"):
        assert (out / name).is_file(), name
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheduler"] == "random" and summary["workload"] == "toy" and summary["trials"] == 4
    assert summary["completed"] == 4 and summary["resumed"]
    # the random search trains every trial to epoch 3: the best is the best curve there
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    assert summary["best_metric"] == pytest.approx(max(curve(c["quality"], 3) for c in configs.values()))
    assert "rank 0/1" in (out / "logs" / "trial_0000.log").read_text()


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_hyperband_per_rung_with_failures_lost_checkpoints_and_an_interruption_then_resumed(tmp_path: Path) -> None:
    """HyperBand at gpus_per_trial=[1, 2] (rung 1 on one device, then two; brackets of 9
    trials from 1 epoch and 3 from 3 epochs), with every fault the journal must carry
    through a resume:

    - every trial's first checkpoint (epoch 1) is lost: its rank 0 dies while building it.
      A trial of the first bracket pauses there and so ended as decided: the journal has its
      "pause" but no file, and promoted, it must restart from scratch. A trial of the second
      bracket moves to two devices after epoch 1 (a checkpoint too): it fails ("fail",
      resume_epoch=0) and is retried from scratch;
    - trial 2 raises in its first epoch (a failure before any report);
    - trial 8 hangs in its first epoch; the run is stopped then (SIGTERM to this process,
      which the executor's loop handles as Ctrl-C) and resumed, replaying the fail events.
    Every metric stays on the toy curve, which holds only when each job started from the
    checkpoint it was given (the toy carries its metric in the checkpoint).
    """
    sched = {"name": "hyperband", "n_trials": 12, "max_epochs": 9, "min_epochs": 1, "eta": 3, "max_retries": 2}
    faults = [{"trial": -1, "epoch": 1, "mode": "exit_in_save"}, {"trial": 2, "epoch": 1, "mode": "raise"},
              {"trial": 8, "epoch": 1, "mode": "hang"}]
    raw = toy_raw(sched, gpus_per_trial=[1, 2], faults=faults, trial_timeout_s=600)
    first = run_search_stopped_when(raw, tmp_path, _marker(tmp_path, 8, fault=2), Budget(240))  # trial 8 hangs
    assert first["interrupted"]
    before = read_trace(tmp_path / "trace.jsonl")
    assert ("pause", 8, 0, "interrupted") in [(ev.event, ev.trial, ev.epoch, ev.info) for ev in before]
    assert any(ev.event == "fail" for ev in before)  # the resume replays failures
    summary = run_search(settings_from({**raw, "resume": str(tmp_path)}, resume=tmp_path), tmp_path)
    events = read_trace(tmp_path / "trace.jsonl")
    assert events[: len(before)] == before
    check_history(events)
    assert summary["completed"] >= 1 and summary["failed"] == 0 and summary["trials"] == 12
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    off = [(ev.trial, ev.epoch) for ev in events
           if ev.event == "result" and ev.metric != pytest.approx(curve(configs[ev.trial]["quality"], ev.epoch))]
    assert not off, f"metrics off the curve (a job did not start from its checkpoint): {off}"
    # the trials paused at rung 1 lost that checkpoint: each promoted one restarted from scratch
    promoted = []
    for i, ev in enumerate(events):
        if ev.event == "pause" and ev.epoch == 1 and ev.info is None:
            later = next(e for e in events[i + 1:] if e.trial == ev.trial)
            if later.event == "resume":
                promoted.append((later.epoch, len(later.devices)))
    assert promoted and all(p == (0, 2) for p in promoted), promoted
    # the second bracket's trials (9-11) failed saving epoch 1 and were retried from scratch
    fails = [ev for ev in events if ev.event == "fail"]
    died = {ev.trial for ev in fails if ev.resume_epoch == 0 and "died (exit status 17)" in ev.info}
    assert died == {9, 10, 11}
    assert all(any(e.event == "resume" and e.trial == t and e.epoch == 0 for e in events) for t in died)
    assert [ev.epoch for ev in fails if ev.trial == 2 and "RuntimeError: injected" in ev.info] == [0]
    assert any(ev.event == "resume" and ev.trial == 8 and ev.info == "interrupted" for ev in events[len(before):])
    assert not run_workers(tmp_path)


def test_socket_folders_of_dead_executors_are_removed_at_the_next_start(tmp_path: Path) -> None:
    """A SIGKILLed executor leaves its worker-socket folder behind; the next one removes the
    folders whose owner is gone and keeps those of live executors."""
    from nasalloc.execute.local_spawner import remove_stale_socket_dirs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"nasalloc-{dead.pid}-abc"
    alive = tmp_path / f"nasalloc-{os.getpid()}-def"
    other = tmp_path / "nasalloc-nopid"
    for folder in (stale, alive, other):
        folder.mkdir()
        (folder / "w.sock").touch()
    assert remove_stale_socket_dirs(tmp_path) == [stale]
    assert not stale.exists() and alive.exists() and other.exists()
