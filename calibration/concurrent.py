"""Run several groups at once on the executor's launcher: sharing and a busy machine.

`nasalloc.execute.launch.Launcher.run` runs one group and waits for it. Two measurements need
several groups in flight on the launcher's own backend (`Launcher.backend`: the same warm
workers, `GroupSpec`, events):

- the slow-down of m trials sharing one device: m single-rank groups at the same time on m
  worker slots of that device (`run_concurrently`);
- any measurement "as the search sees it": a search keeps every device busy, and devices
  that share a host's caches, memory bandwidth or cores (CPU slots; a GPU's host side too)
  run slower with their neighbours busy, so the measured group runs beside *load* groups on
  the other devices (`run_jobs` with `Job(load=True)`). A load group is told STOP at its
  first report after every measured group has ended (a graceful end at an epoch boundary:
  its warm worker is kept).

It is a thin loop over the executor's public backend calls, not a second launcher: the
process handling, process groups and failure rules stay the executor's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasalloc.execute.backend import Ended, Failed, GroupSpec, Report
from nasalloc.execute.devices import Slot
from nasalloc.execute.launch import Launcher, RanksResult

UNTIL_EVER = 1_000_000


@dataclass(frozen=True)
class Job:
    """One group: its slots and config; it ends at `max_steps` steps (None: no limit) or at
    the report of epoch `until_epoch`; a `load` job ends once the measured jobs have.
    `pause_at`: at the report of that epoch the job is told PAUSE and saves its checkpoint,
    as the executor tells a trial at a rung; `start_epoch` > 0 resumes from the checkpoint
    of that epoch in its checkpoint folder, as the executor resumes a paused trial."""

    slots: list[Slot]
    config: dict[str, Any]
    max_steps: int | None = None
    until_epoch: int = UNTIL_EVER
    load: bool = False
    pause_at: int | None = None
    start_epoch: int = 0


def run_jobs(launcher: Launcher, entrypoint: str, jobs: list[Job], *, workdir: Path,
             timeout_s: float = 600.0, log_paths: list[Path | None] | None = None,
             checkpoint_dirs: list[Path | None] | None = None) -> list[RanksResult]:
    """Start every job at once; -> one result per job, in order. Report times are seconds
    since the jobs were dispatched. Nothing is saved but a pausing job's checkpoint (its
    result's `wall_s` is when the launcher heard that the job ended); one failure stops the others.
    `log_paths` / `checkpoint_dirs` name the first jobs' files (the rest go under `workdir`)."""
    backend = launcher.backend
    workdir.mkdir(parents=True, exist_ok=True)  # workers open their logs there; they do not create folders
    results: dict[int, RanksResult] = {}
    job_of: dict[int, Job] = {}
    t0 = time.perf_counter()
    logs = list(log_paths or []) + [None] * len(jobs)
    dirs = list(checkpoint_dirs or []) + [None] * len(jobs)
    for i, job in enumerate(jobs):
        log = logs[i] or workdir / f"job_{i}.log"
        ckpt = dirs[i] or workdir / f"job_{i}"
        spec = GroupSpec(
            trial=10_000 + i, config=dict(job.config), entrypoint=entrypoint, slots=list(job.slots),
            start_epoch=job.start_epoch, until_epoch=UNTIL_EVER, checkpoint_dir=ckpt, log_path=log, timeout_s=timeout_s,
            record_steps=True, max_steps=job.max_steps, require_decision=False,
        )
        gid = backend.start_group(spec)
        results[gid] = RanksResult(ok=False, info="", wall_s=0.0)
        job_of[gid] = job
    pending = set(results)
    measured = {g for g in results if not job_of[g].load}
    while pending:
        for ev in backend.poll(1.0):
            gid = getattr(ev, "group", None)
            if gid not in pending:
                continue
            r = results[gid]
            if isinstance(ev, Report):
                r.reports.append((time.perf_counter() - t0, ev.epoch, ev.metric, ev.extra))
                job = job_of[gid]
                if job.pause_at is not None and ev.epoch >= job.pause_at:
                    backend.decide(gid, "pause", save=True)
                    continue
                done = ev.epoch >= job.until_epoch or (job.load and not (measured & pending))
                backend.decide(gid, "stop" if done else "continue", save=False)
            elif isinstance(ev, Ended):
                r.ok, r.wall_s = True, time.perf_counter() - t0
                r.step_times = [d["step_times"] for d in ev.ranks]
                r.steps = [d["steps"] for d in ev.ranks]
                r.rank_wall_s = [d["wall_s"] for d in ev.ranks]
                pending.discard(gid)
            elif isinstance(ev, Failed):
                r.info, r.wall_s = ev.info, time.perf_counter() - t0
                pending.discard(gid)
                for other in list(pending):  # one failure spoils the measurement: stop the rest
                    backend.kill_group(other, "stopped: another concurrent run failed")
    return [results[g] for g in sorted(results)]


def run_concurrently(launcher: Launcher, entrypoint: str, config: dict[str, Any], groups: list[list[Slot]], *,
                     max_steps: int, workdir: Path, timeout_s: float = 600.0,
                     load: list[Job] = ()) -> list[RanksResult]:
    """One group of `config` per entry of `groups`, all at once, each until `max_steps`
    (reports answered CONTINUE), beside optional `load` jobs; -> the results of `groups` only."""
    jobs = [Job(list(s), config, max_steps) for s in groups] + list(load)
    logs: list[Path | None] = [workdir / f"shared_{i}.log" for i in range(len(groups))] + [None] * len(load)
    dirs: list[Path | None] = [workdir / f"shared_{i}" for i in range(len(groups))] + [None] * len(load)
    return run_jobs(launcher, entrypoint, jobs, workdir=workdir, timeout_s=timeout_s, log_paths=logs,
                    checkpoint_dirs=dirs)[: len(groups)]
