"""The scheduler contract shared by the simulator and the real executor.

A scheduler is a pure, deterministic state machine: no simpy, no torch, no clock. Whoever
drives it (the simpy engine with simulated time, the executor with real processes) does:

    job, stopped = scheduler.step_ask()            # Job | WAIT | FINISHED
    ...train job.trial from job.start_epoch, reporting every epoch...
    decision, stopped = scheduler.step_result(trial, epoch, metric)   # CONTINUE | PAUSE | STOP
    ...or, if the training crashed:
    retried, stopped = scheduler.step_failure(trial, resume_epoch)

Each ``step_*`` call is the state machine's ``ask`` / ``on_result`` / ``on_failure`` plus
what drivers must learn after every one of them: the paused trials it stopped (``stopped``,
see below; a driver cannot forget to ask for them) and the count of calls that may have
changed the scheduler's state (`Scheduler.calls`, the rule is written there).

Semantics every implementation keeps:
- Epochs are counted from 1; ``epoch`` in a result is the number of epochs trained so far.
- A job trains epochs ``start_epoch + 1 .. until_epoch``. At ``until_epoch`` the scheduler
  answers PAUSE (the trial may be resumed later) or STOP; it never answers CONTINUE there.
  A trial reaching ``max_epochs`` is answered STOP — the driver records that as "complete".
- ``start_epoch`` > 0 means "load the checkpoint written at that epoch". Under the
  ``rerun`` promotion semantics a promoted trial restarts from 0 with a larger budget; a
  result for an epoch the scheduler has already seen from that trial is a replay and is not
  recorded twice (it gets CONTINUE until the job's ``until_epoch``).
- WAIT means "nothing to start now, ask again when something changes" (a synchronous rung
  is not complete yet); FINISHED means no job will ever come again and none is running.
  An ``ask`` that answers WAIT changes no state (no randomness drawn), so a journal replay
  may skip it and asking again before anything changed answers WAIT again.
- A trial that is PAUSED can later be stopped without reporting anything (a synchronous
  HyperBand rung completes and it is not among the top 1/eta; the search ends while it
  waits for a promotion that will never come). Such trials are collected and handed out
  once by ``drain_stopped()``; drivers record a "stop" event (epoch =
  ``trials[id].last_epoch``) for each. Each id is returned exactly once; the trial never
  gets a job again, so its checkpoint may be deleted. A trial that is running gets its
  STOP as the answer to ``on_result`` instead, never through here. When ``ask`` returns
  FINISHED every trial is STOPPED, COMPLETED or DROPPED.
- ``on_failure`` for a trial whose job already got PAUSE or STOP (it crashed while saving)
  does not undo that answer: a paused trial stays paused (or is dropped when out of
  retries) and resumes from the checkpoint given; a finished trial is left alone.
- Metrics are compared through `score` (higher is better) so "max" and "min" share code.
- Randomness comes only from the `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from nasalloc.sim.config import require
from nasalloc.sim.space import Config, SearchSpace


@dataclass
class SchedulerConfig:
    """Settings every scheduler has; a scheduler's config extends it.

    No field has a default: the values live in one place, the shipped conf/scheduler/<name>.yaml
    (`nasalloc.sim.config.shipped("scheduler", name)` for code that builds a config itself).
    """

    name: str  # the registry key: asha | hyperband | bohb | random
    n_trials: int  # trials started in all (the search's budget)
    max_epochs: int  # a trial that survives every rung trains this many epochs
    mode: str  # metric direction: max | min
    max_retries: int  # a failed trial is retried this often, then dropped
    promotion: str  # continue (resume from checkpoint) | rerun (retrain from scratch)

    def __post_init__(self) -> None:
        require(self.n_trials >= 1, f"n_trials={self.n_trials}: must be >= 1")
        require(self.max_epochs >= 1, f"max_epochs={self.max_epochs}: must be >= 1")
        require(self.mode in ("max", "min"), f"mode={self.mode}: allowed: max, min")
        require(self.max_retries >= 0, f"max_retries={self.max_retries}: must be >= 0")
        require(self.promotion in ("continue", "rerun"), f"promotion={self.promotion}: allowed: continue, rerun")


@dataclass
class LadderConfig(SchedulerConfig):
    """Schedulers with rungs at min_epochs * eta^i (ASHA, HyperBand, BOHB)."""

    min_epochs: int  # first rung (Ray: grace_period)
    eta: int  # reduction factor: the top 1/eta go on

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.min_epochs >= 1, f"min_epochs={self.min_epochs}: must be >= 1")
        require(self.max_epochs >= self.min_epochs, f"max_epochs={self.max_epochs}: must be >= min_epochs ({self.min_epochs})")
        require(self.eta >= 2, f"eta={self.eta}: must be an integer >= 2")


class Decision(enum.Enum):
    """What the driver does with a trial after a result."""

    CONTINUE = "continue"
    PAUSE = "pause"
    STOP = "stop"


class TrialStatus(enum.Enum):
    PENDING = "pending"  # queued to (re)start, no devices yet
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"  # early-stopped by the scheduler
    COMPLETED = "completed"  # reached max_epochs
    DROPPED = "dropped"  # failed more often than the retry limit allows


@dataclass(frozen=True)
class Job:
    """One piece of work: train `trial` from `start_epoch` (checkpoint) through `until_epoch`."""

    trial: int
    config: Config
    start_epoch: int
    until_epoch: int
    resume: bool  # False for the trial's very first job (trace event "start" vs "resume")
    attempt: int = 0  # 0 for a normal job, n for the n-th retry after a failure

    def __post_init__(self) -> None:
        if not 0 <= self.start_epoch < self.until_epoch:
            raise ValueError(f"job for trial {self.trial}: need 0 <= start_epoch < until_epoch, got {self.start_epoch}, {self.until_epoch}")


class _Wait:
    def __repr__(self) -> str:
        return "WAIT"


class _Finished:
    def __repr__(self) -> str:
        return "FINISHED"


WAIT = _Wait()
FINISHED = _Finished()
Ask = Job | _Wait | _Finished

_A = TypeVar("_A")
_NONE_STOPPED: tuple[int, ...] = ()


class Step(NamedTuple, Generic[_A]):
    """A driver's scheduler call: its answer, and the PAUSED trials it stopped (in order)."""

    answer: _A
    stopped: tuple[int, ...]


@dataclass
class Trial:
    """The scheduler's record of one trial; drivers may read it, never write it."""

    id: int
    config: Config
    bracket: int = 0
    status: TrialStatus = TrialStatus.PENDING
    last_epoch: int = 0  # highest epoch whose result was recorded
    until_epoch: int = 0  # budget of the current/last job
    failures: int = 0
    metrics: dict[int, float] = field(default_factory=dict)  # epoch -> metric as reported
    # Newest usable checkpoint when a failure after a PAUSE left it below last_epoch; None: at last_epoch.
    checkpoint_epoch: int | None = None


def rung_index(milestones: list[int], next_epoch: int) -> int:
    """How many milestones lie strictly before `next_epoch` (the epoch about to be trained).

    Used for per-rung allocation schedules: epochs 1..m0 run at schedule[0], epochs
    m0+1..m1 at schedule[1], and so on (the last entry covers everything after).
    """
    return sum(1 for m in milestones if m < next_epoch)


class Searcher(abc.ABC):
    """What to try next ("when to stop" is the scheduler's job, this is the other half)."""

    @abc.abstractmethod
    def suggest(self, budget: int) -> Config:
        """A new configuration, to be trained first up to `budget` epochs."""

    def observe(self, config: Config, budget: int, score: float) -> None:  # noqa: B027
        """A result at `budget` epochs (score: higher is better). Random search ignores it."""


class RandomSearcher(Searcher):
    def __init__(self, space: SearchSpace, rng: np.random.Generator):
        self.space = space
        self.rng = rng

    def suggest(self, budget: int) -> Config:
        return self.space.sample(self.rng)


class Scheduler(abc.ABC):
    """Common bookkeeping; subclasses implement `ask` and the decision in `_decide`."""

    name: str = "base"

    def __init__(self, searcher: Searcher, *, max_epochs: int, mode: str = "max", max_retries: int = 0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: allowed: max, min")
        self.searcher = searcher
        self.max_epochs = int(max_epochs)
        self.mode = mode
        self.max_retries = int(max_retries)
        self.trials: dict[int, Trial] = {}
        self._retry_queue: list[Job] = []
        self._stopped_while_paused: list[int] = []
        # Scheduler calls that may have changed the state, counted by the `step_*` calls. The
        # rule, the one both the dispatch core (`sim/dispatch.py`) and the journal replay
        # (`execute/journal.py`) follow: every `on_result` and every `on_failure` counts, and
        # an `ask` counts when it hands out a job; an ask answering WAIT changes nothing (it
        # draws no randomness, so a replay may skip it) and one answering FINISHED ends the
        # search, so neither counts. A job that waited for devices records the count before
        # its ask (trace ``asked_after``), and the replay asks when it has replayed as many;
        # a count unchanged since a WAIT means the scheduler would answer WAIT again.
        self.calls = 0

    # ----- what subclasses provide -------------------------------------------------------
    @property
    def milestones(self) -> list[int]:
        """Epochs at which the scheduler may stop or pause trials (rung levels), ascending.

        Excludes max_epochs. Drivers use it for per-rung allocation schedules.
        """
        return []

    @abc.abstractmethod
    def _next_job(self) -> Ask:
        """The next new or promoted job, WAIT or FINISHED (retries are handled here in base)."""

    @abc.abstractmethod
    def _decide(self, trial: Trial, epoch: int, score: float) -> Decision:
        """Decision for a new (not replayed) result; the result is already in `trial.metrics`."""

    def _on_dropped(self, trial: Trial) -> None:  # noqa: B027
        """Hook: a trial was dropped after too many failures (synchronous rungs must not wait for it)."""

    # ----- the public interface ----------------------------------------------------------
    def score(self, metric: float) -> float:
        """Higher is better, whatever the mode."""
        return metric if self.mode == "max" else -metric

    def ask(self) -> Ask:
        if self._retry_queue:
            job = self._retry_queue.pop(0)
            self.trials[job.trial].status = TrialStatus.RUNNING
            return job
        job = self._next_job()
        if isinstance(job, Job):
            trial = self.trials[job.trial]
            if trial.status not in (TrialStatus.PENDING, TrialStatus.PAUSED):
                raise AssertionError(f"{self.name}: job for trial {trial.id} which is {trial.status.value}")
            trial.status = TrialStatus.RUNNING
            trial.until_epoch = job.until_epoch
        elif job is FINISHED:
            # Nothing will resume a trial still waiting at a rung: tell the drivers it stopped.
            for trial in self.trials.values():
                if trial.status is TrialStatus.PAUSED:
                    self._stop_paused(trial)
        return job

    def drain_stopped(self) -> list[int]:
        """Ids of PAUSED trials that were stopped since the last call (each id once, in order).

        Drivers get them from the `step_*` calls; this is the state machine's half.
        """
        stopped, self._stopped_while_paused = self._stopped_while_paused, []
        return stopped

    def _stopped(self) -> tuple[int, ...]:
        if not self._stopped_while_paused:
            return _NONE_STOPPED
        return tuple(self.drain_stopped())

    def step_ask(self) -> Step[Ask]:
        """`ask`, as a driver calls it (module docstring)."""
        job = self.ask()
        if isinstance(job, Job):
            self.calls += 1
        return Step(job, self._stopped())

    def step_result(self, trial_id: int, epoch: int, metric: float) -> Step[Decision]:
        """`on_result`, as a driver calls it (module docstring); raises as `on_result` does."""
        decision = self.on_result(trial_id, epoch, metric)
        self.calls += 1
        return Step(decision, self._stopped())

    def step_failure(self, trial_id: int, resume_epoch: int = 0) -> Step[bool]:
        """`on_failure`, as a driver calls it (module docstring)."""
        retried = self.on_failure(trial_id, resume_epoch)
        self.calls += 1
        return Step(retried, self._stopped())

    def on_result(self, trial_id: int, epoch: int, metric: float) -> Decision:
        trial = self.trials[trial_id]
        if trial.status is not TrialStatus.RUNNING:
            raise ValueError(f"result for trial {trial_id} which is {trial.status.value}, not running")
        if not 1 <= epoch <= trial.until_epoch:
            raise ValueError(f"result for trial {trial_id} at epoch {epoch}, outside its job (1..{trial.until_epoch})")
        if epoch <= trial.last_epoch:  # replay after a rerun-from-scratch promotion or a retry
            return Decision.CONTINUE if epoch < trial.until_epoch else self._finish_replay(trial)
        trial.metrics[epoch] = float(metric)
        trial.last_epoch = epoch
        trial.checkpoint_epoch = None
        decision = self._decide(trial, epoch, self.score(float(metric)))
        if decision is Decision.CONTINUE and epoch >= trial.until_epoch:
            raise AssertionError(f"{self.name}: CONTINUE at the end of trial {trial_id}'s job")
        if decision is Decision.STOP:
            trial.status = TrialStatus.COMPLETED if epoch >= self.max_epochs else TrialStatus.STOPPED
        elif decision is Decision.PAUSE:
            trial.status = TrialStatus.PAUSED
        return decision

    def _finish_replay(self, trial: Trial) -> Decision:
        """A replayed result at the job's end (cannot normally happen: jobs end past last_epoch)."""
        trial.status = TrialStatus.PAUSED
        return Decision.PAUSE

    def on_failure(self, trial_id: int, resume_epoch: int = 0) -> bool:
        """The trial's job crashed; `resume_epoch` is its last usable checkpoint (0: none).

        For a RUNNING trial: returns True when it is queued again (it comes out of the next
        `ask` as a job with ``attempt`` > 0), False when it has used up its retries and is
        dropped.

        A crash after the scheduler already answered PAUSE or STOP for the job (e.g. while
        the worker saved its checkpoint) does not undo that answer. A PAUSED trial stays
        paused and the failure counts: True means it is kept and, when resumed, starts from
        `resume_epoch` (earlier epochs are replayed); False means it is dropped (a
        synchronous rung no longer counts on it). A STOPPED, COMPLETED or DROPPED trial is
        left as it is and False is returned.
        """
        trial = self.trials[trial_id]
        if trial.status in (TrialStatus.STOPPED, TrialStatus.COMPLETED, TrialStatus.DROPPED):
            return False
        if trial.status is TrialStatus.PENDING:
            raise ValueError(f"failure of trial {trial_id} which is pending (no job runs for it)")
        trial.failures += 1
        if trial.failures > self.max_retries:
            trial.status = TrialStatus.DROPPED
            self._on_dropped(trial)
            return False
        resume_epoch = min(max(int(resume_epoch), 0), trial.last_epoch)
        if trial.status is TrialStatus.PAUSED:
            trial.checkpoint_epoch = resume_epoch
            return True
        trial.status = TrialStatus.PENDING
        self._retry_queue.append(
            Job(trial.id, trial.config, resume_epoch, trial.until_epoch, resume=True, attempt=trial.failures)
        )
        return True

    # ----- helpers for subclasses --------------------------------------------------------
    def _new_trial(self, config: Config, bracket: int = 0) -> Trial:
        trial = Trial(id=len(self.trials), config=dict(config), bracket=bracket)
        self.trials[trial.id] = trial
        return trial

    def _resume_start(self, trial: Trial, promotion: str) -> int:
        """Where a promoted trial's job starts: 0 under ``rerun``, else its last epoch (or the
        older checkpoint a failure after its PAUSE left)."""
        if promotion == "rerun":
            return 0
        if trial.checkpoint_epoch is not None:
            return min(trial.checkpoint_epoch, trial.last_epoch)
        return trial.last_epoch

    def _stop_paused(self, trial: Trial) -> None:
        """Stop a trial that waits PAUSED; drivers learn it from `drain_stopped`."""
        if trial.status is not TrialStatus.PAUSED:
            raise AssertionError(f"{self.name}: stop of trial {trial.id} which is {trial.status.value}, not paused")
        trial.status = TrialStatus.STOPPED
        self._stopped_while_paused.append(trial.id)

    def _has_live_trials(self) -> bool:
        # newest first: the trials still running are mostly the recent ones, so the scan
        # (asked after every result once the trial budget is spent) usually stops early
        live = (TrialStatus.RUNNING, TrialStatus.PENDING)
        return bool(self._retry_queue) or any(t.status in live for t in reversed(self.trials.values()))

    def state(self) -> dict[str, Any]:
        """A small, JSON-friendly snapshot for progress displays and tests."""
        counts: dict[str, int] = {}
        for t in self.trials.values():
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
        return {"scheduler": self.name, "trials": len(self.trials), **counts}
