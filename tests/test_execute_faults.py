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
import time
from pathlib import Path

import pytest
from test_execute import check_history, child_pids, run_toy, worker_pids

from nasalloc.cli import main as cli_main
from nasalloc.execute.trainers.toy import curve
from nasalloc.sim.trace import read_trace


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
    assert all("resume_epoch=1" in ev.info for ev in fails.values())
    retry = {ev.trial: ev for ev in events if ev.event == "resume"}
    assert retry[0].epoch == 1 and retry[1].epoch == 1  # from the last checkpoint
    assert summary["completed"] == 3 and summary["failed"] == 0  # retried to the end
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    results = [(ev.trial, ev.epoch, ev.metric) for ev in events if ev.event == "result"]
    assert len(results) == 9  # no epoch lost or doubled
    assert all(m == pytest.approx(curve(configs[t]["quality"], e)) for t, e, m in results)
    assert "Traceback" in (tmp_path / "logs" / "trial_0001.log").read_text()
    assert not child_pids()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_hung_rank_and_silent_training_fail_by_timeout_not_hang(tmp_path: Path) -> None:
    """2-rank groups: rank 1 hangs mid-run (trial 0); trial 1 never reports at all."""
    faults = [
        {"trial": 0, "epoch": 2, "mode": "hang", "rank": 1},
        {"trial": 1, "epoch": 1, "mode": "silent", "once": False},
    ]
    summary, events = run_toy(tmp_path, {"n_trials": 2, "max_epochs": 2, "max_retries": 1}, faults=faults,
                              gpus_per_trial=2, trial_timeout_s=2.5)
    check_history(events)
    fails = [ev for ev in events if ev.event == "fail"]
    assert [ev.trial for ev in fails] == [0, 1, 1]  # trial 1: first try and its one retry, then dropped
    assert all("no report for 2.5 s" in ev.info for ev in fails)
    assert "resume_epoch=1" in fails[0].info
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


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _results(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text().splitlines() if '"result"' in line)
    except OSError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_mid_search_then_resume_continues_one_history(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "scheduler=asha", "scheduler.n_trials=8",
            "scheduler.max_epochs=9", "train.params.epoch_s=0.1", "progress=plain", f"out_dir={out}"]
    before = set(worker_pids())
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _results(out / "trace.jsonl") >= 10, 90), "run made no progress"
        ours = set(worker_pids()) - before
        assert ours, "no warm workers seen"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _wait_for(lambda: not (set(worker_pids()) & ours), 10), "workers outlived a SIGKILLed executor"
    old = read_trace(out / "trace.jsonl", tolerate_torn_tail=True)
    old_results = {(ev.trial, ev.epoch): ev.metric for ev in old if ev.event == "result"}
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-2000:]
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
@pytest.mark.timeout(150)
def test_cli_run_sigterm_then_resume_writes_every_output(tmp_path: Path) -> None:
    """`nasalloc run` (digits, ASHA, small budget): SIGTERM ends it resumably; resume finishes it."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "scheduler.n_trials=4", "scheduler.max_epochs=4",
            "progress=plain", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _results(out / "trace.jsonl") >= 2, 90), "run made no progress"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and f"resume={out}" in err, err[-2000:]
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    assert {ev.info for ev in events if ev.event == "pause"} <= {"interrupted", None}
    assert any(ev.info == "interrupted" for ev in events)
    assert not [p for p in worker_pids() if _parent_is(p, proc.pid)]
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(out) in done.stdout and "best_metric" in done.stdout
    for name in ("trace.jsonl", "summary.json", "run_config.yaml", "logs/trial_0000.log"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scheduler"] == "asha" and summary["workload"] == "digits" and summary["trials"] == 4
    assert summary["best_metric"] > 0.5 and summary["completed"] + summary["stopped"] == 4
    check_history(read_trace(out / "trace.jsonl"))
    assert "rank 0/1" in (out / "logs" / "trial_0000.log").read_text()


def _parent_is(pid: int, parent: int) -> bool:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == parent
    except OSError:
        return False
