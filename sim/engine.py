"""The discrete-event simulation of one search at one allocation (simpy).

`simulate(spec) -> SimulationResult` is a pure function (desmod style): no file I/O, no wall
clock, no global state; the spec is a small picklable record, so `recommend` can run it
thousands of times in worker processes. The same spec gives the same trace, byte for byte.

The model:
- Devices are a placement-aware resource (`cluster.DevicePool`); a trial is a simpy process
  that holds its devices from its "start"/"resume" event to its "pause"/"stop"/"complete".
- Whenever capacity frees, and right after every result answered PAUSE or STOP (which may
  complete a synchronous rung while other devices idle), the scheduler is asked for work
  until it answers WAIT/FINISHED or the free capacity cannot hold the smallest allocation in
  use. The scheduler is a pure state machine, so after a WAIT it is asked again only once a
  new result has reached it. (A CONTINUE answer triggers no ask: in every scheduler here,
  work appears at rung decisions, and the next release asks anyway.) A job whose allocation does not fit now waits first
  in first out, and nothing new is asked while one waits. Idle devices stay idle: a
  synchronous rung that waits costs what it costs.
- A job on k devices: start-up cost(k) (+ checkpoint restore when it starts from a
  checkpoint), then one epoch after another of epoch_time(k) x config_factor(config)
  (evaluation included; the factor is the profile's `config_cost`, 1 without it, computed
  once per trial; start-up, checkpoint and decision costs are not scaled); each
  epoch ends with a "result", then the scheduler's decision takes `decision_latency_s`
  with the devices held. PAUSE adds a checkpoint save before the devices are released.
- Sharing (k = 1/m): the trials training on one device share it as a processor: while j of
  them are in an epoch there, each progresses at 1 / sharing(j) of its alone speed (the
  profile's sharing curve, `EpochTimeModel.sharing_slowdown`), and their rates change the
  moment one starts or ends an epoch. A trial alone on a device trains at full speed even
  if it reserved 1/m of it; a full device gives epoch_time(1/m) per epoch. Start-up,
  checkpoint and decision times are not slowed.
- Per-rung allocation schedules (RASDA): epoch e trains at schedule[rung_index(milestones, e)].
  When a trial that is told CONTINUE crosses into a rung with another k, it saves a
  checkpoint, releases its devices ("pause"), waits for the new allocation with priority
  over new work, and resumes from the checkpoint ("resume") with start-up and restore cost.
  The scheduler never sees this: for it the trial keeps running. Under the "rerun" promotion
  semantics the epochs a promoted trial retrains from scratch run at the k of its first new
  epoch (the budget decides the allocation of the whole job).
- PAUSED trials the scheduler stops later (`drain_stopped`) get a "stop" event at that time.
- Simulated time is only what the models say: the scheduler's compute time is the profile's
  `decision_latency_s`, never measured.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import simpy

from nasalloc.sim.cluster import Allocation, ClusterSpec, DevicePool
from nasalloc.sim.profile import Profile
from nasalloc.sim.schedulers import FINISHED, Decision, Job, make_scheduler, rung_index
from nasalloc.sim.trace import Summary, TraceEvent, summarize
from nasalloc.sim.workload import Workload

_CONTINUE, _PAUSE = Decision.CONTINUE, Decision.PAUSE


@dataclass(frozen=True)
class SimulationSpec:
    """Everything one simulation needs; picklable, cheap to copy, no paths.

    scheduler       typed scheduler config (`schedulers.scheduler_config`)
    workload        `SyntheticWorkload` or `ReplayWorkload` (curves already loaded)
    profile         the epoch-time model (`profile.load_profile`)
    cluster         devices and nodes
    allocation      devices per trial, static or per rung (`cluster.parse_allocation`)
    seed            the scheduler's random stream (the search); the workload has its own seed
    target          metric value for time_to_target_s (None: not measured)
    profile_sample  index into the profile's step-time uncertainty samples (None: the fit)
    """

    scheduler: Any
    workload: Workload
    profile: Profile
    cluster: ClusterSpec
    allocation: Allocation
    seed: int = 0
    target: float | None = None
    profile_sample: int | None = None


@dataclass
class SimulationResult:
    """The trace, its summary and what produced it (the effective spec, seed, end time)."""

    spec: SimulationSpec
    events: list[TraceEvent]
    summary: Summary
    seed: int
    end_time: float
    device_seconds: float  # sum over holds of k * duration (a shared device counts its share)
    sim_events: int  # simpy timeouts processed (the benchmark's "events")
    workload_stats: dict[str, Any] = field(default_factory=dict)


def effective_profile(spec: SimulationSpec) -> Profile:
    """The profile with the chosen uncertainty sample, its node size set to the cluster's."""
    profile = spec.profile
    if spec.profile_sample is not None:
        profile = profile.with_step_sample(spec.profile_sample)
    gpn = spec.cluster.node_size
    if profile.epoch.gpus_per_node != gpn:
        profile = dataclasses.replace(profile, epoch=dataclasses.replace(profile.epoch, gpus_per_node=gpn))
    return profile


class _Engine:
    def __init__(self, spec: SimulationSpec):
        self.spec = spec
        profile = effective_profile(spec)
        ov = profile.overheads
        self.sched = make_scheduler(spec.scheduler, spec.workload.space, np.random.default_rng(spec.seed))
        self.max_epochs = self.sched.max_epochs
        milestones = list(self.sched.milestones)
        alloc = spec.allocation
        ks = tuple(sorted(set(alloc.schedule)))
        # k of epoch e (index e), so the hot path is one list lookup
        self.k_of_epoch = [alloc.k_at(rung_index(milestones, max(e, 1))) for e in range(self.max_epochs + 2)]
        self.epoch_s = {k: profile.epoch_time(k) for k in ks}
        self.alone_s = profile.epoch_time(1)  # k < 1: the epoch's work, in seconds alone on a device
        most = max((round(1.0 / k) for k in ks if k < 1), default=1)  # trials one device can hold
        self.slowdown = [profile.epoch.sharing_slowdown(j) for j in range(most + 1)]  # j trainers -> factor
        self.training: dict[int, list[Any]] = {}  # device -> processes in a shared epoch on it
        self.config_factor = profile.config_factor if profile.config_cost is not None else None
        self.factors: dict[int, float] = {}  # trial -> its epoch-time factor (config_cost)
        self.startup_s = {k: profile.startup_time(k) for k in ks}
        self.restore_s = ov.checkpoint_restore_s
        self.save_s = ov.checkpoint_save_s
        self.decision_s = ov.decision_latency_s
        self.pool = DevicePool(spec.cluster, ks)
        self.min_units = min(self.pool.units(k) for k in ks)
        self.env = simpy.Environment(initial_time=0.0)
        self.workload = spec.workload.run(self.max_epochs, profile.epoch.global_batch_at)
        self.events: list[TraceEvent] = []
        self.pending: deque[tuple[float, Any, Any]] = deque()  # (k, simpy event | None, (job, first_new) | None)
        self.pausing: dict[int, Any] = {}  # trial -> simpy event fired when its PAUSE save is done
        self.stop_when_paused: set[int] = set()
        self.finished = False
        self.results = 0  # results told to the scheduler so far
        self.waited_at = -1  # value of `results` when the scheduler last answered WAIT
        self.device_seconds = 0.0
        self.timeouts = 0

    # ----- bookkeeping ------------------------------------------------------------------
    def _drain(self) -> None:
        """Record "stop" for PAUSED trials the scheduler stopped. A trial still saving its
        checkpoint (it was told PAUSE, the devices are not released yet) ends its hold with
        "stop" instead of "pause" when the save is done."""
        stopped = self.sched.drain_stopped()
        if stopped:
            now = self.env.now
            trials = self.sched.trials
            for tid in stopped:
                if tid in self.pausing:
                    self.stop_when_paused.add(tid)
                else:
                    self.events.append(TraceEvent(now, "stop", tid, trials[tid].last_epoch))

    def _dispatch(self) -> None:
        """Serve waiting placements first in first out, then ask the scheduler for new work."""
        pool, pending = self.pool, self.pending
        while pending:
            k, waiter, work = pending[0]
            devices = pool.place(k)
            if devices is None:
                return
            pending.popleft()
            if waiter is not None:
                waiter.succeed(devices)
            else:
                self.env.process(self._trial(work[0], work[1], k, devices))
        if self.finished:
            return
        sched = self.sched
        while pool.free_units >= self.min_units:
            if self.waited_at == self.results:
                return  # WAIT, and no result since: a pure state machine answers the same
            job = sched.ask()
            self._drain()
            if not isinstance(job, Job):
                self.finished = job is FINISHED
                self.waited_at = self.results
                return
            first_new = sched.trials[job.trial].last_epoch + 1
            k = self.k_of_epoch[min(max(job.start_epoch + 1, first_new), self.max_epochs + 1)]
            saving = self.pausing.get(job.trial)
            if saving is not None:  # promoted while still saving its checkpoint: resume after
                self.env.process(self._after_pause(saving, job, first_new, k))
                continue
            devices = pool.place(k)
            if devices is None:
                pending.append((k, None, (job, first_new)))
                return
            self.env.process(self._trial(job, first_new, k, devices))

    def _after_pause(self, saving: Any, job: Job, first_new: int, k: float):  # noqa: ANN202 (generator)
        yield saving
        self.pending.append((k, None, (job, first_new)))
        self._dispatch()

    def _release(self, devices: tuple[int, ...], k: float, since: float) -> None:
        self.pool.release(devices, k)
        self.device_seconds += k * (self.env.now - since)

    # ----- one epoch on a shared device (processor sharing) --------------------------------
    def _shared_epoch(self, device: int, work: float):  # noqa: ANN202 (generator)
        """Train `work` seconds' worth (alone speed) while the device's other trainers come
        and go: every arrival or departure interrupts the others, which book the progress
        made at the old rate and continue at the new one."""
        env = self.env
        me = env.active_process
        peers = self.training.setdefault(device, [])
        self._reshare(peers)
        peers.append(me)
        remaining = work
        while True:
            slow = self.slowdown[len(peers)]
            since = env.now
            self.timeouts += 1
            try:
                yield env.timeout(remaining * slow)
                break
            except simpy.Interrupt:
                remaining = max(0.0, remaining - (env.now - since) / slow)
        peers.remove(me)
        self._reshare(peers)

    @staticmethod
    def _reshare(peers: list[Any]) -> None:
        for process in peers:
            process.interrupt()

    # ----- one trial's job: a simpy process ---------------------------------------------
    def _trial(self, job: Job, first_new: int, k: float, devices: tuple[int, ...]):  # noqa: ANN202 (generator)
        env, sched, events, wl = self.env, self.sched, self.events, self.workload
        tid, config = job.trial, job.config
        epoch = job.start_epoch
        kind = "resume" if job.resume else "start"
        k_of_epoch, top = self.k_of_epoch, self.max_epochs + 1
        decision_s = self.decision_s
        factor = 1.0
        if self.config_factor is not None:
            factor = self.factors.get(tid)
            if factor is None:
                factor = self.factors[tid] = self.config_factor(config)
        while True:  # one placement ("segment") per iteration
            since = env.now
            events.append(TraceEvent(since, kind, tid, epoch, None, devices, config if kind == "start" else None))
            epoch_s = self.epoch_s[k] * factor
            fixed = self.startup_s[k] + (self.restore_s if epoch > 0 else 0.0)
            shared = k < 1
            work = self.alone_s * factor
            while True:
                if shared:
                    if fixed > 0:
                        self.timeouts += 1
                        yield env.timeout(fixed)
                    yield from self._shared_epoch(devices[0], work)
                else:
                    self.timeouts += 1
                    yield env.timeout(fixed + epoch_s)
                epoch += 1
                metric, test = wl.result(tid, config, epoch, k)
                events.append(TraceEvent(env.now, "result", tid, epoch, metric, devices, None, test))
                decision = sched.on_result(tid, epoch, metric)
                self.results += 1
                self._drain()
                if decision is not _CONTINUE:
                    break
                k_next = k_of_epoch[min(max(epoch + 1, first_new), top)]
                if k_next != k:
                    break
                fixed = decision_s
            if decision is _CONTINUE:  # migrate to the next rung's allocation
                self.timeouts += 1
                yield env.timeout(decision_s + self.save_s)
                events.append(TraceEvent(env.now, "pause", tid, epoch, None, devices))
                self._release(devices, k, since)
                k = k_next
                placed = self.pool.place(k) if not self.pending else None
                if placed is None:
                    waiter = env.event()
                    self.pending.append((k, waiter, None))
                    self._dispatch()
                    placed = yield waiter
                else:
                    self._dispatch()
                devices = placed
                kind = "resume"
                continue
            if decision is _PAUSE:
                saved = self.pausing[tid] = env.event()
                if not self.pending and self.pool.free_units >= self.min_units:
                    self._dispatch()  # a rung may be complete: idle devices start at once
                self.timeouts += 1
                yield env.timeout(decision_s + self.save_s)
                del self.pausing[tid]
                if tid in self.stop_when_paused:
                    self.stop_when_paused.discard(tid)
                    events.append(TraceEvent(env.now, "stop", tid, epoch, None, devices))
                else:
                    events.append(TraceEvent(env.now, "pause", tid, epoch, None, devices))
                self._release(devices, k, since)
                saved.succeed()
                self._dispatch()
                return
            if not self.pending and self.pool.free_units >= self.min_units:
                self._dispatch()  # a rung may be complete: idle devices start at once
            if decision_s > 0:
                self.timeouts += 1
                yield env.timeout(decision_s)
            final = "complete" if epoch >= self.max_epochs else "stop"
            events.append(TraceEvent(env.now, final, tid, epoch, None, devices))
            self._release(devices, k, since)
            self._dispatch()
            return

    # ----- the whole search ---------------------------------------------------------------
    def run(self) -> SimulationResult:
        self._dispatch()
        self.env.run()
        if not self.finished:
            job = self.sched.ask()
            self._drain()
            if job is not FINISHED:
                state = self.sched.state()
                raise RuntimeError(f"simulation stalled at t={self.env.now:.1f}s: scheduler answered {job!r} "
                                   f"with no trial running ({state}); waiting placements: {len(self.pending)}")
        spec = self.spec
        summary = summarize(
            self.events,
            mode=spec.workload.metric.mode,
            n_devices=spec.cluster.gpus,
            scheduler=self.sched.name,
            gpus_per_trial=spec.allocation.label,
            target=spec.target,
        )
        stats = self.workload.stats()
        summary.extra.update({
            "seed": spec.seed,
            "profile": spec.profile.name,
            "profile_sample": spec.profile_sample,
            "cluster": {"name": spec.cluster.name, "gpus": spec.cluster.gpus, "gpus_per_node": spec.cluster.gpus_per_node},
            "metric": spec.workload.metric.name,
            "mode": spec.workload.metric.mode,
            "simulated_events": self.timeouts,
            **stats,
        })
        # the last event, not env.now: a shared epoch that was re-timed leaves its old timeout
        # in simpy's queue (simpy cannot cancel one), which may lie past the end
        end = self.events[-1].time if self.events else 0.0
        return SimulationResult(spec, self.events, summary, spec.seed, float(end), self.device_seconds,
                                self.timeouts, stats)


def simulate(spec: SimulationSpec) -> SimulationResult:
    """Run one simulated search; deterministic for the spec (see the module docstring)."""
    return _Engine(spec).run()
