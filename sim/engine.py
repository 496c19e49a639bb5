"""The discrete-event simulation of one search at one allocation (simpy): a clock for the
dispatch core.

`simulate(spec) -> SimulationResult` is a pure function (desmod style): no file I/O, no wall
clock, no global state; the spec is a small picklable record, so `recommend` can run it
thousands of times in worker processes. The same spec gives the same trace, byte for byte.

What is asked when, where a job goes, what waits, when a trial moves to another allocation
and which trace events are written is `sim/dispatch.py`, the code the executor runs too.
This module only says how long things take, in simulated time, from the profile, by the
functions the elastic and unshare policies price their moves with (`Profile.trial_epoch_time`,
`start_cost`, `end_cost`; the per-trial configuration factor from one `TrialFactors` that the
policies share):
- A job on k devices: start-up cost(k) (+ checkpoint restore when it starts from a
  checkpoint), then one epoch after another of epoch_time(k) x config_factor(config)
  (evaluation included; the factor is the profile's `config_cost`, 1 without it, computed
  once per trial; with `applies_to: compute` it scales only the compute and evaluation at
  k > 1, `Profile.trial_epoch_time`; start-up, checkpoint and decision costs are not
  scaled); each epoch ends
  with a result, then the scheduler's decision takes `decision_latency_s` with the devices
  held. Every epoch whose checkpoint the ranks write (`Segment.save`: every
  `checkpoint_every` epochs, at PAUSE, a completed trial) adds `checkpoint_save_s`, as the
  executor's rank 0 writes it before the next epoch or the end. A job's end (PAUSE, STOP,
  completion) adds release(k) before its devices are free: the ranks return, the group is
  torn down, the executor hears of it. A job that starts from a checkpoint pays resume(k)
  instead of its start-up when the profile has `resume_s` (calibration measures a paused
  trial resumed in a fresh group: the restart, the restore and the slower first epoch after
  it), else `checkpoint_restore_s` on top of its start-up.
- Measured epoch times (`sim/timings.py`): when the workload replays a recorded search whose
  records hold epoch times, epoch e of a trial takes the recorded time of that (trial, epoch)
  scaled by epoch_time(k) / epoch_time(k recorded) instead of epoch_time(k) x config_factor;
  everything else below is the same.
- Sharing (k = 1/m): the trials training on one device share it as a processor: while j of
  them are in an epoch there, each progresses at 1 / sharing(j) of its alone speed (the
  profile's sharing curve, `EpochTimeModel.sharing_slowdown`), and their rates change the
  moment one starts or ends an epoch. A trial alone on a device trains at full speed even
  if it reserved 1/m of it; a full device gives epoch_time(1/m) per epoch. Start-up,
  checkpoint and decision times are not slowed.
- Failures (`SimulationSpec.failures`): the first attempt of a listed trial crashes at the
  end of training the listed epoch, before reporting it; the retry resumes from its newest
  checkpoint. This is how a real run's crashes are replayed.
- The scheduler's own compute time (`Profile.scheduler_time`, calibrated per scheduler:
  BOHB fits and samples its density model) is spent where the executor spends it: in its
  one-threaded search loop, which answers nothing else meanwhile. Every `on_result` and
  every `ask` occupies that loop for the calibrated time (`_LoopClock`); a job placed by the
  loop starts once the loop is free, and the trial whose result was being decided gets its
  answer then (both on top of their own costs above).
- Simulated time is only what the models say: the scheduler's compute time is the profile's
  figure, never measured while simulating.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import simpy

from nasalloc.sim.cluster import Allocation, ClusterSpec, DevicePool
from nasalloc.sim.dispatch import Dispatcher, Segment
from nasalloc.sim.elastic import ElasticPolicy
from nasalloc.sim.profile import Profile, TrialFactors
from nasalloc.sim.schedulers import Ask, Decision, Step, make_scheduler
from nasalloc.sim.trace import Summary, TraceEvent, summarize
from nasalloc.sim.unshare import UnsharePolicy
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
    failures        (trial, epoch) pairs: that trial's first attempt crashes at that epoch
    unshare         k = 1/m: a trial sharing a device moves to a device with fewer trials at its
                    epoch boundary when that pays (`sim/unshare.py`); the commands set it from
                    their `unshare` setting, False here is the core without that rule
    """

    scheduler: Any
    workload: Workload
    profile: Profile
    cluster: ClusterSpec
    allocation: Allocation
    seed: int = 0
    target: float | None = None
    profile_sample: int | None = None
    failures: tuple[tuple[int, int], ...] = ()  # (trial, epoch): its first attempt crashes at that epoch
    unshare: bool = False


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
    return profile.with_node_size(spec.cluster.node_size)


class _LoopClock:
    """The scheduler as the executor's one-threaded search loop runs it: each `ask` and
    `on_result` (the dispatch core's `step_ask` and `step_result`) keeps the loop busy for
    `ask_s` / `result_s` of simulated time after the later of now and the end of the loop's
    previous call (`busy_until`). Everything else is
    the scheduler's own (attribute access is passed through)."""

    def __init__(self, sched: Any, env: simpy.Environment, ask_s: float, result_s: float):
        self._sched, self._env = sched, env
        self._ask_s, self._result_s = ask_s, result_s
        self.busy_until = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sched, name)

    def _occupy(self, seconds: float) -> None:
        self.busy_until = max(self.busy_until, self._env.now) + seconds

    def step_ask(self) -> Step[Ask]:
        self._occupy(self._ask_s)
        return self._sched.step_ask()

    def step_result(self, trial_id: int, epoch: int, metric: float) -> Step[Decision]:
        self._occupy(self._result_s)
        return self._sched.step_result(trial_id, epoch, metric)

    def wait(self) -> float:
        """Seconds from now until the loop is free (0 when it is)."""
        return max(0.0, self.busy_until - self._env.now)


class _Engine:
    def __init__(self, spec: SimulationSpec):
        self.spec = spec
        profile = effective_profile(spec)
        ov = profile.overheads
        sched = make_scheduler(spec.scheduler, spec.workload.space, np.random.default_rng(spec.seed))
        self.sched = sched
        alloc = spec.allocation
        ks = alloc.ks
        # the profile's answers (sim/profile.py), memoised per simulation: the same few k recur
        self.epoch_time = lru_cache(maxsize=None)(profile.trial_epoch_time)
        self.start_cost = lru_cache(maxsize=None)(profile.start_cost)
        self.end_cost = lru_cache(maxsize=None)(profile.end_cost)
        most = max((k.denominator for k in ks if k < 1), default=1)  # trials one device can hold
        self.slowdown = [profile.epoch.sharing_slowdown(j) for j in range(most + 1)]  # j trainers -> factor
        self.training: dict[int, list[Any]] = {}  # device -> processes in a shared epoch on it
        self.factors = TrialFactors(profile)  # trial -> its epoch-time factor (config_cost), shared with the policies
        self.decision_s = ov.decision_latency_s
        self.save_s = ov.checkpoint_save_s  # the checkpoint every saving epoch writes
        self.failures = {trial: epoch for trial, epoch in spec.failures}
        self.env = simpy.Environment(initial_time=0.0)
        ask_s, result_s = profile.scheduler_time(sched.name)
        self.loop = _LoopClock(sched, self.env, ask_s, result_s) if ask_s > 0 or result_s > 0 else None
        self.workload = spec.workload.run(sched.max_epochs, profile.epoch.global_batch_at)
        self.times = self.workload.epoch_times(profile)  # recorded epoch times; None: the profile's
        self.events: list[TraceEvent] = []
        elastic = ElasticPolicy(alloc, profile, sched.milestones, self.factors) if alloc.is_elastic else None
        unshare = UnsharePolicy(profile, sched.milestones, self.factors) if spec.unshare else None  # the core decides where it applies
        self.core = Dispatcher(sched if self.loop is None else self.loop,  # type: ignore[arg-type]
                               alloc, DevicePool(spec.cluster, ks), launch=self._launch, emit=self.events.append,
                               elastic=elastic, unshare=unshare)
        self.timeouts = 0

    def _launch(self, seg: Segment) -> None:
        # the executor starts the job right after the loop's call that placed it
        self.env.process(self._segment(seg, self.loop.wait() if self.loop is not None else 0.0))

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

    # ----- one placement of one trial: a simpy process --------------------------------------
    def _segment(self, seg: Segment, placed_after: float):  # noqa: ANN202 (generator)
        env, core, wl = self.env, self.core, self.workload
        tid, config, k = seg.trial, seg.config, seg.k
        epoch = checkpoint = seg.start_epoch
        decision_s, save_s = self.decision_s, self.save_s
        factor = self.factors(tid, config)
        epoch_s = self.epoch_time(float(k), factor)
        loop = self.loop
        fixed = self.start_cost(float(k), epoch > 0, placed_after)
        shared = k < 1
        work = self.epoch_time(1.0, factor)  # k < 1: the epoch's work alone on the device
        crash_at = self.failures.get(tid) if seg.attempt == 0 else None
        result = core.result
        times = self.times
        while True:
            if times is not None:
                epoch_s, work = times.at(tid, epoch + 1, float(k))
            if shared:
                if fixed > 0:
                    self.timeouts += 1
                    yield env.timeout(fixed)
                yield from self._shared_epoch(seg.devices[0], work)
            else:
                self.timeouts += 1
                yield env.timeout(fixed + epoch_s)
            epoch += 1
            if epoch == crash_at:
                core.failed(env.now, tid, checkpoint, "simulated crash")
                return
            metric, test = wl.result(tid, config, epoch, k)
            told = result(env.now, tid, epoch, metric, test)
            answered = loop.wait() if loop is not None else 0.0  # the loop decides (and asks) first
            if told is not _CONTINUE:
                break
            fixed = decision_s + answered
            if seg.save:
                checkpoint = epoch
                fixed += save_s
        pause = self.end_cost(float(k), seg.save, decision_s + answered)
        if pause > 0:
            self.timeouts += 1
            yield env.timeout(pause)
        core.released(env.now, tid)

    # ----- the whole search ---------------------------------------------------------------
    def run(self) -> SimulationResult:
        self.core.start(0.0)
        self.env.run()
        if not self.core.done:
            state = self.sched.state()
            raise RuntimeError(f"simulation stalled at t={self.env.now:.1f}s: the scheduler waits with no trial "
                               f"running ({state}); waiting placements: {len(self.core.waiting)}")
        spec = self.spec
        summary = summarize(
            self.events,
            mode=spec.workload.metric.mode,
            n_devices=spec.cluster.gpus,
            scheduler=self.sched.name,
            gpus_per_trial=spec.allocation.label,
            target=spec.target,
        )
        stats = {**self.workload.stats(), **(self.times.stats() if self.times is not None else {})}
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
        return SimulationResult(spec, self.events, summary, spec.seed, float(end), self.core.busy_device_seconds,
                                self.timeouts, stats)


def simulate(spec: SimulationSpec) -> SimulationResult:
    """Run one simulated search; deterministic for the spec (see the module docstring)."""
    return _Engine(spec).run()
