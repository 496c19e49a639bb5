"""Worker start-up: the fork server, slot counts the machine cannot hold, workers that do not
start, and Ctrl-C while they start.

The start-up speed itself is a benchmark (benchmarks/worker_startup.py), not a test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

import pytest
from test_execute import Budget, check_history, run_search_stopped_when, run_workers, toy_raw, wait_for

from nasalloc.cli import main as cli_main
from nasalloc.execute.backend import GroupSpec, StartInterrupted, WarmBackend, WorkerSetup, WorkersDidNotStart
from nasalloc.execute.devices import MAX_WORKERS_PER_CORE, Slot, check_capacity, usable_cores
from nasalloc.execute.local_spawner import ForkServerSpawner
from nasalloc.execute.ray_backend import RaySpawner
from nasalloc.execute.run import settings_from
from nasalloc.execute.search import run_search
from nasalloc.sim.errors import UserError
from nasalloc.sim.trace import read_trace

GIB = 2**30

# A training entrypoint whose workers block in their start-up (importing it) until the file
# named by $SLOWSTART_GO exists; each blocked worker first leaves a marker file. The executor
# imports it too (to check it), without blocking: it has no NASALLOC_WORKER_PRELOAD.
SLOWSTART = '''
import os, time
if "NASALLOC_WORKER_PRELOAD" in os.environ:  # a worker starting up
    open(os.environ["SLOWSTART_GO"] + f".waiting.{os.getpid()}", "w").close()
    while not os.path.exists(os.environ["SLOWSTART_GO"]):
        time.sleep(0.05)
from nasalloc.execute.trainers.toy import train
'''


def _alive(pid: int) -> bool:
    """pid is a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _slowstart(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The slow-starting entrypoint's module in tmp_path; -> (the go file, env with it importable)."""
    (tmp_path / "slowstart.py").write_text(SLOWSTART)
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "SLOWSTART_GO": str(go)}
    return go, env


# ----- slot counts the machine cannot hold -------------------------------------
def test_capacity_limits_by_hand() -> None:
    # CPU: 4 workers per core, so 2 cores hold 8 (2 slots at k=1/4), not 9
    check_capacity("devices.count=2", "cpu", 2, 4, cores=2, worker_bytes=GIB // 4, available_bytes=20 * GIB)
    with pytest.raises(UserError, match=r"^devices.count=9: 9 worker processes on 2 cores; at most 8 \(4 per core\)$"):
        check_capacity("devices.count=9", "cpu", 9, 1, cores=2, worker_bytes=GIB // 4, available_bytes=20 * GIB)
    with pytest.raises(UserError, match=r"12 worker processes \(3 devices x 4 trials sharing each\) on 2 cores"):
        check_capacity("devices.count=3", "cpu", 3, 4, cores=2, worker_bytes=GIB // 4, available_bytes=20 * GIB)
    # GPUs are not limited by cores, but by memory: 8 GPUs x 4 shares = 32 workers of 1 GiB in 20 GiB
    check_capacity("devices.count=8", "cuda", 8, 2, cores=2, worker_bytes=GIB, available_bytes=20 * GIB)  # 16 fit
    with pytest.raises(UserError, match=r"32 worker processes .* need about 32.0 GiB \(1.00 GiB each, as measured "
                                        r"here\), 20.0 GiB available; at most 20$"):
        check_capacity("devices.count=8", "cuda", 8, 4, cores=2, worker_bytes=GIB, available_bytes=20 * GIB)
    with pytest.raises(UserError, match="at most 5$"):  # memory binds before the cores: 5 x 4 GiB <= 21 GiB < 6 x 4
        check_capacity("devices.count=6", "cpu", 6, 1, cores=16, worker_bytes=4 * GIB, available_bytes=21 * GIB)


def test_an_impossible_slot_count_is_refused_before_any_worker_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_workers(*_: object, **__: object) -> None:
        raise AssertionError("a worker was started")

    monkeypatch.setattr(WarmBackend, "__init__", no_workers)
    code = cli_main(["run", "devices.count=999", f"out_dir={tmp_path / 'never'}"])
    err = capsys.readouterr().err
    limit = MAX_WORKERS_PER_CORE * usable_cores()
    assert code == 2
    assert err == f"nasalloc run: devices.count=999: 999 worker processes on {usable_cores()} cores; at most {limit} " \
                  f"({MAX_WORKERS_PER_CORE} per core)\n"
    assert not (tmp_path / "never").exists()


# ----- the fork server ------------------------------------------------------------------------
def test_the_fork_server_imports_touch_no_cuda() -> None:
    """What the fork server imports before forking calls no torch.cuda function (a fresh
    Python: this one has imported them already). A CUDA call there would initialise the
    driver, and no forked worker could use its GPU."""
    script = """
import torch
calls = []
for name in ("is_available", "device_count", "init", "_lazy_init", "current_device", "set_device",
             "get_device_properties", "synchronize", "mem_get_info"):
    def wrapped(*args, _name=name, _orig=getattr(torch.cuda, name), **kwargs):
        calls.append(_name)
        return _orig(*args, **kwargs)
    setattr(torch.cuda, name, wrapped)
from nasalloc.execute.forkserver import import_shared
import_shared()
print(calls, torch.cuda.is_initialized())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=250, check=True)
    assert out.stdout.strip() == "[] False"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_are_forked_in_their_own_sessions_and_end_with_a_killed_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each worker is a child of the fork server (not of the executor), leads its own session
    (its process group is killed as one), and exits by itself when its parent, the server,
    is SIGKILLed (the worker's parent watchdog). What libraries read once, when they load, is
    in the server's own environment: the workers' thread count, and no spinning OpenMP
    threads where two workers share the cores."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    backend = WarmBackend([Slot(0, 0), Slot(0, 1)], "cpu", ForkServerSpawner(log_dir=tmp_path / "workers"), threads_per_rank=1)
    try:
        backend.wait_ready(timeout=100)
        server = backend.spawner.server.proc.pid  # type: ignore[attr-defined]
        raw = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
        server_env = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        assert server_env["OMP_WAIT_POLICY"] == "PASSIVE" and server_env["OMP_NUM_THREADS"] == "1"
        assert "NASALLOC_WORKER_AUTHKEY" not in server_env  # each worker gets it in its own environment
        assert server_env["PYTORCH_NVML_BASED_CUDA_CHECK"] == "1"  # even is_available() there leaves CUDA alone
        pids = backend.worker_pids()
        for pid in pids:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ppid, pgid, session = int(stat[1]), int(stat[2]), int(stat[3])
            assert ppid == server and pgid == pid and session == pid
        os.kill(server, signal.SIGKILL)
        budget = Budget(60)
        wait_for(lambda: not any(_alive(p) for p in pids), budget, "the workers of a killed fork server to exit")
    finally:
        backend.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_that_do_not_start_in_time_end_in_one_line_and_leave_no_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    go, env = _slowstart(tmp_path)
    for key in ("PYTHONPATH", "SLOWSTART_GO"):
        monkeypatch.setenv(key, env[key])
    backend = WarmBackend([Slot(0, 0), Slot(1, 0)], "cpu", ForkServerSpawner(log_dir=tmp_path / "workers"),
                          preload=["slowstart:train"])
    try:
        budget = Budget(60)
        wait_for(lambda: len(list(tmp_path.glob("go.waiting.*"))) == 2, budget, "both workers to be starting")
        with pytest.raises(WorkersDidNotStart) as err:
            backend.wait_ready(timeout=1)
        assert str(err.value) == f"2 of 2 workers did not start within 1 s (is the machine overloaded?); " \
                                 f"their logs: {tmp_path / 'workers'}"
        pids = backend.worker_pids() + [backend.spawner.server.proc.pid]  # type: ignore[attr-defined]
    finally:
        backend.shutdown()
    assert not [p for p in pids if _alive(p)]
    assert not run_workers(tmp_path)  # the spare too: every process whose output goes to these logs


class _Silent:
    """A worker that stays alive and never connects."""

    log = None

    def poll(self) -> int | None:
        return None

    def wait(self, timeout: float) -> int | None:
        return None

    def stop(self) -> None:
        pass

    def wait_pid(self) -> int | None:
        return None


class _NeverStarts:
    """A spawner whose workers never connect (what a lost node, or a machine too busy to
    start them, looks like to the backend), with the hint of the spawner it stands in for."""

    logs = None

    def __init__(self, hint: str, folder: Path):
        self.not_started_hint = hint
        self.folder = folder

    def rank_threads(self, requested: int | None, slots: list[Slot]) -> int:
        return 1

    def open(self, slots: list[Slot], setup: WorkerSetup) -> Listener:
        return Listener(str(self.folder / "s.sock"), family="AF_UNIX", authkey=setup.authkey)

    def spawn(self, slot: Slot, token: str) -> _Silent:
        return _Silent()

    def node(self, slot: Slot) -> int:
        return 0

    def rendezvous(self, gid: int, first: Any, timeout: float) -> dict[str, Any]:
        return {"master_addr": "127.0.0.1", "master_port": 0, "store_path": str(self.folder / "store")}

    def end_rendezvous(self, gid: int) -> None:
        pass

    def gone(self) -> str | None:
        return None

    def close(self) -> None:
        pass


@pytest.mark.parametrize("spawner, lost_node", [(ForkServerSpawner, False), (RaySpawner, True)])
def test_a_worker_that_never_starts_is_explained_by_its_spawner(spawner: Any, lost_node: bool, tmp_path: Path) -> None:
    """On Ray, the likely cause of a worker that never starts is a lost node that none
    replaced; on this machine, an overloaded machine. Both the start-up wait and a trial
    waiting for a replacement worker say the cause of their own spawner."""
    backend = WarmBackend([Slot(0, 0)], "cpu", _NeverStarts(spawner.not_started_hint, tmp_path))
    try:
        with pytest.raises(WorkersDidNotStart) as at_start:
            backend.wait_ready(timeout=0.05)
        backend.worker_start_timeout_s = 0.0
        backend.start_group(GroupSpec(trial=0, config={}, entrypoint="m:f", slots=[Slot(0, 0)], start_epoch=0,
                                      until_epoch=1, checkpoint_dir=tmp_path))
        with pytest.raises(WorkersDidNotStart) as for_a_trial:
            backend.poll(0.01)
    finally:
        backend.shutdown()
    for err in (str(at_start.value), str(for_a_trial.value)):
        assert ("node lost" in err) == lost_node, err
        assert ("overloaded" in err) != lost_node, err
    assert str(at_start.value).startswith("1 of 1 workers did not start within 0 s (")
    assert str(for_a_trial.value).startswith("the worker for device 0 was not ready 0 s after it was started, and a "
                                             "trial waits for it (")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_run_whose_workers_do_not_start_ends_in_one_line_and_stays_resumable(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    message = "2 of 2 workers did not start within 120 s (is the machine overloaded?)"

    def never_ready(*_: object, **__: object) -> None:
        raise WorkersDidNotStart(message)

    monkeypatch.setattr(WarmBackend, "wait_ready", never_ready)
    out = tmp_path / "run"
    code = cli_main(["run", "train=toy", "progress=none", f"out_dir={out}"])
    assert code == 1
    assert capsys.readouterr().err == f"nasalloc run: {message}; continue with: nasalloc run resume={out}\n"
    assert (out / "trace.jsonl").read_text() == "" and (out / "run_config.yaml").is_file()
    assert not run_workers(out)  # the workers that did start were stopped


# ----- Ctrl-C while the workers start --------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(270)
def test_sigint_during_startup_is_one_line_exit_130_and_the_folder_resumes(tmp_path: Path) -> None:
    budget = Budget(240)
    go, env = _slowstart(tmp_path)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "train.entrypoint=slowstart:train",
            "scheduler=random", "scheduler.n_trials=3", "scheduler.max_epochs=2", "progress=plain", f"out_dir={out}"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        # the two workers are forked and block in their start-up: interrupt now
        wait_for(lambda: len(list(tmp_path.glob("go.waiting.*"))) == 2, budget, "both workers to be starting")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=budget.left())
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = err.strip().splitlines()
    assert proc.returncode == 130, err[-2000:]
    assert lines == ["starting 2 workers…", "nasalloc run: interrupted while starting the workers (0 of 2 ready); "
                                            f"continue with: nasalloc run resume={out}"], err[-2000:]
    assert not run_workers(out)  # workers, spare and fork server all gone
    assert (out / "trace.jsonl").read_text() == ""  # resumable: its config and an empty journal
    go.touch()
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=budget.left(), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.startswith("starting 2 workers…\n2 workers ready in ")
    events = read_trace(out / "trace.jsonl")
    check_history(events)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 3 and summary["completed"] == 3 and summary["resumed"]
    assert not run_workers(out)


@pytest.mark.slow
@pytest.mark.timeout(270)
def test_the_progress_best_after_a_resume_counts_the_results_from_before_it(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A search stopped mid-way, then resumed: each progress line of the resumed run shows a
    best at least as good as the best result journaled before the resume."""
    raw = toy_raw({"name": "random", "n_trials": 4, "max_epochs": 3}, progress="plain", trial_timeout_s=600,
                  faults=[{"trial": 2, "epoch": 2, "mode": "hang"}])
    # trial 2 hangs in epoch 2: stop the search then (trials 0 and 1 have all their results)
    marker = tmp_path / "checkpoints" / "trial_0002" / "faulted_0_rank0"
    first = run_search_stopped_when(raw, tmp_path, marker, Budget(240))
    assert first["interrupted"]
    old = [ev for ev in read_trace(tmp_path / "trace.jsonl") if ev.event == "result"]
    best = max(old, key=lambda ev: ev.metric)
    capsys.readouterr()
    run_search(settings_from({**raw, "resume": str(tmp_path)}, resume=tmp_path), tmp_path)
    err = capsys.readouterr().err
    shown = [(float(m), int(t)) for m, t in re.findall(r"\| best ([0-9.e+-]+) \(trial (\d+)\)", err)]
    assert shown, err
    # every line of the resumed run shows a best at least as good as the best before the resume
    assert all(m >= float(f"{best.metric:.4g}") for m, _ in shown), (best, shown)
    assert shown[0][1] == best.trial or shown[0][0] > best.metric


def test_a_stop_during_start_up_ends_the_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wait_ready with its stop flag set raises StartInterrupted at once (no worker needed)."""
    import threading

    go, env = _slowstart(tmp_path)
    for key in ("PYTHONPATH", "SLOWSTART_GO"):
        monkeypatch.setenv(key, env[key])
    stop = threading.Event()
    stop.set()
    backend = WarmBackend([Slot(0, 0)], "cpu", ForkServerSpawner(), preload=["slowstart:train"])
    try:
        with pytest.raises(StartInterrupted, match=r"^interrupted while starting the workers \(0 of 1 ready\)$"):
            backend.wait_ready(stop=stop)
    finally:
        backend.shutdown()
