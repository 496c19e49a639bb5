"""A warm worker: one long-lived process per device slot that runs rank after rank.

Starting Python + torch costs ~1.7 s on a 2-core machine (benchmarks/worker_startup.py), more than many
epochs, so the executor starts one worker per slot once and sends it jobs. For each job the
worker forms a fresh process group (a FileStore unique to the job), runs the user's training
function as one rank, tears the group down and waits for the next job. Its stdout/stderr go
to the trial's log while a job runs.

The worker exits when the executor closes the connection, says "exit", or dies (a watchdog
notices the parent pid change), so a killed executor leaves no orphans behind.

On a GPU (CUDA_VISIBLE_DEVICES shows the worker only its own, as ``cuda:0``) the worker
sets up CUDA before it says it is ready (`warm_up_cuda`): the CUDA context and cuBLAS cost
about a second, and paid inside a trial they would count in the search's makespan, once per
worker, while calibration leaves them out, skewing k = 1/4 (four workers) against k = 1.
After each job it frees what the job left (`release_memory`), so trials taking turns on a
GPU do not keep each other's cached blocks.

Forked by the fork server of `local_spawner.ForkServerSpawner` (`forkserver.py`: torch is
imported there once, and this `main` runs in the child), or run as ``python -m
nasalloc.execute.worker``; the connection address, thread count, pinned cores, device kind
and the worker's token come in argv, the auth key in the environment (`take_authkey`).
`prepare`, `serve` and `take_authkey` are also what each warm Ray actor of
`ray_backend.RaySpawner` runs, so ranks run with this one piece of code wherever they are.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import Client, Connection
from typing import Any

AUTHKEY_ENV = "NASALLOC_WORKER_AUTHKEY"
PRELOAD_ENV = "NASALLOC_WORKER_PRELOAD"  # ";"-separated entrypoints to import at start


def resolve_entrypoint(entrypoint: str) -> Any:
    """``"package.module:function"`` -> the function (ImportError/AttributeError if absent)."""
    module, _, name = entrypoint.partition(":")
    if not module or not name:
        raise ValueError(f"entrypoint {entrypoint!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


def check_entrypoint(entrypoint: str, key: str = "train.entrypoint") -> None:
    """Import the training function here, before anything starts, so a typo is one line
    (`key` names the setting) instead of every worker failing; what `run` and `calibrate` check."""
    from nasalloc.sim.errors import UserError

    try:
        fn = resolve_entrypoint(entrypoint)
    except (ImportError, AttributeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{key}={entrypoint!r}: cannot load it ({type(exc).__name__}: {why}); "
                        "expected 'module:function' importable here") from None
    if not callable(fn):
        raise UserError(f"{key}={entrypoint!r}: not a function")


def take_authkey() -> bytes:
    """The auth key of the connection to the executor, taken out of the environment
    (`backend.worker_env` put it there), so the training code never sees it."""
    return bytes.fromhex(os.environ.pop(AUTHKEY_ENV))


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(3)
        time.sleep(0.5)


class _ConnLink:
    """TrainingContext's link: reports go to the executor, decisions come back."""

    def __init__(self, conn: Connection, job_id: int):
        self.conn = conn
        self.job_id = job_id

    def report(self, epoch: int, metric: float | None, extra: dict[str, Any]) -> tuple[Any, bool]:
        from nasalloc.execute.api import Decision

        if metric is not None:  # rank 0 speaks; the others only listen
            self.conn.send({"op": "report", "job": self.job_id, "epoch": int(epoch), "metric": metric, "extra": _plain(extra)})
        while True:
            msg = self.conn.recv()
            if msg.get("op") == "decision":
                return Decision(msg["decision"]), bool(msg["save"])
            if msg.get("op") == "exit":
                os._exit(0)

    def checkpointed(self, epoch: int) -> None:
        self.conn.send({"op": "checkpoint", "job": self.job_id, "epoch": int(epoch)})


def _plain(extra: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in extra.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            out[k] = str(v)
    return out


class _Redirect:
    """Point fds 1 and 2 at a log file for the duration of a job (user prints, C-level too)."""

    def __init__(self, path: str | None):
        self.path = path

    def __enter__(self) -> None:
        if not self.path:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

    def __exit__(self, *exc: object) -> None:
        if not self.path:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        os.close(self._saved[0])
        os.close(self._saved[1])


def warm_up_cuda() -> None:
    """Create the CUDA context and cuBLAS handle now, before the worker reports ready:
    select the worker's one visible GPU, run a tiny matmul, wait for it."""
    import torch

    torch.cuda.set_device(0)
    a = torch.ones(64, 64, device="cuda")
    (a @ a).sum().item()
    torch.cuda.synchronize()


def release_memory(device_kind: str) -> None:
    """After a job on a GPU: collect the job's garbage (reference cycles, e.g. through a
    traceback) and hand the caching allocator's free blocks back to the driver, so a trial
    that shares the GPU can use them. Not on CPU slots, where freed memory is reused anyway
    and a full collection (~0.1 s with torch loaded) would only lengthen every job."""
    if device_kind != "cuda":
        return
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def run_job(conn: Connection, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one rank of one job; -> the "done" message (never raises for user errors).

    Everything that can fail for this job, selecting the GPU included, runs inside the
    `try` and with output going to the trial's log, so its traceback lands in the log that
    the failure message names and the worker lives on.
    """
    import torch
    import torch.distributed as dist

    from nasalloc.execute.api import Decision, StopTraining, TrainingContext

    rank, world = int(spec["rank"]), int(spec["world_size"])
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(spec["local_rank"]),
        LOCAL_WORLD_SIZE=str(world), MASTER_ADDR=spec.get("master_addr", "127.0.0.1"),
        MASTER_PORT=str(spec["master_port"]),
    )
    # one machine: a FileStore in the backend's folder; across nodes (Ray): TCP at rank 0's node
    init_method = spec.get("init_method") or f"file://{spec['store_path']}"
    cuda = spec["device_kind"] == "cuda"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")  # CUDA_VISIBLE_DEVICES shows only its GPU
    t0 = time.perf_counter()
    ctx = None
    ok, info = True, ""
    with _Redirect(spec.get("log_path")):
        print(f"== trial {spec['trial']} rank {rank}/{world} epochs {spec['start_epoch']}->{spec['until_epoch']} "
              f"attempt {spec.get('attempt', 0)} pid {os.getpid()} ==", flush=True)
        try:
            if cuda:
                torch.cuda.set_device(device)
            fn = resolve_entrypoint(spec["entrypoint"])
            # device_id binds the group to this GPU, so NCCL creates its communicator here, at
            # init, even for one rank (and the first collective does not pay for it)
            dist.init_process_group(
                spec["pg_backend"], init_method=init_method, rank=rank, world_size=world,
                timeout=timedelta(seconds=float(spec["pg_timeout_s"])), **({"device_id": device} if cuda else {}),
            )
            ctx = TrainingContext(
                rank=rank, world_size=world, local_rank=int(spec["local_rank"]), device=device,
                trial=int(spec["trial"]), config=dict(spec["config"]), start_epoch=int(spec["start_epoch"]),
                until_epoch=int(spec["until_epoch"]), checkpoint_dir=spec["checkpoint_dir"],
                link=_ConnLink(conn, int(spec["job"])), checkpoint_every=int(spec["checkpoint_every"]),
                record_steps=bool(spec.get("record_steps")), max_steps=spec.get("max_steps"),
            )
            try:
                fn(ctx.config, ctx)
            except StopTraining:
                pass
            if spec.get("require_decision", True) and ctx.last_decision in (None, Decision.CONTINUE) and not spec.get("max_steps"):
                ok, info = False, "train() returned while the scheduler still said CONTINUE"
        except BaseException as exc:  # noqa: BLE001 - any user error ends the job, not the worker
            ok, info = False, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            if dist.is_initialized():
                try:
                    dist.destroy_process_group()
                except Exception:  # noqa: BLE001
                    pass
    return {
        "op": "done", "job": int(spec["job"]), "rank": rank, "ok": ok, "info": info,
        "wall_s": time.perf_counter() - t0, "steps": 0 if ctx is None else ctx.steps,
        "step_times": [] if ctx is None else ctx.step_times,
    }


def prepare(threads: int, cpus: str, device_kind: str, preload: str) -> dict[str, Any]:
    """Set a fresh worker up before it says it is ready: the expensive imports (already done
    by the fork server when forked from one), pinned cores (`cpus`, "" for none), torch
    threads, the training function's imports (`preload`, ";"-separated entrypoints) and, on a
    GPU, CUDA. -> the "ready" message (with "error" if the GPU could not be set up). Shared by
    the local worker and the Ray rank actor."""
    import torch  # imported by the fork server already (free here); paid once when run on its own
    import torch.distributed  # noqa: F401

    import nasalloc.execute.api  # noqa: F401

    if cpus:  # pinned after the imports, which run faster unpinned
        try:
            os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
        except (AttributeError, OSError):
            pass
    torch.set_num_threads(max(1, threads))
    for entry in filter(None, preload.split(";")):
        try:
            resolve_entrypoint(entry)  # warm the training function's imports too; errors surface per job
        except Exception:  # noqa: BLE001
            pass
    hello: dict[str, Any] = {"op": "ready", "pid": os.getpid()}
    print(f"worker pid {os.getpid()}: {device_kind}, {threads} threads, cores {cpus or 'any'}, "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    if device_kind == "cuda":
        try:
            warm_up_cuda()
        except Exception as exc:  # noqa: BLE001 - reported with the ready message, traceback in this worker's log
            traceback.print_exc()
            hello["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return hello


def serve(conn: Connection, device_kind: str) -> None:
    """Run the jobs the executor sends over `conn` until it says "exit" or goes away."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg.get("op") == "job":
            done = run_job(conn, msg)
            release_memory(device_kind)  # before "done", so the next job on this GPU finds the memory free
            conn.send(done)
        elif msg.get("op") == "exit":
            break


def main(argv: list[str]) -> None:
    """Set up and serve jobs. argv: connection address, threads, cores to pin ("" = none),
    device kind, and a token the executor recognises this worker by in its "ready"."""
    address, threads, cpus, device_kind = argv[0], int(argv[1]), argv[2], argv[3]
    token = argv[4] if len(argv) > 4 else None
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    authkey = take_authkey()
    hello = {**prepare(threads, cpus, device_kind, os.environ.get(PRELOAD_ENV, "")), "token": token}
    # Connect only now, set up: the executor accepts one worker at a time and waits for its
    # "ready", so workers that connected first and then imported started one after another
    # (4 workers on one CPU slot here: 10 s; each worker's set-up alone: 3 s).
    conn = Client(address, family="AF_UNIX", authkey=authkey)
    conn.send(hello)
    serve(conn, device_kind)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
