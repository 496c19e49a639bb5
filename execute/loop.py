"""The search loop: scheduler decisions in, process groups out, every step journaled.

It talks to three things only: the scheduler (ask / on_result / on_failure /
drain_stopped), the backend (start_group / decide / kill_group / poll) and the journal.
Order of effects for each event is "journal first, then act", so a run killed at any moment
leaves a trace that `journal.replay` can bring a fresh scheduler back from.

Devices: a job's allocation comes from its rung (`rung_index(milestones, start_epoch + 1)`).
When a trial told CONTINUE crosses into a rung with a different allocation (per-rung
schedules such as ``[1, 2]``), the loop answers PAUSE to the ranks instead, journals a
"pause" with ``info="reallocate"``, and queues the trial to resume from that checkpoint on
the new number of devices; the scheduler never knows. Such internal jobs go before new
asks. With a per-rung schedule the loop looks at the next job on a copy of the scheduler
first and only asks for real when that job's devices are free, so the ask order (which
decides the scheduler's state) is exactly the launch order recorded in the journal.
"""

from __future__ import annotations

import copy
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from nasalloc.execute.api import latest_checkpoint
from nasalloc.execute.backend import Checkpointed, Ended, Failed, GroupSpec, LocalBackend, Report
from nasalloc.execute.devices import Allocation, DevicePool, Slot
from nasalloc.execute.journal import INTERRUPTED, REALLOCATE, Journal, drain, fail_info
from nasalloc.sim.schedulers.base import FINISHED, WAIT, Decision, Job, Scheduler, TrialStatus, rung_index


@dataclass
class LoopOptions:
    entrypoint: str
    params: dict[str, Any]  # fixed training settings (train.params) merged under each trial's config
    run_dir: Path
    checkpoint_every: int = 1
    trial_timeout_s: float = 120.0
    poll_s: float = 0.5


@dataclass
class _Running:
    job: Job
    gid: int
    slots: list[Slot]
    share: Fraction
    start_epoch: int
    decision: Decision | None = None
    sent: Decision | None = None
    last_epoch: int = 0
    checkpoint: int = 0


@dataclass
class LoopStats:
    """Counts for the progress display."""

    finished: int = 0
    failed: int = 0
    best: float | None = None
    best_trial: int | None = None
    messages: list[str] = field(default_factory=list)


class SearchLoop:
    def __init__(self, scheduler: Scheduler, backend: LocalBackend, pool: DevicePool, allocation: Allocation,
                 journal: Journal, options: LoopOptions, *, restart: list[Job] | None = None,
                 on_change: Callable[[SearchLoop], None] | None = None):
        self.scheduler = scheduler
        self.backend = backend
        self.pool = pool
        self.allocation = allocation
        self.journal = journal
        self.opt = options
        self.queue: list[tuple[Job, str]] = [(j, INTERRUPTED) for j in (restart or [])]
        self.running: dict[int, _Running] = {}
        self.finished = False
        self.interrupted = False
        self.stats = LoopStats()
        self._on_change = on_change
        self._stop = threading.Event()

    # ----- paths ---------------------------------------------------------------------------
    def checkpoint_dir(self, trial: int) -> Path:
        return self.opt.run_dir / "checkpoints" / f"trial_{trial:04d}"

    def log_path(self, trial: int) -> Path:
        return self.opt.run_dir / "logs" / f"trial_{trial:04d}.log"

    # ----- control -------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Stop launching, end running trials (journaled as interrupted); safe from a signal."""
        self._stop.set()

    def run(self) -> None:
        """Run until the scheduler is FINISHED and nothing runs, or until `request_stop`."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self.request_stop)
        try:
            while not self._stop.is_set():
                self._launch()
                if not self.running and not self.queue:
                    if self.finished:
                        break
                    raise RuntimeError(f"{self.scheduler.name}: WAIT with no trial running (scheduler bug)")
                for ev in self.backend.poll(self.opt.poll_s):
                    self._handle(ev)
                if self._on_change is not None:
                    self._on_change(self)
            if self._stop.is_set():
                self._interrupt()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    # ----- launching -----------------------------------------------------------------------
    def share_for(self, next_epoch: int) -> Fraction:
        return self.allocation.for_rung(rung_index(self.scheduler.milestones, next_epoch))

    def _launch(self) -> None:
        while not self._stop.is_set():
            if self.queue:
                job, why = self.queue[0]
                slots = self.pool.acquire(self.share_for(job.start_epoch + 1))
                if slots is None:
                    return  # internal jobs go first; wait for devices
                self.queue.pop(0)
                self._start(job, slots, info=why)
                continue
            if self.finished:
                return
            if self.allocation.per_rung:
                peek = copy.deepcopy(self.scheduler).ask()
                if isinstance(peek, Job) and not self.pool.can_acquire(self.share_for(peek.start_epoch + 1)):
                    return
            elif not self.pool.can_acquire(self.allocation.shares[0]):
                return
            job = self.scheduler.ask()
            self._drain()
            if job is FINISHED:
                self.finished = True
                return
            if job is WAIT:
                return
            assert isinstance(job, Job)
            slots = self.pool.acquire(self.share_for(job.start_epoch + 1))
            if slots is None:  # cannot happen: checked above
                raise RuntimeError("devices vanished between check and acquire")
            self._start(job, slots, info=None)

    def _start(self, job: Job, slots: list[Slot], info: str | None) -> None:
        ckpt_dir = self.checkpoint_dir(job.trial)
        start = latest_checkpoint(ckpt_dir, at_most=job.start_epoch) if job.start_epoch > 0 else 0
        devices = [s.device for s in slots]
        if job.resume or info is not None:
            self.journal.write("resume", job.trial, epoch=start, devices=devices, info=info)
        else:
            self.journal.write("start", job.trial, epoch=0, devices=devices, config=dict(job.config))
        self.log_path(job.trial).parent.mkdir(parents=True, exist_ok=True)
        spec = GroupSpec(
            trial=job.trial, config={**self.opt.params, **job.config}, entrypoint=self.opt.entrypoint, slots=slots,
            start_epoch=start, until_epoch=job.until_epoch, checkpoint_dir=ckpt_dir, log_path=self.log_path(job.trial),
            checkpoint_every=self.opt.checkpoint_every, timeout_s=self.opt.trial_timeout_s, attempt=job.attempt,
        )
        gid = self.backend.start_group(spec)
        share = self.share_for(job.start_epoch + 1)
        self.running[gid] = _Running(job, gid, slots, share, start, last_epoch=start, checkpoint=start)

    # ----- events --------------------------------------------------------------------------
    def _handle(self, ev: Any) -> None:
        r = self.running.get(ev.group)
        if r is None:
            return
        if isinstance(ev, Report):
            self._report(r, ev)
        elif isinstance(ev, Checkpointed):
            r.checkpoint = max(r.checkpoint, ev.epoch)
        elif isinstance(ev, Ended):
            self._ended(r)
        elif isinstance(ev, Failed):
            self._failed(r, ev.info)

    def _report(self, r: _Running, ev: Report) -> None:
        tid = r.job.trial
        trial = self.scheduler.trials[tid]
        fresh = ev.epoch > trial.last_epoch
        try:
            decision = self.scheduler.on_result(tid, ev.epoch, ev.metric)
        except (ValueError, AssertionError) as exc:
            self.backend.kill_group(r.gid, f"bad report: {exc}")
            return
        r.last_epoch = ev.epoch
        if fresh:
            test = ev.extra.get("test_metric")
            self.journal.write("result", tid, epoch=ev.epoch, metric=ev.metric, devices=[s.device for s in r.slots],
                               test_metric=test if isinstance(test, float) else None)
            if self.stats.best is None or self.scheduler.score(ev.metric) > self.scheduler.score(self.stats.best):
                self.stats.best, self.stats.best_trial = ev.metric, tid
        self._drain()
        sent = decision
        if decision is Decision.CONTINUE and self.allocation.per_rung and self.share_for(ev.epoch + 1) != r.share:
            sent = Decision.PAUSE  # move to the next rung's allocation via a checkpoint
        r.decision, r.sent = decision, sent
        completed = decision is Decision.STOP and trial.status is TrialStatus.COMPLETED  # keep the final model
        save = completed or sent is Decision.PAUSE or (sent is Decision.CONTINUE and ev.epoch % self.opt.checkpoint_every == 0)
        self.backend.decide(r.gid, sent.value, save)

    def _release(self, r: _Running) -> None:
        del self.running[r.gid]
        self.pool.release(r.slots)

    def _ended(self, r: _Running) -> None:
        self._release(r)
        tid, devices = r.job.trial, [s.device for s in r.slots]
        if r.sent is Decision.PAUSE and r.decision is Decision.CONTINUE:
            self.journal.write("pause", tid, epoch=r.last_epoch, devices=devices, info=REALLOCATE)
            until = self.scheduler.trials[tid].until_epoch
            self.queue.append((Job(tid, r.job.config, r.last_epoch, until, resume=True, attempt=r.job.attempt), REALLOCATE))
        elif r.decision is Decision.PAUSE:
            self.journal.write("pause", tid, epoch=r.last_epoch, devices=devices)
        else:
            done = self.scheduler.trials[tid].status is TrialStatus.COMPLETED
            self.journal.write("complete" if done else "stop", tid, epoch=r.last_epoch, devices=devices)
            self.stats.finished += 1

    def _failed(self, r: _Running, info: str) -> None:
        tid = r.job.trial
        if r.decision in (Decision.STOP, Decision.PAUSE) and r.sent is r.decision:
            self.stats.messages.append(f"trial {tid}: {info} (after its last decision; ignored)")
            self._ended(r)  # the scheduler already decided; a crash while ending changes nothing
            return
        self._release(r)
        resume = latest_checkpoint(self.checkpoint_dir(tid), at_most=r.last_epoch)
        self.journal.write("fail", tid, epoch=r.last_epoch, devices=[s.device for s in r.slots], info=fail_info(info, resume))
        retried = self.scheduler.on_failure(tid, resume)
        self._drain()
        self.stats.failed += 1
        self.stats.messages.append(f"trial {tid} failed: {info} ({'retrying' if retried else 'dropped'})")

    def _drain(self) -> None:
        for tid in drain(self.scheduler):
            self.journal.write("stop", tid, epoch=self.scheduler.trials[tid].last_epoch)
            self.stats.finished += 1

    def _interrupt(self) -> None:
        """Ctrl-C/SIGTERM: kill running groups, journal them as interrupted (resumable)."""
        self.interrupted = True
        for gid, r in list(self.running.items()):
            self.backend.kill_group(gid, "interrupted")
            if r.sent is not None and r.sent is r.decision and r.decision is not Decision.CONTINUE:
                self._ended(r)  # the scheduler had already stopped or paused it: record that
                continue
            self._release(r)
            self.journal.write("pause", r.job.trial, epoch=r.last_epoch, devices=[s.device for s in r.slots], info=INTERRUPTED)
        self.backend.poll(0)  # swallow the Failed events of the killed groups
