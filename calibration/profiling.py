"""Profiling runs: real DDP process groups of the user's training at each k -> `Measurements`.

What is measured and why (interleaved rounds over the k, runs beside load on the other
devices, the sampled configurations and the reference configuration, start-up, pause and
resume, sharing, what is listed as assumed) is described in docs/calibration.md. Timestamps
are `time.perf_counter()` (CLOCK_MONOTONIC, shared by all processes of a machine), so the
launcher's clock and the workers' stamps can be subtracted; on a Ray cluster only differences
of one rank's own stamps, or of the launcher's clock, are used.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasalloc.calibration import probe
from nasalloc.calibration.concurrent import Job, run_concurrently, run_jobs
from nasalloc.calibration.measurements import Measurements
from nasalloc.execute.devices import Slot, device_name, rank_threads
from nasalloc.execute.launch import Launcher, RanksResult
from nasalloc.sim.errors import UserError

if TYPE_CHECKING:
    from nasalloc.execute.ray_backend import RayTarget

Progress = Callable[[str], None]
UNTIL_REPORT_FACTOR = 10  # a configuration job waits for its first report up to this many time boxes
EXTEND_ATTEMPTS = 3  # runs at k = 1 to an epoch boundary, each allowed EXTEND_FACTOR times the steps of the last
EXTEND_FACTOR = 4


@dataclass(frozen=True)
class ProfilingPlan:
    """What to run and how long to measure it.

    The settings come from `calibration.*` and `train.*` of conf/calibrate.yaml, the one place
    their defaults are written, so they have none here (`calibrate.load` fills every one).
    """

    entrypoint: str  # "module:function", the training API of nasalloc.execute.api
    config: dict[str, Any]  # passed to the training function
    device_kind: str  # "cpu" (gloo on CPU slots) or "cuda" (nccl)
    device_ids: list[int]  # devices present; k ranks use the first k
    gpus_per_trial: list[int]  # the k to measure (1 must be among them)
    share: list[int]  # m values for the sharing slow-down
    threads_per_rank: int | None  # torch threads per rank (None: cores / devices, `execute.devices.rank_threads`)
    batch_fraction: dict[int, float]  # b(k)/b, from train.scaling
    warmup_steps: int
    pilot_steps: int
    max_steps: int
    rounds: int  # interleaved rounds over the k (each k gets time_limit_s / rounds per round)
    time_limit_s: float  # per k over all rounds (and per m)
    checkpoints: int  # checkpoints timed per run (rank 0, first epochs)
    space: dict[str, Any] | None  # search space (SearchSpace syntax) the search samples; None: config only
    configs: int  # configurations sampled from `space` and timed at k = 1 (0: none)
    config_time_limit_s: float  # per sampled configuration
    startup_jobs: int  # fresh jobs per k timed for start-up (k = 1 with a space: the configuration runs)
    seed: int  # seeds the configurations sampled from `space`
    fill_devices: bool  # measure with every other device busy (load groups), as a search runs
    timeout_s: float = 300.0  # not a setting: silence after which the launcher declares a group hung
    ray: RayTarget | None = None  # backend=ray: the cluster whose devices `device_ids` number, node by node (None: here)


class ProfilingFailed(UserError):
    """The user's training function failed in a profiling run (one line, with its log)."""


def _durations(r: RanksResult, rank: int, report_steps: list[int], warmup: int) -> np.ndarray:
    """Steady step intervals of one rank: warm-up and epoch-boundary intervals left out."""
    stamps = np.asarray(r.step_times[rank] if rank < len(r.step_times) else [], dtype=float)
    if len(stamps) < 2:
        return np.empty(0)
    d = np.diff(stamps)
    keep = np.ones(len(d), dtype=bool)
    keep[: max(0, warmup)] = False
    for s in report_steps:  # interval from step s to s+1 spans the report after step s
        if 1 <= s <= len(d):
            keep[s - 1] = False
    return d[keep]


def _boundary_rest(r: RanksResult, warmup: int) -> list[float]:
    """Per epoch boundary: interval - eval - one steady step, less the probe's timed checkpoint
    save and restore where the report timed one (they are the probe's, not the executor's)."""
    stamps = np.asarray(r.step_times[0], dtype=float)
    steady = _durations(r, 0, [int(e.get("probe_steps", 0)) for _, _, _, e in r.reports], warmup)
    if len(steady) == 0:
        return []
    out = []
    for _, _, _, extra in r.reports:
        s = int(extra.get("probe_steps", 0))
        if "probe_eval_s" not in extra or not 1 <= s < len(stamps):
            continue
        timed = extra.get("probe_checkpoint_save_s", 0.0) + extra.get("probe_checkpoint_restore_s", 0.0)
        out.append(max(0.0, float(stamps[s] - stamps[s - 1] - extra["probe_eval_s"] - timed - np.mean(steady))))
    return out


def _overlapping_durations(results: list[RanksResult], warmup: int) -> np.ndarray:
    """Step intervals of concurrent single-rank runs inside the window where all were stepping."""
    stamps = [np.asarray(r.step_times[0], dtype=float) for r in results]
    if any(len(s) < 2 for s in stamps):
        return np.empty(0)
    lo = max(s[min(warmup, len(s) - 1)] for s in stamps)
    hi = min(s[-1] for s in stamps)
    parts = []
    for r, s in zip(results, stamps):
        reports = {int(v) for v in _probe_values(r, "probe_steps")}
        d = np.diff(s)
        keep = (s[:-1] >= lo) & (s[1:] <= hi)
        keep[[i - 1 for i in reports if 1 <= i <= len(d)]] = False
        parts.append(d[keep])
    return np.concatenate(parts)


def _probe_values(r: RanksResult, key: str) -> list[float]:
    return [float(extra[key]) for _, _, _, extra in r.reports if key in extra]


@dataclass(frozen=True)
class FreshJob:
    """What one freshly dispatched job shows: its steady steps, evaluation and start-up."""

    steps: np.ndarray  # steady step intervals (warm-up and epoch-boundary intervals left out)
    eval_s: float | None  # steady evaluation time: mean over its reports after the first (else the first's)
    startup_s: float | None  # first report - dispatch - one epoch of this job (None: no epoch ended)
    boundary_rest_s: list[float] = field(default_factory=list)  # per epoch boundary: interval - eval - one step


def fresh_job_timings(r: RanksResult, warmup: int) -> FreshJob:
    """Start-up as a trace sees it, from one job's launcher result (see the module docstring).

    `r.reports[i][0]` is seconds from dispatching the job to its i-th report reaching the
    launcher (the executor writes "start" right before dispatching and "result" when the
    report arrives). One epoch of the job is the steps of its first epoch times its own mean
    steady step time, plus its steady evaluation time: the first evaluation's one-off costs
    (new shapes) belong to start-up, as they do in the trace.
    """
    reports = [int(v) for v in _probe_values(r, "probe_steps")]
    steps = _durations(r, 0, reports, warmup)
    evals = _probe_values(r, "probe_eval_s")
    eval_s = float(np.mean(evals[1:])) if len(evals) > 1 else (evals[0] if evals else None)
    startup = None
    if r.reports and reports and len(steps) and eval_s is not None:
        epoch = reports[0] * float(np.mean(steps)) + eval_s
        startup = max(0.0, float(r.reports[0][0]) - epoch)
    return FreshJob(steps, eval_s, startup, _boundary_rest(r, warmup) if r.step_times else [])


def sample_configs(space: dict[str, Any], n: int, seed: int, base: dict[str, Any], stream: int = 0) -> list[dict[str, Any]]:
    """n configurations from `space`, each merged over `base` (the fixed settings) as the
    executor merges a trial's config over the training params.

    A Latin hypercube over the space's unit cube, drawn with a Generator seeded with
    (seed, 1000 + stream): each parameter's range is cut into n equally likely strata and
    every stratum is sampled once, so the mean step time over the n configurations (the
    estimate of the search's average) varies far less between calibrations than with n
    independent draws when, as usual, one parameter (a width) drives the step time. Each
    configuration on its own is still a draw from the space's distribution. The stream is
    not the search's own (a search seeds `default_rng(seed)`), so calibration does not
    time the very configurations a search with the same seed will draw.
    """
    from nasalloc.sim.space import SearchSpace

    sp = SearchSpace.from_config(space, "train.space")
    rng = np.random.default_rng([seed, 1000 + stream])
    u = np.column_stack([(rng.permutation(n) + rng.random(n)) / n for _ in sp.domains]) if n else np.empty((0, 0))
    out = []
    for row in u:
        values = {}
        for d, x in zip(sp.domains, row):
            values[d.name] = d.choices[min(int(x * len(d.choices)), len(d.choices) - 1)] if d.is_categorical else d.from_unit(float(x))
        out.append({**base, **values})
    return out


def reference_config(means: list[float]) -> tuple[int, float]:
    """-> (index of the configuration whose mean step is closest to the mean over all, factor
    mean over all / that configuration's mean)."""
    target = float(np.mean(means))
    i = int(np.argmin([abs(x - target) for x in means]))
    return i, target / means[i]


def config_level_scale(m: Measurements) -> float | None:
    """Mean step over the sampled configurations' short runs / the reference configuration's
    precise k = 1 mean (module docstring); None without configurations or k = 1 samples."""
    ref = m.step_samples.get(1)
    if not m.configs or ref is None or len(ref) == 0 or float(np.mean(ref)) <= 0:
        return None
    return float(np.mean([c["mean_step_s"] for c in m.configs])) / float(np.mean(ref))


class Profiler:
    """Runs the plan on one warm `Launcher`; collects everything into `Measurements`."""

    def __init__(self, plan: ProfilingPlan, workdir: Path, progress: Progress = print):
        self.plan = plan
        self.workdir = Path(workdir)
        self.progress = progress
        self.config = probe.wrap_config(plan.entrypoint, plan.config, checkpoints=plan.checkpoints)
        self.grad_bytes: list[float] = []
        self.runs = 0
        self.step_estimates: dict[int, float] = {}  # k -> a step from an unmeasured run at k: sizes boxes at k
        self.fresh_drawn = 0  # configurations drawn for start-up jobs so far

    def _fail(self, where: str, r: RanksResult, log: Path) -> ProfilingFailed:
        return ProfilingFailed(f"train.entrypoint={self.plan.entrypoint}: the training function failed at {where}: "
                               f"{r.info or 'no reason given'} (log: {log})")

    def _run(self, launcher: Launcher, k: int, steps: int, epochs: int = 1_000_000,
             config: dict[str, Any] | None = None) -> tuple[RanksResult, float]:
        self.runs += 1
        log = self.workdir / "logs" / f"k{k}_run{self.runs}.log"
        log.parent.mkdir(parents=True, exist_ok=True)  # the worker opens the log, it does not create folders
        ckpt = self.workdir / "checkpoints" / f"run{self.runs}"
        t_call = time.perf_counter()
        slots = [Slot(d, 0) for d in self.plan.device_ids[:k]]
        load = self._load(self.plan.device_ids[k:])
        if load:  # the measured group beside load groups, as in a search that fills the machine
            job = Job(slots, self.config if config is None else config, max_steps=steps, until_epoch=epochs)
            r = run_jobs(launcher, probe.ENTRYPOINT, [job, *load], workdir=self.workdir / "load",
                         timeout_s=self.plan.timeout_s, log_paths=[log], checkpoint_dirs=[ckpt])[0]
        else:
            r = launcher.run(probe.ENTRYPOINT, self.config if config is None else config, slots,
                             epochs=epochs, max_steps=steps, record_steps=True, timeout_s=self.plan.timeout_s,
                             checkpoint_dir=ckpt, log_path=log)
        if not r.ok:
            raise self._fail(f"k={k}", r, log)
        self.grad_bytes += _probe_values(r, "probe_grad_bytes") + [v for n, v in probe.read_facts(ckpt).items()
                                                                    if n == "grad_bytes"]
        return r, t_call

    def _load(self, devices: list[int], per_device: int = 1) -> list[Job]:
        """Load jobs keeping `devices` busy while something else is measured (plan.fill_devices):
        `per_device` single-rank jobs of the current reference configuration on each, no
        checkpoint timing."""
        if not self.plan.fill_devices or not devices:
            return []
        user_config = {k: v for k, v in self.config.items() if k != probe.OPTIONS_KEY}
        config = probe.wrap_config(self.plan.entrypoint, user_config, checkpoints=0)
        return [Job([Slot(d, s)], config, load=True) for d in devices for s in range(per_device)]

    def _collect(self, r: RanksResult, t_call: float, k: int, m: Measurements, samples: list[np.ndarray]) -> None:
        """File one run's steady steps, and at k = 1 its epoch-boundary costs, into `m`."""
        p = self.plan
        reports = [int(v) for v in _probe_values(r, "probe_steps")]
        if reports and k not in m.steps_per_epoch:
            m.steps_per_epoch[k] = reports[0]
        samples.append(_durations(r, 0, reports, p.warmup_steps))
        if k == 1:
            # with sampled configurations that measured it, evaluation is their mean (measure_configs)
            if not any(c.get("eval_s") is not None for c in m.configs):
                m.eval_s += _probe_values(r, "probe_eval_s")
            m.decision_latency_s += _boundary_rest(r, p.warmup_steps)
            m.checkpoint_save_s += _probe_values(r, "probe_checkpoint_save_s")
            m.checkpoint_restore_s += _probe_values(r, "probe_checkpoint_restore_s")

    def measure_ks(self, launcher: Launcher, ks: list[int], m: Measurements) -> None:
        """Step times at every k in `rounds` interleaved rounds (module docstring), then at k = 1
        runs to an epoch boundary until its costs are seen (`measure_epoch_boundary`), then
        start-up per k (topped up to `startup_jobs` where configuration jobs fell short)."""
        p = self.plan
        ks = sorted(ks)
        samples: dict[int, list[np.ndarray]] = {k: [] for k in ks}
        step_s: dict[int, float | None] = {k: self.step_estimates.get(k, self.step_estimate_s) for k in ks}
        for r in range(max(1, p.rounds)):
            for k in ks if r % 2 == 0 else ks[::-1]:  # k order reversed every round (ABBA)
                steps = self._time_box(p.time_limit_s / max(1, p.rounds), step_s[k]) + p.warmup_steps
                self._collect(*self._run(launcher, k, steps), k, m, samples[k])
                x = np.concatenate(samples[k])
                if len(x) < 2:
                    raise ProfilingFailed(f"train.entrypoint={p.entrypoint}: at k={k} it made {len(x) + 1} timed "
                                          "steps; does it call ctx.step() once per optimizer step?")
                step_s[k] = float(np.mean(x))
        for k in ks:
            x = np.concatenate(samples[k])
            mean = float(np.mean(x))
            if k == 1 and mean > 0:
                self.measure_epoch_boundary(launcher, m, samples[k], mean)
                x = np.concatenate(samples[k])
                mean = float(np.mean(x))
            rse = float(np.std(x, ddof=1)) / mean / math.sqrt(len(x))
            m.step_samples[k] = x
            have = len(m.startup_s.get(k, []))
            if have < max(1, p.startup_jobs):  # none yet, or configuration jobs at k = 1 that never reported
                self.measure_startup(launcher, k, m, mean, jobs=max(1, p.startup_jobs) - have)
            self.measure_pause_resume(launcher, k, m)
            startup = m.startup_s.get(k)
            self.progress(f"k={k}: {len(x)} steps in {len(samples[k])} runs, mean {mean * 1e3:.3f} ms/step "
                          f"(+/- {100 * rse:.1f}%), start-up "
                          + (f"{np.mean(startup):.3f} s ({len(startup)} fresh jobs)" if startup else "not measured"))

    def boundary_missing(self, m: Measurements) -> list[str]:
        """The k = 1 epoch-boundary quantities no run has shown yet."""
        missing = [] if 1 in m.steps_per_epoch else ["steps_per_epoch"]
        missing += [key for key in ("eval_s", "decision_latency_s") if not getattr(m, key)]
        if self.plan.checkpoints > 0 and not m.checkpoint_save_s:
            missing += ["checkpoint_save_s", "checkpoint_restore_s"]
        return missing

    def measure_epoch_boundary(self, launcher: Launcher, m: Measurements, samples: list[np.ndarray], step_s: float) -> None:
        """Runs at k = 1 to the first step after their first report until every epoch-boundary
        quantity (evaluation, checkpoint, the boundary's rest, epoch length) has been seen.

        The time-boxed runs size themselves from the measured step time, so on a busy machine
        the same box holds fewer steps and can end before any epoch does (a profile without
        eval_s, seen on a busy 2-core machine). These runs are sized in steps instead: once an epoch's length is known
        one run is certain to reach its report; before that each attempt may take
        `EXTEND_FACTOR` times the steps of the one before, up to calibration.max_steps."""
        p = self.plan
        cap = min(p.max_steps, max(p.warmup_steps + p.pilot_steps, int(3 * p.time_limit_s / step_s)))
        user = {key: v for key, v in self.config.items() if key != probe.OPTIONS_KEY}
        once = probe.wrap_config(p.entrypoint, user, checkpoints=p.checkpoints, until_report_after=0)
        for attempt in range(EXTEND_ATTEMPTS):
            missing = self.boundary_missing(m)
            if not missing:
                return
            if 1 in m.steps_per_epoch:
                cap = max(cap, m.steps_per_epoch[1] + p.warmup_steps + 2)
            cap = min(p.max_steps, cap)
            if attempt > 0:
                self.progress(f"k=1: {', '.join(missing)} not seen yet (no epoch boundary in the runs so far); "
                              f"one more run of up to {cap} steps")
            self._collect(*self._run(launcher, 1, cap + 1, config=once), 1, m, samples)
            if cap >= p.max_steps:
                return
            cap *= EXTEND_FACTOR

    @property
    def step_estimate_s(self) -> float | None:
        """The step that sizes k = 1 boxes: a k = 1 step if one was taken, else the first
        estimate (the warm-up at the largest k); None before any."""
        return self.step_estimates.get(1, next(iter(self.step_estimates.values()), None))

    def _estimate(self, k: int, r: RanksResult, skip: int) -> None:
        """Note an unmeasured run's median step at k (its first `skip` intervals left out)."""
        d = np.diff(r.step_times[0])[skip:] if r.step_times and len(r.step_times[0]) > 1 else np.empty(0)
        if len(d):
            self.step_estimates[k] = float(np.median(d))

    def _time_box(self, seconds: float, step_s: float | None) -> int:
        """Steps that fit in `seconds` (at least warm-up + pilot, at most max_steps)."""
        p = self.plan
        low = p.warmup_steps + p.pilot_steps
        if not step_s or step_s <= 0:
            return low
        return int(min(p.max_steps, max(low, seconds / step_s)))

    def _fresh(self, launcher: Launcher, k: int, config: dict[str, Any], steps: int,
               until_report_after: int | None = None) -> FreshJob:
        """One fresh job (a new trial id) of `config` on k ranks; no checkpoint timing in its
        reports, so its first report comes when a trial's would. With `until_report_after`,
        `steps` is the hard cap and the job ends after that many steps once it has reported
        (`probe`)."""
        wrapped = probe.wrap_config(self.plan.entrypoint, config, checkpoints=0, until_report_after=until_report_after)
        r, _ = self._run(launcher, k, steps, config=wrapped)
        return fresh_job_timings(r, self.plan.warmup_steps)

    def _new_trials(self, n: int, fallback: dict[str, Any]) -> list[dict[str, Any]]:
        """n configurations for jobs that stand for new trials: sampled from the space (a new
        stream each call) when there is one, else `fallback` n times."""
        p = self.plan
        if not (p.space and p.configs > 0):
            return [dict(fallback)] * n
        self.fresh_drawn += 1
        return sample_configs(p.space, n, p.seed, p.config, stream=self.fresh_drawn)

    def measure_startup(self, launcher: Launcher, k: int, m: Measurements, step_s: float, jobs: int | None = None) -> None:
        """`jobs` (default `startup_jobs`) fresh jobs at k, added to `m.startup_s[k]`: new
        configurations sampled from the space when there is one, else the profiled one.

        Each runs on to its second report while its time box lasts, and in any case to the
        first step after its first report: start-up needs one epoch boundary, and a box sized
        from the step time holds fewer steps on a busy machine (it ended every job before its
        first report, and the profile lost start-up at that k). The cap is two epochs when an
        epoch's length is known, else `UNTIL_REPORT_FACTOR` boxes."""
        p = self.plan
        n = max(1, p.startup_jobs if jobs is None else jobs)
        configs = self._new_trials(n, dict(p.config))
        steps_per_epoch = m.steps_per_epoch.get(k) or m.steps_per_epoch.get(1)
        box = self._time_box(p.time_limit_s / n, step_s)
        cap = (2 * steps_per_epoch + p.warmup_steps + 2 if steps_per_epoch
               else self._time_box(UNTIL_REPORT_FACTOR * p.time_limit_s / n, step_s))
        cap = min(p.max_steps, cap)
        fresh = [self._fresh(launcher, k, c, cap, until_report_after=min(box, cap)) for c in configs]
        values = [j.startup_s for j in fresh if j.startup_s is not None]
        if values:
            m.startup_s.setdefault(k, []).extend(values)
        if len(values) < n:
            m.notes.append(f"start-up at k={k}: {n - len(values)} of {n} fresh jobs did not reach the end of their "
                           f"first epoch within {cap} steps")

    def measure_pause_resume(self, launcher: Launcher, k: int, m: Measurements) -> None:
        """`startup_jobs` pause-and-resume pairs at k (module docstring): fresh jobs of new
        configurations (as new trials), each paused at its second report; then each resumed
        from its checkpoint in a fresh group for two epochs, after the others' pauses, so
        that, as in a search, its workers ran other trials since (their caches hold other
        models' shapes)."""
        p = self.plan
        reference = {key: v for key, v in self.config.items() if key != probe.OPTIONS_KEY}
        wrapped = [probe.wrap_config(p.entrypoint, c, checkpoints=0)
                   for c in self._new_trials(max(1, p.startup_jobs), reference)]
        per_epoch = m.steps_per_epoch.get(k) or m.steps_per_epoch.get(1)
        cap = 3 * per_epoch + p.warmup_steps if per_epoch else p.max_steps  # never reached before the last report
        paused = [self._run_job(launcher, k, c, cap, epochs=2, pause=True) for c in wrapped]
        for c, (first, ckpt) in zip(wrapped, paused):
            if len(first.reports) < 2:
                continue  # ended at the cap before its pause: nothing to resume from
            resumed, _ = self._run_job(launcher, k, c, cap, epochs=2, start_epoch=2, checkpoint=ckpt)
            fresh, again = fresh_job_timings(first, p.warmup_steps), fresh_job_timings(resumed, p.warmup_steps)
            m.pause_s.setdefault(k, []).append(max(0.0, first.wall_s - first.reports[-1][0]))
            if fresh.startup_s is not None:
                m.startup_s.setdefault(k, []).append(fresh.startup_s)
            if again.startup_s is not None:
                m.resume_s.setdefault(k, []).append(again.startup_s)
        if k in m.resume_s and k in m.pause_s:
            self.progress(f"k={k}: a resumed job starts {np.mean(m.resume_s[k]):.3f} s before its first epoch, "
                          f"a pause takes {1e3 * np.mean(m.pause_s[k]):.1f} ms ({len(m.pause_s[k])} pairs)")
        else:
            m.notes.append(f"pause/resume at k={k}: no job reached its pause within {cap} steps; not measured")

    def _run_job(self, launcher: Launcher, k: int, config: dict[str, Any], steps: int, *, epochs: int,
                 start_epoch: int = 0, pause: bool = False, checkpoint: Path | None = None) -> tuple[RanksResult, Path]:
        """One job at k beside the load groups (as `_run`), `epochs` epochs from `start_epoch`
        (resumed from `checkpoint` when > 0), told PAUSE (and saving) at its last report with
        `pause`, else STOP; -> its result and checkpoint folder."""
        p = self.plan
        self.runs += 1
        what = "pause" if pause else "resume"
        log = self.workdir / "logs" / f"k{k}_run{self.runs}_{what}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        ckpt = checkpoint or self.workdir / "checkpoints" / f"run{self.runs}"
        slots = [Slot(d, 0) for d in p.device_ids[:k]]
        load = self._load(p.device_ids[k:])
        until = start_epoch + epochs
        if load:
            job = Job(slots, config, max_steps=steps, until_epoch=until, pause_at=until if pause else None,
                      start_epoch=start_epoch)
            r = run_jobs(launcher, probe.ENTRYPOINT, [job, *load], workdir=self.workdir / "load",
                         timeout_s=p.timeout_s, log_paths=[log], checkpoint_dirs=[ckpt])[0]
        else:
            r = launcher.run(probe.ENTRYPOINT, config, slots, epochs=epochs, start_epoch=start_epoch, max_steps=steps,
                             record_steps=True, timeout_s=p.timeout_s, checkpoint_dir=ckpt, log_path=log, pause=pause)
        if not r.ok:
            raise self._fail(f"k={k}, a job {'told PAUSE' if pause else 'resumed from a checkpoint'}", r, log)
        return r, ckpt

    def measure_configs(self, launcher: Launcher, m: Measurements) -> None:
        """k = 1 step time of `configs` configurations sampled from the space (module docstring);
        sets the reference configuration every later run uses, and the k = 1 start-up."""
        p = self.plan
        assert p.space
        configs = sample_configs(p.space, p.configs, p.seed, p.config)
        box = self._time_box(p.config_time_limit_s, self.step_estimate_s)
        cap = max(box, self._time_box(UNTIL_REPORT_FACTOR * p.config_time_limit_s, self.step_estimate_s))
        jobs = [self._fresh(launcher, 1, c, cap, until_report_after=box) for c in configs]
        usable = [(c, j) for c, j in zip(configs, jobs) if len(j.steps) >= 2]
        if not usable:
            m.notes.append("sampled configurations: none made enough timed steps; the profiled configuration is used")
            return
        means = [float(np.mean(j.steps)) for _, j in usable]
        i, _ = reference_config(means)
        names = list(p.space)
        m.configs = [{"config": {n_: c[n_] for n_ in names}, "mean_step_s": mu, "steps": len(j.steps),
                      "eval_s": j.eval_s, "startup_s": j.startup_s} for (c, j), mu in zip(usable, means)]
        m.reference_config = {n_: usable[i][0][n_] for n_ in names}
        m.eval_s = [j.eval_s for _, j in usable if j.eval_s is not None]
        m.decision_latency_s += [x for _, j in usable for x in j.boundary_rest_s]
        startups = [j.startup_s for j in jobs if j.startup_s is not None]
        if startups:
            m.startup_s[1] = startups
        self.config = probe.wrap_config(p.entrypoint, usable[i][0], checkpoints=p.checkpoints)
        spread = float(np.std(means, ddof=1) / np.mean(means)) if len(means) > 1 else 0.0
        self.progress(f"{len(usable)} configurations sampled from the space at k=1: {min(means) * 1e3:.3f}-"
                      f"{max(means) * 1e3:.3f} ms/step, mean {np.mean(means) * 1e3:.3f} (spread {100 * spread:.0f}%); "
                      f"reference {m.reference_config} ({means[i] * 1e3:.3f} ms)")

    def check_complete(self, m: Measurements) -> None:
        """What the profile would state without a measurement: the essentials (step time at
        every k) stop calibration with one line; anything else goes to `m.assumed` with the
        reason and what the profile states instead (calibration prints it as a warning)."""
        p = self.plan
        for k in p.gpus_per_trial:
            if len(m.step_samples.get(k, ())) < 2:
                raise ProfilingFailed(f"train.entrypoint={p.entrypoint}: no step time measured at k={k} (fewer than 2 "
                                      f"timed steps); does it call ctx.step() once per optimizer step? Allow longer runs: "
                                      f"calibration.time_limit_s={p.time_limit_s:g}, calibration.max_steps={p.max_steps}")
        why = f"no epoch at k=1 ended within calibration.max_steps={p.max_steps} steps"
        for key in self.boundary_missing(m):
            if key != "steps_per_epoch":
                m.assumed[key] = f"{key}: not measured ({why}); the profile assumes 0 s; raise calibration.max_steps"
        for k in p.gpus_per_trial:
            if k not in m.startup_s and m.startup_s:
                m.assumed[f"startup_s at k={k}"] = (f"start-up at k={k}: not measured (no fresh job ended its first "
                                                    f"epoch); the profile extrapolates it from k = "
                                                    f"{', '.join(map(str, sorted(m.startup_s)))}")
        if not m.startup_s:
            m.assumed["startup_s"] = "startup_s: not measured (no fresh job ended its first epoch); the profile assumes 0 s"
        for share in sorted(x for x in p.share if x >= 2):
            if share not in m.share_samples:
                m.assumed[f"sharing.{share}"] = (f"sharing m={share}: not measured (the {share} runs did not overlap long "
                                                 f"enough); the simulator derives it from the measured m (beyond the "
                                                 f"largest, proportional to m: a full device)")

    def measure_sharing(self, launcher: Launcher, share: int, m: Measurements) -> None:
        """m single-rank runs at once on device 0; per-step times inside the all-running window."""
        p = self.plan
        alone = float(np.mean(m.step_samples[1]))
        # the reference: one trial alone on the same slot, right before (a third of the budget)
        ref_steps = p.warmup_steps + max(p.pilot_steps, min(p.max_steps, int(p.time_limit_s / 3 / alone)))
        r, _ = self._run(launcher, 1, ref_steps)
        ref = _durations(r, 0, [int(v) for v in _probe_values(r, "probe_steps")], p.warmup_steps)
        alone = float(np.mean(ref)) if len(ref) >= 2 else alone
        steps = p.warmup_steps + max(p.pilot_steps, min(p.max_steps, int(p.time_limit_s / 3 / alone)))
        logs = self.workdir / "logs" / f"share{share}"
        logs.mkdir(parents=True, exist_ok=True)
        slots = [[Slot(p.device_ids[0], s)] for s in range(share)]
        # a first, unmeasured round warms the other slots' workers (data, caches), which would
        # otherwise start late and leave little time with all m running
        for attempt, n in enumerate((p.warmup_steps + 5, steps, 2 * steps)):
            # with fill_devices, every other device carries `share` load trials too: the search at
            # k = 1/m shares every device, and the reference (alone on device 0) has one load
            # trial beside it on each other device, as the search at k = 1 has
            others = [d for d in p.device_ids if d != p.device_ids[0]]
            results = run_concurrently(launcher, probe.ENTRYPOINT, self.config, slots, max_steps=n, workdir=logs,
                                       timeout_s=p.timeout_s, load=self._load(others, share))
            for r in results:
                if not r.ok:
                    raise self._fail(f"m={share} trials sharing one device", r, logs)
            if attempt == 0:
                continue
            x = _overlapping_durations(results, p.warmup_steps)
            if len(x) >= 10 * share:
                break
        if len(x) < 2:
            m.notes.append(f"sharing m={share}: the runs did not overlap long enough to measure")
            return
        # the same reference again right after: the machine's speed drifts (other load, clocks)
        # by 10-20% over tens of seconds on a shared machine; before and after bracket it
        r, _ = self._run(launcher, 1, ref_steps)
        after = _durations(r, 0, [int(v) for v in _probe_values(r, "probe_steps")], p.warmup_steps)
        ref = np.concatenate([ref, after])
        alone = float(np.mean(ref)) if len(ref) >= 2 else alone
        m.share_samples[share] = x
        if len(ref) >= 2:
            m.share_reference[share] = ref
        self.progress(f"m={share} sharing one device: {len(x)} steps, mean {np.mean(x) * 1e3:.3f} ms/step, "
                      f"slow-down {np.mean(x) / alone:.2f}x per trial (alone before/after: "
                      f"{np.mean(ref[:len(ref) - len(after)]) * 1e3:.3f}/{np.mean(after) * 1e3 if len(after) else float('nan'):.3f} ms)")

    def _launcher(self, devices: list[int], slots_per_device: int, folder: str) -> Launcher:
        p = self.plan
        self.progress(f"starting {len(devices) * slots_per_device} warm workers ({p.device_kind}, devices {devices}"
                      + (f", {slots_per_device} per device)" if slots_per_device > 1 else ")"))
        return Launcher(p.device_kind, devices, slots_per_device=slots_per_device, threads_per_rank=plan_threads(p),
                        workdir=self.workdir / folder, preload=[p.entrypoint], ray=p.ray)

    def run(self) -> Measurements:
        p = self.plan
        m = Measurements(step_samples={}, batch_fraction=dict(p.batch_fraction), hardware=hardware_facts(p))
        shares = sorted(s for s in p.share if s >= 2)
        used = p.device_ids if p.fill_devices else p.device_ids[: max(p.gpus_per_trial)]
        t0 = time.perf_counter()
        # Workers set up as the search's are: at k >= 1 the executor starts one worker per
        # device, at k = 1/m m of them, and where several share cores their OpenMP threads wait
        # passively (`backend.worker_env`, read once when torch loads): a k = 1 search of the
        # synthetic trainer at 2 threads per worker took 3x as long so. Calibration ran every
        # measurement on the sharing set-up; now one launcher for everything
        # measured at k >= 1 and another for sharing.
        with self._launcher(used, 1, "launcher") as launcher:
            m.hardware["worker_start_s"] = round(time.perf_counter() - t0, 4)
            # Every worker's first job pays one-off costs (CUDA context, data loading, lazy
            # imports) that the executor's warm workers pay once per search, not per trial:
            # one short unmeasured run on all devices takes them out of the start-up samples.
            top = max(p.gpus_per_trial)
            r, t_call = self._run(launcher, top, p.warmup_steps + 2)
            if r.step_times and r.step_times[0]:
                if p.ray is None:  # on Ray, rank 0 may stamp another node's clock
                    m.hardware["first_job_startup_s"] = round(r.step_times[0][0] - t_call, 4)
                self._estimate(top, r, skip=0)  # its few steps are all warm-up: their median
            if top > 1:
                # The k = 1 jobs (the configurations' time boxes above all) are sized from a k = 1
                # step: sized from the k = top step, the 1 s boxes of the digits configurations
                # held 0.3 s on 2 CPU slots (a k = 2 step there is 3.5 x a k = 1 step), too short
                # for their means.
                self._estimate(1, self._run(launcher, 1, p.warmup_steps + p.pilot_steps)[0], skip=p.warmup_steps)
            if p.space and p.configs > 0:
                self.measure_configs(launcher, m)
            self.measure_ks(launcher, list(p.gpus_per_trial), m)
            scale = config_level_scale(m)
            if scale is not None:
                m.config_scale = scale
                self.progress(f"k=1 level: the configurations' mean step; the reference configuration's precise runs "
                              f"scaled x{scale:.3f}")
        if shares:
            with self._launcher(used, max(shares), "launcher_shared") as launcher:
                self._run(launcher, 1, p.warmup_steps + 2)  # unmeasured: slot 0's one-off first-job costs
                for share in shares:
                    self.measure_sharing(launcher, share, m)
        if self.grad_bytes:
            m.hardware["grad_bytes"] = max(self.grad_bytes)
        self.check_complete(m)
        return m


def hardware_facts(plan: ProfilingPlan) -> dict[str, Any]:
    """Device and node facts for the profile's `hardware:` block."""
    import torch

    facts: dict[str, Any] = {"device_kind": plan.device_kind, "backend": "nccl" if plan.device_kind == "cuda" else "gloo",
                             "devices_present": len(plan.device_ids), "gpus_per_node": len(plan.device_ids),
                             "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        facts["load_average_1min_at_start"] = round(os.getloadavg()[0], 2)  # other work on the machine skews timings
    except OSError:
        pass
    facts["device"] = device_name(plan.device_kind, plan.device_ids[0])
    if plan.device_kind == "cuda":
        facts["cuda"] = str(torch.version.cuda)
    facts["cores"] = os.cpu_count()
    facts["threads_per_rank"] = plan_threads(plan)
    if plan.ray is not None:  # measured on the cluster's nodes, not (only) here
        spec = plan.ray.cluster.spec
        facts.update(gpus_per_node=spec.gpus_per_node, ray={
            "nodes": spec.nodes, "devices_per_node": spec.gpus_per_node, "cpus_per_node": plan.ray.cluster.cpus_per_node,
            "resource": "GPU" if plan.device_kind == "cuda" else plan.ray.slot_resource})
    return facts


def plan_threads(plan: ProfilingPlan) -> int:
    """Threads per rank while profiling: the rule `nasalloc run` uses (`rank_threads`) over the
    devices present, whichever of them a measurement uses and however many trials share one,
    so the steps are timed with the threads the search's ranks will have. On Ray, as
    `RaySpawner` counts them: a node's CPUs over its devices."""
    if plan.ray is not None:
        return rank_threads(plan.threads_per_rank, plan.ray.cluster.spec.gpus_per_node, plan.ray.cluster.cpus_per_node)
    return rank_threads(plan.threads_per_rank, len(plan.device_ids), os.cpu_count() or 1)


def profile_training(plan: ProfilingPlan, workdir: Path, progress: Progress = print) -> Measurements:
    """Run the profiling plan on this machine (or on `plan.ray`'s cluster); raise ProfilingFailed (a UserError) if the training function fails."""
    return Profiler(plan, workdir, progress).run()
