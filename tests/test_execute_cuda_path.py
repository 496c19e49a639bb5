"""The executor's CUDA path, checked on a machine without a GPU as far as that goes.

What a GPU worker is given (CUDA_VISIBLE_DEVICES inside an inherited one, threads), when a
worker is replaced after a failed job, where data indices live, how calibration times a
restore, and, on a machine where CUDA cannot start, that the error reaches the logs and the
user as one line instead of killing the worker silently.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nasalloc.calibration.probe import _time_checkpoint, _to_device
from nasalloc.calibration.profiling import ProfilingPlan, hardware_facts, plan_threads
from nasalloc.execute.backend import Failed, GroupSpec, WarmBackend, keeps_worker_after_failure, worker_env
from nasalloc.execute.devices import Slot, cuda_visible_device, rank_threads
from nasalloc.execute.local_spawner import ForkServerSpawner
from nasalloc.execute.trainers._common import shard
from nasalloc.execute.worker import AUTHKEY_ENV, PRELOAD_ENV
from nasalloc.sim.errors import UserError

TOY = "nasalloc.execute.trainers.toy:train"


# ----- CUDA_VISIBLE_DEVICES ---------------------------------------------------------------
def test_gpu_ids_index_the_visible_gpus() -> None:
    assert cuda_visible_device(3, None) == "3"  # nothing inherited: every GPU visible, id = index
    assert cuda_visible_device(0, "2,3") == "2" and cuda_visible_device(1, "2,3") == "3"
    assert cuda_visible_device(1, " GPU-aa11 , GPU-bb22 ") == "GPU-bb22"  # UUIDs passed on as written
    assert cuda_visible_device(0, "MIG-1234") == "MIG-1234"
    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES='2,3' makes 2 visible \(allowed ids: 0..1\)"):
        cuda_visible_device(2, "2,3")
    with pytest.raises(ValueError, match="makes 0 visible"):
        cuda_visible_device(0, "")


def test_a_gpu_worker_sees_only_its_own_gpu_inside_an_inherited_list() -> None:
    base = {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "4,6", "OMP_WAIT_POLICY": "ACTIVE"}
    env = worker_env(base, device_kind="cuda", device=1, threads=8, slots_share_cores=False, authkey_hex="ab",
                     preload="m:f")
    assert env["CUDA_VISIBLE_DEVICES"] == "6"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "8"
    assert env[AUTHKEY_ENV] == "ab" and env[PRELOAD_ENV] == "m:f" and env["PATH"] == "/bin"
    assert base["CUDA_VISIBLE_DEVICES"] == "4,6"  # the executor's own environment is left alone
    env = worker_env({"PATH": "/bin"}, device_kind="cuda", device=2, threads=4, slots_share_cores=True,
                     authkey_hex="ab", preload="")
    assert env["CUDA_VISIBLE_DEVICES"] == "2"
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"  # several workers on the same cores: no spin-waiting
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "lo"  # every rank on this machine


def test_a_ray_actor_keeps_the_gpu_ray_gave_it_and_the_nodes_network() -> None:
    """A Ray actor applies the worker environment to its node's: Ray set CUDA_VISIBLE_DEVICES
    to the actor's one GPU (entry 0), and ranks on several machines must not be held to the
    loopback interface."""
    node = {"CUDA_VISIBLE_DEVICES": "3", "GLOO_SOCKET_IFNAME": "eth1"}
    env = worker_env(node, device_kind="cuda", device=0, threads=4, slots_share_cores=False, authkey_hex="ab",
                     preload="", loopback=False)
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["GLOO_SOCKET_IFNAME"] == "eth1"
    assert "NCCL_SOCKET_IFNAME" not in env and env["OMP_NUM_THREADS"] == "4"


def test_a_cpu_worker_keeps_the_inherited_cuda_settings_and_the_users_wait_policy() -> None:
    base = {"CUDA_VISIBLE_DEVICES": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    env = worker_env(base, device_kind="cpu", device=0, threads=2, slots_share_cores=True, authkey_hex="ab", preload="")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = worker_env({}, device_kind="cpu", device=0, threads=2, slots_share_cores=False, authkey_hex="ab", preload="")
    assert "CUDA_VISIBLE_DEVICES" not in env and "OMP_WAIT_POLICY" not in env


# ----- threads: one rule --------------------------------------------------------------------
def test_threads_per_rank_are_cores_over_devices_whatever_the_sharing() -> None:
    assert rank_threads(None, 1, 16) == 16 and rank_threads(0, 4, 16) == 4
    assert rank_threads(3, 4, 16) == 3  # set by the user
    assert rank_threads(None, 32, 16) == 1


def test_calibration_uses_the_runs_thread_rule_on_gpus_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    plan = ProfilingPlan(entrypoint=TOY, config={}, device_kind="cpu", device_ids=[0], gpus_per_trial=[1], share=[2, 4],
                         threads_per_rank=None, batch_fraction={}, warmup_steps=2, pilot_steps=10, max_steps=100,
                         rounds=1, time_limit_s=1.0, checkpoints=0, space=None, configs=0, config_time_limit_s=1.0,
                         startup_jobs=1, seed=0, fill_devices=True)
    # one device shared by up to 4 trials: each rank gets all 16 cores' threads, as `nasalloc run` gives at k = 1
    assert plan_threads(plan) == 16 == rank_threads(None, 1, 16)
    assert plan_threads(dataclasses.replace(plan, device_kind="cuda", device_ids=[0, 1, 2, 3])) == 4
    assert plan_threads(dataclasses.replace(plan, threads_per_rank=2)) == 2
    assert hardware_facts(plan)["threads_per_rank"] == 16


# ----- failed jobs ------------------------------------------------------------------------
def test_only_a_one_rank_job_on_a_cpu_slot_keeps_its_worker_after_failing() -> None:
    assert keeps_worker_after_failure("cpu", 1)
    assert not keeps_worker_after_failure("cpu", 2)  # a peer may be stuck in a collective
    assert not keeps_worker_after_failure("cuda", 1)  # the CUDA context may be poisoned
    assert not keeps_worker_after_failure("cuda", 4)


# ----- data and checkpoints on the device -------------------------------------------------
def test_batches_are_index_tensors_on_the_ranks_device_and_the_same_on_every_device() -> None:
    cpu = SimpleNamespace(world_size=2, rank=1, device=torch.device("cpu"))
    meta = SimpleNamespace(world_size=2, rank=1, device=torch.device("meta"))  # a device that is not the CPU
    on_cpu = shard(100, 16, cpu, epoch=3, seed=1, scaling="strong")
    on_meta = shard(100, 16, meta, epoch=3, seed=1, scaling="strong")
    assert all(b.device.type == "meta" for b in on_meta)
    assert [b.shape for b in on_meta] == [b.shape for b in on_cpu] == [torch.Size([8])] * 6
    g = torch.Generator().manual_seed(1 * 100_003 + 3)
    perm = torch.randperm(100, generator=g)
    assert torch.equal(on_cpu[0], perm[8:16])  # rank 1's half of the first global batch


def test_calibration_times_a_restore_as_loading_plus_the_copy_to_the_device(tmp_path: Path) -> None:
    state = {"model": {"w": torch.ones(3, 4)}, "opt": {"state": {0: {"momentum_buffer": torch.zeros(4)}},
                                                      "param_groups": [{"lr": 0.1, "params": [0]}]}}
    moved = _to_device(state, torch.device("meta"))
    assert moved["model"]["w"].device.type == "meta"
    assert moved["opt"]["state"][0]["momentum_buffer"].device.type == "meta"
    assert moved["opt"]["param_groups"] == [{"lr": 0.1, "params": [0]}]
    assert state["model"]["w"].device.type == "cpu"  # the training state itself is untouched
    timed = _time_checkpoint(lambda: state, tmp_path, torch.device("meta"))
    assert set(timed) == {"probe_checkpoint_save_s", "probe_checkpoint_restore_s", "probe_checkpoint_bytes"}
    assert timed["probe_checkpoint_restore_s"] > 0 and timed["probe_checkpoint_bytes"] > 0
    assert not list(tmp_path.iterdir())  # the probe's file is gone


# ----- a GPU worker where CUDA cannot start -------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens where CUDA cannot start")
def test_cuda_errors_reach_the_logs_and_a_failed_gpu_job_gets_a_fresh_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    workers = tmp_path / "workers"
    backend = WarmBackend([Slot(1, 0)], "cuda", ForkServerSpawner(log_dir=workers))
    try:
        # the warm-up before "ready" fails: one line naming the worker's log, which holds the traceback
        with pytest.raises(UserError) as err:
            backend.wait_ready()
        message = str(err.value)
        assert message.startswith("devices=cuda: the worker for device 1 could not set it up: ")
        assert f"(log: {workers / 'worker_1_0.log'})" in message and "\n" not in message
        worker_log = (workers / "worker_1_0.log").read_text()
        assert "Traceback" in worker_log
        (first,) = backend.worker_pids()
        # the worker is forked (torch imported once, in the fork server) and sets its own GPU
        # before CUDA starts: its first line says what it saw, id 1 of the inherited list
        assert f"worker pid {first}: cuda, " in worker_log
        assert worker_log.split(f"worker pid {first}: ")[1].splitlines()[0].endswith("CUDA_VISIBLE_DEVICES=7")
        # a job on it fails inside its try: the traceback goes to the trial's log, not the worker's
        log = tmp_path / "trial.log"
        gid = backend.start_group(GroupSpec(trial=3, config={}, entrypoint=TOY, slots=[Slot(1, 0)], start_epoch=0,
                                            until_epoch=1, checkpoint_dir=tmp_path / "ckpt", log_path=log, timeout_s=60))
        deadline = time.monotonic() + 60
        failed = []
        while not failed and time.monotonic() < deadline:
            failed = [ev for ev in backend.poll(0.5) if isinstance(ev, Failed) and ev.group == gid]
        assert failed and failed[0].info.startswith("rank 0: ")
        text = log.read_text()
        assert "== trial 3 rank 0/1" in text and "Traceback" in text and "set_device" in text
        # and on cuda the worker that ran it is replaced, even for a one-rank job
        (second,) = backend.worker_pids()
        assert second != first
    finally:
        backend.shutdown()
