"""The run's journal (`trace.jsonl`) and how a killed run is resumed from it.

Writing: `Journal` appends one `TraceEvent` per line and flushes it before the executor acts
on the decision it records, so the file is always a valid prefix of the run's history.
Event times are seconds since the search started; a resumed run continues the clock at the
old run's last event time (its makespan), so the time spent dead is not counted and the
whole file reads as one history.

Resuming (`replay`): the scheduler is deterministic, so a scheduler built from the same
config and seed reaches the old run's state when the journaled calls are fed to it in the
same order — each start/resume the dispatch core did not make on its own is one `ask`
(which must hand out the same trial), each result one `on_result`, each fail one
`on_failure` (from the event's ``resume_epoch``). A job that waited for devices was asked
before the events journaled while it waited; its start/resume carries ``asked_after``
(`Scheduler.calls` before its ask: the rule of what counts is written there), and the
replay asks when the scheduler's count reaches it. Resumes with ``info="reallocate"`` (a
trial checkpointed and moved to another allocation at a rung) and ``info="interrupted"``
(the run was stopped under it) are the core's own and no scheduler calls (`sim/dispatch.py`).

After the replay, trials the scheduler still sees RUNNING were cut off by the kill: they get
a "pause" (interrupted) event and restart from their last checkpoint.

The replay refuses (one line, `UserError`) a journal the scheduler could not have written: a
resume needs the run's own seed, search space and scheduler settings (its run_config.yaml),
and a journal fed to a scheduler built otherwise would continue a different search under
the old one's name. Trial ids alone do not show it (every scheduler numbers trials 0, 1,
...), so three things are compared: each start's configuration with the one the scheduler
samples (another seed or space samples others), each start/resume with the job the scheduler
hands out (new trial or resumed one, from which checkpoint), and what the journal did after
each result with the scheduler's decision on it (other settings - eta, rungs, max_epochs -
decide otherwise: a "stop" where it says continue, a next epoch where it says pause).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasalloc.sim.dispatch import INTERNAL, INTERRUPTED
from nasalloc.sim.errors import UserError
from nasalloc.sim.schedulers.base import Decision, Job, Scheduler, TrialStatus
from nasalloc.sim.trace import TraceEvent, TraceWriter


class Journal:
    """Appends events to trace.jsonl with times on one clock that survives resumes."""

    def __init__(self, path: Path, time_offset: float = 0.0):
        self.path = Path(path)
        self.offset = float(time_offset)
        self._t0 = time.monotonic()
        self._writer = TraceWriter(self.path)
        self.events: list[TraceEvent] = []

    def now(self) -> float:
        return round(self.offset + time.monotonic() - self._t0, 6)

    def write(self, event: str, trial: int, *, epoch: int | None = None, metric: float | None = None,
              devices: list[int] | tuple[int, ...] = (), config: dict[str, Any] | None = None,
              test_metric: float | None = None, info: str | None = None, time_s: float | None = None) -> TraceEvent:
        ev = TraceEvent(time=self.now() if time_s is None else time_s, event=event, trial=trial, epoch=epoch,
                        metric=metric, devices=tuple(devices), config=config, test_metric=test_metric, info=info)
        self._writer.write(ev)
        self.events.append(ev)
        return ev

    def append(self, ev: TraceEvent) -> None:
        """Write an event made elsewhere (the dispatch core) as it is; flushed at once."""
        self._writer.write(ev)
        self.events.append(ev)

    def close(self) -> None:
        self._writer.close()


@dataclass
class Replayed:
    """What `replay` learnt: the old events, the clock to continue from, work to restart."""

    events: list[TraceEvent]
    makespan: float
    restart: list[Job] = field(default_factory=list)  # cut-off trials, from their checkpoint
    fixups: list[tuple[str, int, int, tuple[int, ...], str | None]] = field(default_factory=list)  # event, trial, epoch, devices, info
    calls: int = 0  # `Scheduler.calls` after the replay (the dispatch core continues the count)
    best: tuple[float, int] | None = None  # best metric so far and its trial


_MISMATCH = "resume needs the run's own seed, search space and scheduler settings (its run_config.yaml)"


def _as_journaled(config: dict[str, Any]) -> Any:
    """A configuration as the journal holds it (JSON: tuples become lists)."""
    return json.loads(json.dumps(config))


def _follows(decision: Decision, epoch: int, nxt: TraceEvent) -> bool:
    """Whether `nxt`, the trial's next journaled event, can follow a result at `epoch` that
    the scheduler answered with `decision` (`sim/dispatch.py` writes these): CONTINUE - the
    next epoch, a failure, or a pause the executor made itself (a move to another
    allocation, an interruption); PAUSE - the pause, or a stop when the scheduler stopped it
    while its checkpoint was saved; STOP - stop, or complete at max_epochs. An interruption's
    pause may follow any answer (older versions also wrote one for a trial killed after its
    final answer; the replay then writes the release it lacks)."""
    if nxt.event == "pause" and nxt.info == INTERRUPTED:
        return True
    if decision is Decision.CONTINUE:
        return ((nxt.event == "result" and nxt.epoch == epoch + 1) or nxt.event == "fail"
                or (nxt.event == "pause" and nxt.info in INTERNAL))
    if decision is Decision.PAUSE:
        return nxt.event in ("pause", "stop") and nxt.info not in INTERNAL
    return nxt.event in ("stop", "complete")


def replay(events: list[TraceEvent], scheduler: Scheduler, checkpoint_epoch: Any) -> Replayed:
    """Feed the journaled calls to a fresh `scheduler`; -> what the resumed run must do.

    `checkpoint_epoch(trial, at_most) -> int` says which checkpoint a cut-off trial has.
    Raises UserError when the journal does not match the scheduler (module docstring).
    """
    holding: dict[int, TraceEvent] = {}
    drained: set[int] = set()
    following: dict[int, TraceEvent | None] = {}  # event index -> the same trial's next event
    last_of: dict[int, int] = {}
    for i, ev in enumerate(events, start=1):
        if ev.trial in last_of:
            following[last_of[ev.trial]] = ev
        last_of[ev.trial] = i
    # asks of jobs that waited for devices, in the order they were asked: (calls before, event, index)
    late = sorted((ev.asked_after, i, ev) for i, ev in enumerate(events, start=1)
                  if ev.event in ("start", "resume") and ev.asked_after is not None)
    asked_late = set()

    def ask(ev: TraceEvent, i: int) -> None:
        job, stopped = scheduler.step_ask()
        drained.update(stopped)
        where = f"trace.jsonl event {i} ({ev.event} of trial {ev.trial})"
        if not isinstance(job, Job) or job.trial != ev.trial or job.resume != (ev.event == "resume"):
            raise UserError(f"resume: {where} does not match the scheduler's decision ({job!r}); {_MISMATCH}")
        if ev.event == "start" and _as_journaled(job.config) != ev.config:
            raise UserError(f"resume: {where} has config {json.dumps(ev.config)}, the scheduler samples "
                            f"{json.dumps(_as_journaled(job.config))} for it; {_MISMATCH}")
        if ev.event == "resume" and (ev.epoch or 0) > job.start_epoch:
            raise UserError(f"resume: {where} resumes from epoch {ev.epoch}, the scheduler resumes it from epoch "
                            f"{job.start_epoch}; {_MISMATCH}")

    def ask_late_ones() -> None:
        while late and late[0][0] <= scheduler.calls:
            _, i, ev = late.pop(0)
            ask(ev, i)
            asked_late.add(i)

    best: tuple[float, int] | None = None
    for i, ev in enumerate(events, start=1):
        where = f"trace.jsonl event {i} ({ev.event} of trial {ev.trial})"
        try:
            if ev.event in ("start", "resume"):
                if ev.info not in INTERNAL and i not in asked_late:
                    ask_late_ones()
                    if i not in asked_late:
                        ask(ev, i)
                holding[ev.trial] = ev
            elif ev.event == "result":
                ask_late_ones()
                metric = float(ev.metric if ev.metric is not None else float("nan"))
                decision, stopped = scheduler.step_result(ev.trial, int(ev.epoch or 0), metric)
                nxt = following.get(i)
                if nxt is not None and not _follows(decision, int(ev.epoch or 0), nxt):
                    raise UserError(f"resume: {where} was answered {decision.value} by the scheduler, but the journal "
                                    f"goes on with {nxt.event} at epoch {nxt.epoch}; {_MISMATCH}")
                drained.update(stopped)
                if best is None or scheduler.score(metric) > scheduler.score(best[0]):
                    best = (metric, ev.trial)
            elif ev.event == "fail":
                ask_late_ones()
                holding.pop(ev.trial, None)
                _, stopped = scheduler.step_failure(ev.trial, ev.resume_epoch or 0)
                drained.update(stopped)
            elif ev.event in ("pause", "stop", "complete"):
                holding.pop(ev.trial, None)
        except (ValueError, KeyError, AssertionError) as exc:
            raise UserError(f"resume: {where} cannot be replayed: {exc}") from None
    makespan = max((ev.time for ev in events), default=0.0)
    out = Replayed(events=events, makespan=makespan, calls=scheduler.calls, best=best)
    stops = {ev.trial for ev in events if ev.event == "stop"}
    for tid in sorted(drained - stops):
        out.fixups.append(("stop", tid, scheduler.trials[tid].last_epoch, (), None))
    final: dict[int, str] = {}
    for ev in events:
        if ev.event in ("pause", "stop", "complete", "fail"):
            final[ev.trial] = ev.event
    for tid, trial in sorted(scheduler.trials.items()):  # decided, but the release event was lost
        want = {TrialStatus.STOPPED: "stop", TrialStatus.COMPLETED: "complete"}.get(trial.status)
        if want and tid not in holding and tid not in drained and final.get(tid) != want:
            out.fixups.append((want, tid, trial.last_epoch, (), None))
    for tid, ev in sorted(holding.items()):
        trial = scheduler.trials[tid]
        closing = {TrialStatus.PAUSED: "pause", TrialStatus.STOPPED: "stop", TrialStatus.COMPLETED: "complete"}
        if trial.status in closing and tid not in drained:
            out.fixups.append((closing[trial.status], tid, trial.last_epoch, ev.devices, None))
        elif trial.status is TrialStatus.RUNNING:
            out.fixups.append(("pause", tid, trial.last_epoch, ev.devices, INTERRUPTED))
    for tid, trial in sorted(scheduler.trials.items()):
        if trial.status is TrialStatus.RUNNING:
            start = checkpoint_epoch(tid, trial.last_epoch)
            out.restart.append(Job(tid, trial.config, start, trial.until_epoch, resume=True, attempt=trial.failures))
    return out
