"""The executor's search loop: a real-time clock for the dispatch core.

Everything a search decides — when the scheduler is asked, where a trial goes, what waits,
when a trial moves to another allocation at a rung, which trace events are written — is
`sim/dispatch.py`, the code the simulator runs too. This loop only turns the core's
placements into process groups on warm workers (`backend.start_group`), passes the ranks'
reports to the core and its answers back to the ranks (`backend.decide`), and tells the
core when a group ended or failed. The core's trace events go to the journal, which writes
and flushes each before the loop acts on it ("journal first, then act"), so a run killed
at any moment leaves a trace that `journal.replay` can bring a fresh scheduler back from.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasalloc.execute.api import latest_checkpoint
from nasalloc.execute.backend import Backend, Checkpointed, Ended, Failed, GroupSpec, Report
from nasalloc.execute.devices import Slot, SlotMap
from nasalloc.execute.journal import Journal
from nasalloc.sim.cluster import Allocation, ClusterSpec, DevicePool, machine
from nasalloc.sim.dispatch import INTERRUPTED, Dispatcher, Segment
from nasalloc.sim.elastic import ElasticPolicy
from nasalloc.sim.schedulers.base import Job, Scheduler
from nasalloc.sim.trace import TraceEvent
from nasalloc.sim.unshare import UnsharePolicy


@dataclass
class LoopOptions:
    entrypoint: str
    params: dict[str, Any]  # fixed training settings (train.params) merged under each trial's config
    run_dir: Path
    storage: Path | None = None  # checkpoints and trial logs (None: run_dir); every node sees it
    checkpoint_every: int = 1
    trial_timeout_s: float = 120.0
    poll_s: float = 0.5


@dataclass
class LoopStats:
    """Counts for the progress display."""

    finished: int = 0
    failed: int = 0
    best: float | None = None
    best_trial: int | None = None
    messages: list[str] = field(default_factory=list)


class SearchLoop:
    def __init__(self, scheduler: Scheduler, backend: Backend, device_ids: list[int], allocation: Allocation,
                 journal: Journal, options: LoopOptions, *, restart: list[Job] | None = None,
                 best: tuple[float, int] | None = None, elastic: ElasticPolicy | None = None,
                 unshare: UnsharePolicy | None = None,
                 on_change: Callable[[SearchLoop], None] | None = None, cluster: ClusterSpec | None = None,
                 stop: threading.Event | None = None):
        self.scheduler = scheduler
        self.backend = backend
        self.slots = SlotMap(device_ids, allocation.slots_per_device)
        # placement by the simulator's rule on the backend's devices (default: this machine, one node)
        self.pool = DevicePool(cluster or machine(len(device_ids)), allocation.ks)
        self.journal = journal
        self.opt = options
        self.stats = LoopStats()
        if best is not None:
            self.stats.best, self.stats.best_trial = best
        self.core = Dispatcher(scheduler, allocation, self.pool, launch=self._launch, emit=self._record,
                               device_ids=device_ids, checkpoint_every=options.checkpoint_every,
                               checkpoint_epoch=self._checkpoint_epoch, elastic=elastic,
                               unshare=unshare)
        for job in restart or []:
            self.core.requeue(job, INTERRUPTED)
        self.groups: dict[int, Segment] = {}  # process group id -> the segment it runs
        self.interrupted = False
        self._on_change = on_change
        self._stop = stop if stop is not None else threading.Event()  # set by `request_stop`, or by the caller's own handler

    @property
    def running(self) -> dict[int, Segment]:
        return self.core.running

    # ----- paths ---------------------------------------------------------------------------
    def checkpoint_dir(self, trial: int) -> Path:
        return (self.opt.storage or self.opt.run_dir) / "checkpoints" / f"trial_{trial:04d}"

    def log_path(self, trial: int) -> Path:
        return (self.opt.storage or self.opt.run_dir) / "logs" / f"trial_{trial:04d}.log"

    def _checkpoint_epoch(self, trial: int, at_most: int) -> int:
        return latest_checkpoint(self.checkpoint_dir(trial), at_most=at_most)

    # ----- control -------------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        """Stop launching, end running trials (journaled as interrupted); safe from a signal."""
        self._stop.set()

    def run(self) -> None:
        """Run until the search is done, or until `request_stop`."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self.request_stop)
        try:
            self.core.start(self.journal.now())
            while not self._stop.is_set() and not self.core.done:
                if self.core.stalled:
                    raise RuntimeError(f"{self.scheduler.name}: WAIT with no trial running (scheduler bug)")
                for ev in self.backend.poll(self.opt.poll_s):
                    self._handle(ev)
                if self._on_change is not None:
                    self._on_change(self)
            if self._stop.is_set() and not self.core.done:
                self._interrupt()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)

    # ----- the core's callbacks ---------------------------------------------------------------
    def _record(self, ev: TraceEvent) -> None:
        """Journal a trace event (flushed before anything acts on it) and count it for progress."""
        self.journal.append(ev)
        if ev.event in ("stop", "complete"):
            self.stats.finished += 1
        elif ev.event == "result" and ev.metric is not None:
            if self.stats.best is None or self.scheduler.score(ev.metric) > self.scheduler.score(self.stats.best):
                self.stats.best, self.stats.best_trial = ev.metric, ev.trial

    def _launch(self, seg: Segment) -> None:
        slots = self.slots.take([self.slots.device_ids[d] for d in seg.devices])
        trial = seg.trial
        self.log_path(trial).parent.mkdir(parents=True, exist_ok=True)
        spec = GroupSpec(
            trial=trial, config={**self.opt.params, **seg.config}, entrypoint=self.opt.entrypoint, slots=slots,
            start_epoch=seg.start_epoch, until_epoch=seg.until_epoch, checkpoint_dir=self.checkpoint_dir(trial),
            log_path=self.log_path(trial), checkpoint_every=self.opt.checkpoint_every, timeout_s=self.opt.trial_timeout_s,
            attempt=seg.attempt,
        )
        seg.handle = (self.backend.start_group(spec), slots)
        self.groups[seg.handle[0]] = seg

    # ----- events from the backend ---------------------------------------------------------
    def _handle(self, ev: Any) -> None:
        seg = self.groups.get(ev.group)
        if seg is None:
            return
        if isinstance(ev, Report):
            self._report(seg, ev)
        elif isinstance(ev, Checkpointed):
            pass  # the newest checkpoint is looked up on disk when it matters (failure, restart)
        elif isinstance(ev, Ended):
            self._end(seg)
            self.core.released(self.journal.now(), seg.trial)
        elif isinstance(ev, Failed):
            self._failed(seg, ev.info)

    def _report(self, seg: Segment, ev: Report) -> None:
        gid = seg.handle[0]
        test = ev.extra.get("test_metric")
        try:
            told = self.core.result(self.journal.now(), seg.trial, ev.epoch, ev.metric,
                                    test if isinstance(test, float) else None)
        except (ValueError, AssertionError) as exc:
            self.backend.kill_group(gid, f"bad report: {exc}")
            return
        self.backend.decide(gid, told.value, seg.save)

    def _end(self, seg: Segment) -> None:
        gid, slots = seg.handle
        del self.groups[gid]
        self.slots.give_back(slots)

    def _failed(self, seg: Segment, info: str) -> None:
        self._end(seg)
        tid = seg.trial
        resume = latest_checkpoint(self.checkpoint_dir(tid), at_most=seg.last_epoch)
        ended_as_decided = seg.ending and seg.told is seg.decision
        retried = self.core.failed(self.journal.now(), tid, resume, info)
        if ended_as_decided:
            self.stats.messages.append(f"trial {tid}: {info} (after its last decision; ignored)")
            return
        self.stats.failed += 1
        self.stats.messages.append(f"trial {tid} failed: {info} ({'retrying' if retried else 'dropped'})")

    def _interrupt(self) -> None:
        """Ctrl-C/SIGTERM: kill running groups; the core journals them as interrupted (resumable)."""
        self.interrupted = True
        for gid, seg in list(self.groups.items()):
            self.backend.kill_group(gid, "interrupted")
            self._end(seg)
        self.core.interrupt(self.journal.now())
        self.backend.poll(0)  # swallow the Failed events of the killed groups


__all__ = ["LoopOptions", "LoopStats", "SearchLoop", "Slot"]
