"""The dispatch core: one clock-free piece of code that every driver of a search runs.

The simulator (`sim/engine.py`, simpy timeouts) and the executor (`execute/loop.py`, warm
worker processes) differ only in how time passes and how an epoch gets done. Everything
else — when the scheduler is asked, where a job is placed, what waits, when a trial moves to
another allocation, which trace events are written — happens here, so a search predicted by
the simulator is the search the executor runs. No simpy, no processes, no wall clock: the
driver says what happened and when (``now``), the core decides and calls back.

A driver
- calls `start(now)` once, then, as things happen, `result(...)` (a trial reported an epoch),
  `released(...)` (a trial's job ended after the decision it was given, its devices are
  free), `failed(...)` (a trial's job crashed or hung) and, for Ctrl-C, `interrupt(now)`;
- is called back through `launch(segment)` for every placement (start the job on those
  devices) and `emit(event)` for every trace event (in the order they happen; the executor
  journals each before acting on it);
- is done when `done` is true (`stalled` says the scheduler waits with nothing running: a
  scheduler bug).

The rules (each in one place below):
- **Asking.** The scheduler is asked at dispatch points only: at the start, after a result
  answered PAUSE or STOP (a synchronous rung may be complete while the reporting trial still
  holds its devices), and after devices are released or a failure is told. It is asked while
  free capacity can hold the smallest allocation in use and no request waits. A pure
  scheduler that answered WAIT answers WAIT again until a result or failure reaches it, so it
  is not asked again before one has. A CONTINUE answer is no dispatch point: in every
  scheduler here, work appears at rung decisions, and the next release asks anyway.
- **Waiting.** A job whose devices are not free now waits, first in first out, and nothing
  new is asked while one waits, so big requests are not starved and every job is placed in
  the order it was asked. A job for a trial that is still saving the checkpoint of its last
  PAUSE waits for that save (it must resume from it), and nothing new is asked meanwhile
  either (a decision + save time, seconds in a search of hours), so that placement order is
  ask order here too. A job that waited carries ``asked_after`` in its start/resume event:
  the scheduler calls before it was asked (`Scheduler.calls` says which calls count), so a
  journal replay can ask at the same point (`execute/journal.py`).
- **Placement.** `cluster.DevicePool`: one rule for sharing 1/m, per-rung schedules and whole
  nodes. The executor's devices are a one-node cluster to it.
- **Moving a trial at a rung** (per-rung schedules, RASDA). When a trial the scheduler told
  CONTINUE is about to train an epoch whose allocation differs, the ranks are told PAUSE
  instead (save a checkpoint); on release a "pause" event with ``info="reallocate"`` is
  written and a request to resume on the new allocation waits first in first out; its
  "resume" carries ``info="reallocate"`` too. The scheduler never sees the move. Under the
  ``rerun`` promotion semantics a promoted trial retrains its old epochs at the allocation of
  its first new epoch (the budget decides the allocation of the whole job).
- **Elastic allocation** (``gpus_per_trial=elastic``, `sim/elastic.py`). At a trial's epoch
  boundary, when the scheduler has no work for the free devices, the policy may move it to a
  larger k the same way (a "reallocate" pause and resume); the capacity it will take is
  promised until then, and if the larger k cannot be placed when it resumes it resumes at its
  old k.
- **Moving off a shared device** (k = 1/m, ``unshare``, `sim/unshare.py`). At the epoch
  boundary of a trial that shares its device, when the scheduler has no work for the free
  devices and placement would now put the trial on a device with fewer trials (an idle one,
  at 1/2), it moves there the same way (a "reallocate" pause and resume) if the policy says
  the move pays; its share of the new device is promised until it resumes.
- **Stops of paused trials** (``stopped`` of every `Scheduler.step_ask` / ``step_result`` /
  ``step_failure``) get a "stop" event at once, or, for a trial still saving its PAUSE
  checkpoint, as its release event instead of "pause".
- **Failures.** A crash after the trial's final decision (PAUSE or STOP) changes nothing: it
  is ended as decided. Otherwise a "fail" event (its ``resume_epoch``: the newest
  checkpoint) and the scheduler decides retry or drop.
- **Checkpoints.** Ranks save on PAUSE, on a trial's completion, and every
  ``checkpoint_every`` epochs while they continue (`Segment.save`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nasalloc.sim.cluster import Allocation, DevicePool
from nasalloc.sim.schedulers.base import FINISHED, Decision, Job, Scheduler
from nasalloc.sim.trace import TraceEvent

if TYPE_CHECKING:
    from nasalloc.sim.elastic import ElasticPolicy
    from nasalloc.sim.unshare import UnsharePolicy

REALLOCATE = "reallocate"  # info of the pause/resume pair that moves a trial to another allocation
INTERRUPTED = "interrupted"  # info of the pause (and later resume) of a trial cut off by Ctrl-C or a kill
INTERNAL = (REALLOCATE, INTERRUPTED)  # resumes that are the driver's own, not the scheduler's jobs
WAITED = "waited for devices"  # info of a start/resume whose job was asked earlier (it carries asked_after)

_CONTINUE, _PAUSE, _STOP = Decision.CONTINUE, Decision.PAUSE, Decision.STOP


class Segment:
    """One placement of one trial: a job (or part of one) on fixed devices.

    The driver reads `trial`, `config`, `start_epoch` (the checkpoint it starts from; 0:
    scratch), `until_epoch`, `k`, `devices`, `attempt` and, after `result`, `save`; it may
    keep its own data in `handle` (a simpy process, a process group id). Plain slots, no
    properties: the simulator reads them once per epoch.
    """

    __slots__ = ("job", "trial", "config", "until_epoch", "attempt", "k", "devices", "labels", "start_epoch",
                 "since", "first_new", "move_at", "last_epoch", "decision", "told", "move_to", "save",
                 "stopped_while_saving", "reserved", "reserved_k", "handle")

    def __init__(self, job: Job, k: float, devices: tuple[int, ...], labels: tuple[int, ...], start_epoch: int,
                 since: float, first_new: int, move_at: int):
        self.job = job
        self.trial = job.trial
        self.config = job.config
        self.until_epoch = job.until_epoch
        self.attempt = job.attempt
        self.k = k  # devices per trial, float(Fraction) (see Dispatcher.k_of_epoch)
        self.devices = devices  # placement indices (the pool's)
        self.labels = labels  # the driver's device ids, as the trace shows them
        self.start_epoch = start_epoch
        self.since = since
        self.first_new = first_new  # first epoch the scheduler has not seen (earlier ones are replays)
        self.move_at = move_at  # first epoch of this job at another allocation (past until_epoch: none)
        self.last_epoch = start_epoch  # newest epoch reported in this segment
        self.decision: Decision | None = None  # the scheduler's answer to the last result
        self.told: Decision | None = None  # what the ranks were told (PAUSE instead of CONTINUE to move)
        self.move_to: float | None = None  # the allocation it moves to after a REALLOCATE pause
        self.save = False  # whether the ranks save a checkpoint after the last result
        self.stopped_while_saving = False
        self.reserved: tuple[int, ...] = ()  # free devices held for a move until it resumes (elastic, unshare)
        self.reserved_k = 1.0  # the share of each reserved device held (a whole one for elastic growth)
        self.handle: Any = None

    @property
    def ending(self) -> bool:
        """Told to pause or stop: the job ends after its save; its devices are not free yet."""
        return self.told is not None and self.told is not _CONTINUE


@dataclass
class _Request:
    """A job waiting for devices."""

    job: Job
    k: float
    first_new: int
    info: str | None = None  # REALLOCATE / INTERRUPTED for the driver's own resumes
    asked_after: int | None = None  # set when an asked job waits (journal replay needs it)
    fallback: float | None = None  # an elastic move: the k it had, if the larger one cannot be placed


class Dispatcher:
    """The clock-free dispatch core (module docstring). One instance per search."""

    def __init__(self, scheduler: Scheduler, allocation: Allocation, pool: DevicePool, *,
                 launch: Callable[[Segment], None], emit: Callable[[TraceEvent], None],
                 device_ids: list[int] | tuple[int, ...] | None = None, checkpoint_every: int = 1,
                 checkpoint_epoch: Callable[[int, int], int] | None = None,
                 elastic: ElasticPolicy | None = None, unshare: UnsharePolicy | None = None):
        self.sched = scheduler
        self.allocation = allocation
        self.pool = pool
        self._launch = launch
        self._emit = emit
        self._ids = None if device_ids is None else tuple(device_ids)  # pool index -> the driver's device id
        self.checkpoint_every = int(checkpoint_every)
        self._checkpoint_epoch = checkpoint_epoch
        self.max_epochs = scheduler.max_epochs
        # The allocation of every epoch (index e), so the result path is one list lookup. As
        # float(Fraction): the same value for the same fraction (a cheap dictionary key for the
        # drivers' tables), and the pool turns it into whole capacity units exactly.
        self.k_of_epoch = allocation.k_of_epochs(scheduler.milestones, self.max_epochs)
        # change_after[e]: the first epoch after e whose allocation differs from epoch e's
        top = self.max_epochs + 1
        self.change_after = [top + 1] * (top + 1)
        for e in range(top - 1, -1, -1):
            same = self.k_of_epoch[e + 1] == self.k_of_epoch[e]
            self.change_after[e] = self.change_after[e + 1] if same else e + 1
        self.min_units = min(pool.units(float(k)) for k in allocation.ks)
        self.running: dict[int, Segment] = {}  # trial -> its segment
        self.waiting: deque[_Request] = deque()
        self.after_save: dict[int, _Request] = {}  # promoted while still saving its PAUSE checkpoint
        self.finished = False  # the scheduler answered FINISHED
        self.closed = False  # interrupted: nothing more is placed or asked
        self._waited_at = -1  # `Scheduler.calls` when the scheduler last answered WAIT
        self.busy_device_seconds = 0.0  # sum over segments of k x held time
        self.elastic = elastic  # the growth decision under gpus_per_trial=elastic (sim/elastic.py)
        # moves off shared devices (sim/unshare.py): only where placement spreads shares over the
        # devices (best fit packs them on purpose, to keep whole devices for later rungs)
        self.unshare = unshare if pool.spread and elastic is None else None

    # ----- state ------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """Nothing runs, nothing waits."""
        return not self.running and not self.waiting and not self.after_save

    @property
    def done(self) -> bool:
        return self.finished and self.idle

    @property
    def stalled(self) -> bool:
        """Nothing runs or waits, yet the scheduler has not finished: it answers WAIT forever."""
        return self.idle and not self.finished

    # ----- driver -> core ----------------------------------------------------------------
    def start(self, now: float) -> None:
        self._dispatch(now)

    def requeue(self, job: Job, info: str = INTERRUPTED) -> None:
        """A job the driver restarts on its own (a resumed run's cut-off trials); goes first."""
        first_new = self.sched.trials[job.trial].last_epoch + 1
        k = self.k_of_epoch[min(max(job.start_epoch + 1, first_new), self.max_epochs + 1)]
        self.waiting.append(_Request(job, k, first_new, info))

    def result(self, now: float, trial: int, epoch: int, metric: float, test_metric: float | None = None) -> Decision:
        """A trial reported `epoch`; -> what its ranks are told (CONTINUE, PAUSE or STOP).

        Raises ValueError when the scheduler refuses the result (the driver fails the job).
        """
        seg = self.running[trial]
        decision, stopped = self.sched.step_result(trial, epoch, metric)
        seg.last_epoch = epoch
        self._emit(TraceEvent(time=now, event="result", trial=trial, epoch=epoch, metric=metric, devices=seg.labels,
                              test_metric=test_metric))
        if stopped:
            self._stopped(now, stopped)
        told = decision
        if decision is _CONTINUE:
            if epoch + 1 >= seg.move_at:
                told, seg.move_to = _PAUSE, self.k_of_epoch[min(max(epoch + 1, seg.first_new), self.max_epochs + 1)]
            elif self.elastic is not None and self.pool.free_units > 0:
                k = self._grow(now, seg, epoch)
                if k is not None:
                    told, seg.move_to = _PAUSE, k
            elif self.unshare is not None and seg.k < 1 and self._unshare(now, seg, epoch):
                told, seg.move_to = _PAUSE, seg.k
            seg.save = epoch % self.checkpoint_every == 0 or told is _PAUSE
        else:
            seg.save = decision is _PAUSE or epoch >= self.max_epochs  # keep a completed trial's model
        seg.decision, seg.told = decision, told
        if decision is not _CONTINUE:
            self._dispatch(now)  # a rung may be complete: idle devices start at once
        return told

    def released(self, now: float, trial: int) -> None:
        """The trial's job ended as told (after its save): record it, free its devices."""
        seg = self.running.pop(trial)
        devices = seg.labels
        tid, epoch = seg.trial, seg.last_epoch
        if seg.decision is _CONTINUE and seg.told is _PAUSE:
            self._emit(TraceEvent(time=now, event="pause", trial=tid, epoch=epoch, devices=devices, info=REALLOCATE))
            until = self.sched.trials[tid].until_epoch
            job = Job(tid, seg.config, epoch, until, resume=True, attempt=seg.attempt)
            grows = self.elastic is not None  # its allocation has no rungs: every move is a growth
            promised = grows or bool(seg.reserved)
            self._unreserve(seg)  # with its own devices (freed below), its new placement is free
            request = _Request(job, seg.move_to, seg.first_new, REALLOCATE,  # type: ignore[arg-type]
                               fallback=seg.k if grows else None)
            if promised:  # its devices were reserved for it: it goes before anything that came since
                self.waiting.appendleft(request)
            else:
                self.waiting.append(request)
        elif seg.decision is _PAUSE and not seg.stopped_while_saving:
            self._emit(TraceEvent(time=now, event="pause", trial=tid, epoch=epoch, devices=devices))
        else:  # a STOP at max_epochs is a completed trial (`Scheduler.on_result`)
            ended = "complete" if epoch >= self.max_epochs else "stop"
            self._emit(TraceEvent(time=now, event=ended, trial=tid, epoch=epoch, devices=devices))
        self.pool.release(seg.devices, seg.k)
        self.busy_device_seconds += seg.k * (now - seg.since)
        if self.after_save:
            waiting = self.after_save.pop(tid, None)
            if waiting is not None:
                self.waiting.append(waiting)
        self._dispatch(now)

    def failed(self, now: float, trial: int, resume_epoch: int, info: str) -> bool:
        """The trial's job crashed or hung; `resume_epoch`: its newest usable checkpoint.

        -> False when the crash came after its final decision (ended as decided, nothing to
        retry), else whether the scheduler retries it.
        """
        seg = self.running[trial]
        if seg.decision is not None and seg.decision is not _CONTINUE and seg.told is seg.decision:
            self.released(now, trial)
            return False
        del self.running[trial]
        self._unreserve(seg)
        self._emit(TraceEvent(time=now, event="fail", trial=trial, epoch=seg.last_epoch, devices=seg.labels,
                              resume_epoch=resume_epoch, info=info))
        self._free(now, seg)
        retried, stopped = self.sched.step_failure(trial, resume_epoch)
        if stopped:
            self._stopped(now, stopped)
        self._dispatch(now)
        return retried

    def interrupt(self, now: float) -> None:
        """Ctrl-C / SIGTERM: every running trial ends now; resumable from the journal.

        A trial whose final decision was already given ends as decided; the others get a
        "pause" with ``info="interrupted"``. Nothing new is placed.
        """
        self.closed = True
        self.waiting.clear()
        self.after_save.clear()
        for tid, seg in list(self.running.items()):
            if seg.decision is not None and seg.decision is not _CONTINUE and seg.told is seg.decision:
                self.released(now, tid)
                continue
            del self.running[tid]
            self._unreserve(seg)
            self._emit(TraceEvent(time=now, event="pause", trial=tid, epoch=seg.last_epoch, devices=seg.labels,
                                  info=INTERRUPTED))
            self._free(now, seg)

    # ----- the rules ----------------------------------------------------------------------
    def _free(self, now: float, seg: Segment) -> None:
        self.pool.release(seg.devices, seg.k)
        self.busy_device_seconds += seg.k * (now - seg.since)

    def _grow(self, now: float, seg: Segment, epoch: int) -> float | None:
        """Elastic: the k `seg` moves to, when the free devices would otherwise idle."""
        self._dispatch(now)  # the result may have made work: it goes first
        pool = self.pool
        if self.waiting or self.after_save or pool.free_units <= 0:
            return None
        if not self.finished and self._waited_at != self.sched.calls:
            return None  # not asked since the last change (no capacity for the smallest job): no idle devices
        k = self.elastic.grow_to(self, seg, epoch)  # type: ignore[union-attr]
        if k is None:
            return None
        # Reserve now the free devices its new placement adds to its own, so that no other
        # decision counts on them; they join it when its save is done (`released`).
        target = pool.move_target(seg.devices, seg.k, k)  # placeable: the policy checked
        seg.reserved = tuple(d for d in target if d not in seg.devices)  # type: ignore[union-attr]
        for d in seg.reserved:
            pool.occupy((d,), 1.0)
        return k

    def _unshare(self, now: float, seg: Segment, epoch: int) -> bool:
        """Whether `seg` (k < 1) moves off its shared device now (`sim/unshare.py`); if so, its
        share of the target device is reserved until it resumes there."""
        pool = self.pool
        device, u = seg.devices[0], pool.units(seg.k)
        free_here = pool.dev_free[device]
        if free_here + u >= pool.L or pool.free_units - free_here <= u or max(pool.dev_free) <= free_here + u:
            return False  # alone on its device, or no device where it would have fewer beside it
        self._dispatch(now)  # the result may have made work: it goes first
        if self.waiting or self.after_save:
            return False
        if not self.finished and self._waited_at != self.sched.calls:
            return False  # not asked since the last change (no room for the smallest job): no idle capacity
        target = pool.move_target(seg.devices, seg.k, seg.k)
        if target is None or target == seg.devices:
            return False
        if not self.unshare.pays(self, seg, epoch, target[0]):  # type: ignore[union-attr]
            return False
        pool.occupy(target, seg.k)
        seg.reserved, seg.reserved_k = target, seg.k
        return True

    def _unreserve(self, seg: Segment) -> None:
        for d in seg.reserved:
            self.pool.release((d,), seg.reserved_k)
        seg.reserved = ()

    def _stopped(self, now: float, stopped: tuple[int, ...]) -> None:
        """"stop" for PAUSED trials the scheduler stopped; a trial still saving its PAUSE
        checkpoint ends with "stop" instead of "pause" when the save is done."""
        trials = self.sched.trials
        for tid in stopped:
            seg = self.running.get(tid)
            if seg is not None and seg.ending:
                seg.stopped_while_saving = True
            else:
                self._emit(TraceEvent(time=now, event="stop", trial=tid, epoch=trials[tid].last_epoch))

    def _dispatch(self, now: float) -> None:
        """Place waiting requests first in first out, then ask the scheduler for new work."""
        if self.closed:
            return
        pool, waiting = self.pool, self.waiting
        while waiting:
            req = waiting[0]
            k = req.k
            devices = pool.place(k)
            if devices is None and req.fallback is not None:
                k = req.fallback
                devices = pool.place(k)
            if devices is None:
                return
            waiting.popleft()
            self._place(now, req.job, k, req.first_new, devices, req.info, req.asked_after)
        if self.finished or self.after_save:
            return
        sched, k_of_epoch, top = self.sched, self.k_of_epoch, self.max_epochs + 1
        while pool.free_units >= self.min_units:
            if self._waited_at == sched.calls:
                return  # WAIT, and nothing told since: a pure state machine answers the same
            job, stopped = sched.step_ask()
            if stopped:
                self._stopped(now, stopped)
            if not isinstance(job, Job):
                self.finished = job is FINISHED
                self._waited_at = sched.calls
                return
            first_new = sched.trials[job.trial].last_epoch + 1
            k = k_of_epoch[min(max(job.start_epoch + 1, first_new), top)]  # its first epoch new to the scheduler
            if job.trial in self.running:  # promoted while still saving its checkpoint: resume after
                self.after_save[job.trial] = _Request(job, k, first_new, asked_after=sched.calls - 1)
                return
            devices = pool.place(k)
            if devices is None:
                waiting.append(_Request(job, k, first_new, asked_after=sched.calls - 1))
                return
            self._place(now, job, k, first_new, devices, None, None)

    def _place(self, now: float, job: Job, k: float, first_new: int, devices: tuple[int, ...], info: str | None,
               asked_after: int | None) -> None:
        start = job.start_epoch
        if start > 0 and self._checkpoint_epoch is not None:
            start = self._checkpoint_epoch(job.trial, start)
        ids = self._ids
        labels = devices if ids is None else tuple(ids[d] for d in devices)
        move_at = self.change_after[min(max(start + 1, first_new), self.max_epochs + 1)]
        seg = Segment(job, k, devices, labels, start, now, first_new, move_at)
        self.running[job.trial] = seg
        note = info if asked_after is None else WAITED
        if job.resume or info is not None:
            self._emit(TraceEvent(time=now, event="resume", trial=job.trial, epoch=start, devices=labels,
                                  asked_after=asked_after, info=note))
        else:
            self._emit(TraceEvent(time=now, event="start", trial=job.trial, epoch=0, devices=labels, config=job.config,
                                  asked_after=asked_after, info=note))
        self._launch(seg)
