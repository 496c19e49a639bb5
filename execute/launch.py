"""Run k ranks of a training function outside a search: the launcher calibration reuses.

`Launcher` keeps warm workers on a set of devices (so repeated measurements do not pay the
~1.7 s Python + torch start-up each time): the executor's `WarmBackend`, with workers forked
on this machine, or with `ray=` as warm actors on the devices of a Ray cluster, numbered node
by node (a job's rendezvous at its rank-0 actor), so calibration measures what a search on
that backend pays; `Launcher.run` runs one training function as a DDP group
on some of those devices for a number of epochs (or steps) and returns what happened,
including each rank's per-step timestamps. `run_ranks` is the one-shot form.

    with Launcher("cpu", [0, 1]) as launcher:
        r = launcher.run("nasalloc.execute.trainers.digits:train", {"lr": 0.05, "width": 16},
                         devices=[0, 1], epochs=2, record_steps=True)
        r.step_times[0]      # rank 0's perf_counter() at each ctx.step()
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasalloc.execute.backend import Checkpointed, Ended, Failed, GroupSpec, Report, Spawner, WarmBackend
from nasalloc.execute.devices import Slot
from nasalloc.execute.local_spawner import ForkServerSpawner

if TYPE_CHECKING:
    from nasalloc.execute.ray_backend import RayTarget


@dataclass
class RanksResult:
    """What one `run` observed (times in seconds; step times are perf_counter() stamps)."""

    ok: bool
    info: str
    wall_s: float  # from sending the job to the last rank's end
    reports: list[tuple[float, int, float, dict[str, Any]]] = field(default_factory=list)  # (t, epoch, metric, extra)
    step_times: list[list[float]] = field(default_factory=list)  # per rank
    steps: list[int] = field(default_factory=list)  # per rank
    rank_wall_s: list[float] = field(default_factory=list)  # per rank, inside the worker

    def step_durations(self, rank: int = 0) -> list[float]:
        t = self.step_times[rank] if rank < len(self.step_times) else []
        return [b - a for a, b in zip(t, t[1:])]


class Launcher:
    """Warm workers on `device_ids` (CPU slots or GPU indices; with `ray`, the cluster's devices
    numbered node by node); run DDP groups on them. With `ray`, every node must see `workdir`
    (the workers write their logs and checkpoints there)."""

    def __init__(self, device_kind: str, device_ids: list[int], *, slots_per_device: int = 1,
                 threads_per_rank: int | None = None, workdir: Path | None = None, preload: list[str] | None = None,
                 ray: RayTarget | None = None):
        self.device_kind = device_kind
        self._slots = [Slot(d, s) for d in device_ids for s in range(slots_per_device)]
        self._own_workdir = workdir is None  # a temporary one is removed on close unless a run failed
        self._workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="nasalloc-launch-"))
        self._failed = False
        spawner: Spawner
        if ray is not None:
            from nasalloc.execute.ray_backend import RaySpawner

            spawner = RaySpawner(ray.cluster, ray.slot_resource)
        else:
            spawner = ForkServerSpawner(log_dir=self._workdir / "logs")
        self.backend = WarmBackend(self._slots, device_kind, spawner, threads_per_rank=threads_per_rank, preload=preload)
        try:
            self.backend.wait_ready()
        except BaseException:  # no `with` block will close it: stop the workers that did start
            self.backend.shutdown()
            raise
        self._runs = 0

    def run(self, entrypoint: str, config: dict[str, Any], devices: list[int] | list[Slot], *, epochs: int = 1,
            start_epoch: int = 0, max_steps: int | None = None, record_steps: bool = True,
            timeout_s: float = 600.0, checkpoint_dir: Path | None = None, log_path: Path | None = None,
            pause: bool = False) -> RanksResult:
        """Run `entrypoint` as len(devices) ranks for `epochs` epochs (or until `max_steps` steps).

        Every report is answered CONTINUE until `start_epoch + epochs`, then STOP (with
        `pause`: PAUSE, and the ranks save the checkpoint, as a trial paused at a rung);
        nothing else is checkpointed. A crash, an exception or `timeout_s` without a report
        gives ok=False.
        """
        slots = [d if isinstance(d, Slot) else Slot(int(d), 0) for d in devices]
        self._runs += 1
        until = start_epoch + epochs
        spec = GroupSpec(
            trial=self._runs, config=dict(config), entrypoint=entrypoint, slots=slots, start_epoch=start_epoch,
            until_epoch=until, checkpoint_dir=checkpoint_dir or self._workdir / f"ckpt_{self._runs}",
            log_path=log_path or self._workdir / "logs" / f"run_{self._runs:04d}.log", timeout_s=timeout_s,
            record_steps=record_steps, max_steps=max_steps, require_decision=False,
        )
        t0 = time.perf_counter()
        gid = self.backend.start_group(spec)
        result = RanksResult(ok=False, info="", wall_s=0.0)
        while True:
            for ev in self.backend.poll(1.0):
                if getattr(ev, "group", None) != gid:
                    continue
                if isinstance(ev, Report):
                    result.reports.append((time.perf_counter() - t0, ev.epoch, ev.metric, ev.extra))
                    last = ev.epoch >= until
                    self.backend.decide(gid, "continue" if not last else "pause" if pause else "stop", save=last and pause)
                elif isinstance(ev, Checkpointed):
                    pass
                elif isinstance(ev, Ended):
                    result.ok = True
                    result.wall_s = time.perf_counter() - t0
                    result.step_times = [r["step_times"] for r in ev.ranks]
                    result.steps = [r["steps"] for r in ev.ranks]
                    result.rank_wall_s = [r["wall_s"] for r in ev.ranks]
                    return result
                elif isinstance(ev, Failed):
                    self._failed = True
                    result.info = ev.info
                    result.wall_s = time.perf_counter() - t0
                    return result

    def close(self) -> None:
        self.backend.shutdown()
        if self._own_workdir and not self._failed:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_ranks(entrypoint: str, config: dict[str, Any], device_kind: str, devices: list[int], **kwargs: Any) -> RanksResult:
    """One-shot `Launcher(...).run(...)`: start workers on `devices`, run, stop them."""
    with Launcher(device_kind, devices) as launcher:
        return launcher.run(entrypoint, config, devices, **kwargs)
