"""One search run from validated settings: build, (replay), loop, summarize, plot.

The search clock starts once the warm workers are up (their start-up, ~2-3 s here, is paid
once per run and reported as ``worker_startup_s`` in summary.json), so trace times measure
the search itself, as the simulator models it with warm workers.

Interrupts: from the first moment, Ctrl-C and SIGTERM only set a stop flag. During the
workers' start-up it ends the start-up (`StartInterrupted`, after the workers are stopped);
in the loop it ends the search resumably (`SearchLoop`). The run folder is resumable
throughout: a new run's trace.jsonl exists (empty) before any worker starts, and
run_config.yaml is written before that (`run.main`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from nasalloc.execute.api import latest_checkpoint
from nasalloc.execute.backend import Backend, Spawner, WarmBackend
from nasalloc.execute.devices import SlotMap
from nasalloc.execute.journal import Journal, replay
from nasalloc.execute.local_spawner import ForkServerSpawner
from nasalloc.execute.loop import LoopOptions, SearchLoop
from nasalloc.execute.progress import Progress
from nasalloc.sim.elastic import ElasticPolicy
from nasalloc.sim.schedulers import make_scheduler
from nasalloc.sim.trace import read_trace, summarize, write_json, write_trace
from nasalloc.sim.unshare import UnsharePolicy


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """While inside: SIGINT and SIGTERM set `stop` instead of raising anywhere (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def run_search(settings: Any, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the search described by `settings` in `run_dir`; -> summary dict.

    Raises `backend.StartInterrupted` (Ctrl-C/SIGTERM while the workers start) or
    `backend.WorkersDidNotStart`; either way the workers are stopped and the folder is resumable."""
    run_dir = Path(run_dir)
    scheduler = make_scheduler(settings.scheduler, settings.space, np.random.default_rng(settings.seed))
    trace_path = run_dir / "trace.jsonl"
    storage = settings.storage_dir(run_dir)
    options = LoopOptions(entrypoint=settings.train.entrypoint, params=dict(settings.train.params), run_dir=run_dir,
                          storage=storage, checkpoint_every=settings.checkpoint_every,
                          trial_timeout_s=settings.trial_timeout_s)
    restart, offset, fixups, best = [], 0.0, [], None
    if settings.resume is not None:
        old = read_trace(trace_path, tolerate_torn_tail=True)
        write_trace(trace_path, old)  # drop a torn last line before appending
        ckpt = storage / "checkpoints"
        rep = replay(old, scheduler, lambda tid, at_most: latest_checkpoint(ckpt / f"trial_{tid:04d}", at_most))
        restart, offset, fixups, best = rep.restart, rep.makespan, rep.fixups, rep.best  # `scheduler` holds the replayed state
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        trace_path.touch()  # resumable from here on (an empty journal replays to a fresh start)
    stop = threading.Event()
    with stop_on_signals(stop):
        progress = Progress(len(settings.device_ids), settings.progress,
                            title=f"nasalloc run: {settings.scheduler.name}, {settings.train.name}, gpus_per_trial={settings.gpus_per_trial}")
        t0 = time.monotonic()
        slots = SlotMap(settings.device_ids, settings.allocation.slots_per_device).all_slots()
        backend = None
        journal = None
        try:
            backend = make_backend(settings, slots, run_dir)
            backend.wait_ready(stop=stop, on_progress=progress.starting)
            startup = time.monotonic() - t0
            journal = Journal(trace_path, time_offset=offset)
            for event, tid, epoch, devices, info in fixups:
                journal.write(event, tid, epoch=epoch, devices=devices, info=info, time_s=offset)
            elastic = unshare = None
            profile = None if settings.profile is None else settings.profile.with_node_size(settings.cluster.gpus_per_node)
            if settings.allocation.is_elastic:  # the simulator's policy, on this run's devices
                elastic = ElasticPolicy(settings.allocation, profile, scheduler.milestones)
            elif settings.unshare and profile is not None:  # the simulator's rule (the core decides where it
                # applies: trials sharing a spread device); without a profile nothing moves, as `validate` re-simulates it
                unshare = UnsharePolicy(profile, scheduler.milestones)
            loop = SearchLoop(scheduler, backend, settings.device_ids, settings.allocation, journal, options, restart=restart,
                              best=best, elastic=elastic, unshare=unshare, on_change=progress.update,
                              cluster=settings.cluster, stop=stop)
            loop.run()
            progress.update(loop)
        finally:
            progress.close()
            if backend is not None:
                backend.shutdown()
            if journal is not None:
                journal.close()
    events = read_trace(trace_path, tolerate_torn_tail=True)
    summary = summarize(events, mode=scheduler.mode, n_devices=len(settings.device_ids), scheduler=scheduler.name,
                        gpus_per_trial=settings.gpus_per_trial, target=settings.target)
    summary.extra.update(interrupted=loop.interrupted, worker_startup_s=round(startup, 3), device_kind=settings.devices.kind,
                         workload=settings.train.name, resumed=settings.resume is not None, backend=settings.backend,
                         gpus_per_node=settings.cluster.gpus_per_node)
    out = summary.to_dict()
    write_json(run_dir / "summary.json", out)
    _plots(events, len(settings.device_ids), scheduler.mode, run_dir, settings)
    return out


def make_backend(settings: Any, slots: list, run_dir: Path) -> Backend:
    """The run's backend: warm workers here (local) or warm actors on a Ray cluster (ray)."""
    spawner: Spawner
    if settings.backend == "ray":
        from nasalloc.execute.ray_backend import RayCluster, RaySpawner

        spawner = RaySpawner(RayCluster(settings.cluster, settings.cpus_per_node), settings.ray.slot_resource)
    else:
        spawner = ForkServerSpawner(log_dir=run_dir / "logs" / "workers")
    return WarmBackend(slots, settings.devices.kind, spawner, threads_per_rank=settings.devices.threads_per_rank or None,
                       preload=[settings.train.entrypoint])


def _plots(events: list, n_devices: int, mode: str, run_dir: Path, settings: Any) -> None:
    try:
        from nasalloc.sim.plots import plot_best_so_far, plot_gantt
    except ImportError:  # the simulator's plotting module is not in this build
        return
    title = f"{settings.scheduler.name} on {settings.train.name}, gpus_per_trial={settings.gpus_per_trial} (real run)"
    plot_gantt(events, n_devices, run_dir / "gantt.png", title=title)
    plot_best_so_far(events, mode, run_dir / "best_so_far.png", title=title)
