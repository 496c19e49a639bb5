"""`nasalloc simulate`: one search at one allocation -> trace.jsonl, summary.json, plots.

`load` turns the composed config into a `SimulationSpec` (every check happens there, before
any folder exists: a bad k, workload, profile, replay file or target ends as one line, exit
2); `main` runs `engine.simulate` and writes the run folder. `build_spec` is the same
conversion for callers that compose their own configs (recommend, validate, tests).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from nasalloc.sim.cluster import ClusterSpec
from nasalloc.sim.config import require, to_typed
from nasalloc.sim.elastic import resolve_allocation
from nasalloc.sim.engine import SimulationResult, SimulationSpec, simulate
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_duration
from nasalloc.sim.profile import load_profile
from nasalloc.sim.schedulers import scheduler_config
from nasalloc.sim.trace import write_json, write_trace
from nasalloc.sim.workload import MetricSpec, workload_from_config


@dataclass
class SimulateConf:
    """conf/simulate.yaml as composed, the one place the defaults are written (none here).

    The groups stay mappings: each is read by its own schema in `build_spec` (the scheduler
    and workload by name, `scheduler_config` and `workload_from_config`; the cluster as
    `ClusterSpec`), so a message names the group's key (``cluster.gpus=6: ...``)."""

    scheduler: dict[str, Any]
    cluster: dict[str, Any]
    workload: dict[str, Any]
    profile: str  # a shipped name or a path (`load_profile`)
    profile_sample: Optional[int]
    gpus_per_trial: Any  # k, "1/m", a per-rung list or elastic (`resolve_allocation`)
    elastic: Any  # read for gpus_per_trial=elastic only (`resolve_allocation`)
    unshare: bool
    target: Optional[float]  # within the workload metric's range (`checked_target`)
    plots: bool
    seed: int
    out_dir: Optional[str] = None  # Hydra's output folder: Hydra reads it, no command does

    def __post_init__(self) -> None:
        require(self.seed >= 0, f"seed={self.seed}: must be an integer >= 0")
        require(self.profile_sample is None or self.profile_sample >= 0,
                f"profile_sample={self.profile_sample}: must be an integer >= 0 or null")


@dataclass(frozen=True)
class SimulateSettings:
    spec: SimulationSpec
    plots: bool = True


def checked_target(target: float | None, metric: MetricSpec) -> float | None:
    """`target=` (already a number or None, `check_scalar`) inside the metric's range; UserError otherwise."""
    if target is None:
        return None
    if not math.isfinite(target):
        raise UserError(f"target={target!r}: must be a number within the metric's range or null")
    if not metric.contains(float(target)):
        raise UserError(f"target={target}: outside {metric.name}'s range [{metric.low}, {metric.high}]")
    return float(target)


def build_spec(cfg: DictConfig | SimulateConf) -> SimulationSpec:
    """A validated spec from a composed simulate-style config (UserError on bad input)."""
    conf = cfg if isinstance(cfg, SimulateConf) else to_typed(SimulateConf, cfg)
    sched = scheduler_config(conf.scheduler)
    cluster = to_typed(ClusterSpec, conf.cluster, "cluster")
    profile = load_profile(conf.profile)
    allocation = resolve_allocation(conf.gpus_per_trial, cluster, profile, conf.elastic)
    workload = workload_from_config(conf.workload)
    metric = workload.metric
    if sched.mode != metric.mode:
        raise UserError(f"scheduler.mode={sched.mode}: the workload's metric {metric.name} is mode={metric.mode}; "
                        f"set both (workload.metric.mode=...) or leave scheduler.mode to follow the workload")
    sample = conf.profile_sample
    if sample is not None and not profile.step_time_samples:
        raise UserError(f"profile_sample={sample}: profile {profile.name} has no uncertainty.step_time_samples; use null")
    target = checked_target(conf.target, metric)
    return SimulationSpec(scheduler=sched, workload=workload, profile=profile, cluster=cluster,
                          allocation=allocation, seed=conf.seed, target=target, profile_sample=sample,
                          unshare=conf.unshare)


def load(cfg: DictConfig) -> SimulateSettings:
    conf = to_typed(SimulateConf, cfg)
    return SimulateSettings(spec=build_spec(conf), plots=conf.plots)


def report(result: SimulationResult, out_dir: Path | None, wall_s: float) -> str:
    """The one-screen text summary (ends with the output folder)."""
    s, spec = result.summary, result.spec
    c = spec.cluster
    metric = spec.workload.metric.name
    best = "none" if s.best_metric is None else f"{s.best_metric:.4f} (trial {s.best_trial})"
    if s.best_test_metric is not None:
        best += f", test {s.best_test_metric:.4f}"
    target = "" if s.target is None else f"  time to {metric} {'>=' if spec.workload.metric.mode == 'max' else '<='} {s.target:g}: {'not reached' if s.time_to_target_s is None else format_duration(s.time_to_target_s)}\n"
    lines = (
        f"nasalloc simulate: {s.scheduler} on {c.name} ({c.gpus} GPUs, {c.gpus_per_node} per node), "
        f"{spec.allocation} GPU(s) per trial, profile {spec.profile.name}, seed {spec.seed}\n"
        f"  makespan          {format_duration(s.makespan_s)} ({s.makespan_s:,.0f} s simulated)\n"
        f"  best {metric:<12} {best}\n"
        f"{target}"
        f"  GPU utilization   {100 * s.gpu_utilization:.1f} %  ({s.device_hours:,.1f} device-hours)\n"
        f"  trials            {s.trials}: {s.completed} completed, {s.stopped} stopped; {s.epochs_trained} epochs trained\n"
        f"  simulated         {result.sim_events:,} events in {wall_s:.2f} s wall time\n"
    )
    stats = result.workload_stats
    beyond = stats.get("replay_results_beyond_recorded")
    if beyond is not None:
        lines += (f"  replay            {stats['replay_recorded_trials']} recorded curves; {beyond} results beyond "
                  f"the recorded epochs held the last value; {stats['replay_trials_wrapped']} trials reused a curve\n")
    lines += f"  epoch times       {epoch_times_source(result)}\n"
    if s.shared_while_idle_s > 0:
        movable = spec.allocation.spreads_fractions and not spec.allocation.is_elastic  # where the rule applies
        hint = "; unshare=true moves such trials when it pays" if movable and not spec.unshare else ""
        lines += (f"  shared devices    trials shared a device while others idled for {format_duration(s.shared_while_idle_s)} "
                  f"({s.shared_while_idle_device_s / 3600:,.1f} idle device-hours they could have used){hint}\n")
    if out_dir is not None:
        lines += f"output: {out_dir}"
    return lines.rstrip("\n")


def epoch_times_source(result: SimulationResult) -> str:
    """Where the simulation took each epoch's time from: recorded times (which, scaled how),
    or the profile (and, for a replay, why not the records)."""
    stats = result.workload_stats
    text = stats.get("epoch_times")
    if text is None:
        return f"profile {result.spec.profile.name}"
    if text.startswith("profile"):
        return f"profile {result.spec.profile.name}{text[len('profile'):]}"
    held = stats.get("epoch_times_held", 0)
    below = stats.get("epoch_times_below_overheads", 0)
    extra = "".join([f"; {held} epochs not recorded took their trial's last recorded time" if held else "",
                     f"; {below} recorded times shorter than the profile's overheads counted as 0 s" if below else ""])
    return text + extra


def main(settings: SimulateSettings, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = simulate(settings.spec)
    wall = time.perf_counter() - t0
    write_trace(out_dir / "trace.jsonl", result.events)
    summary = result.summary.to_dict()
    summary["allocation"] = str(settings.spec.allocation)
    summary["end_time_s"] = result.end_time
    write_json(out_dir / "summary.json", summary)
    if settings.plots:
        from nasalloc.sim.plots import plot_best_so_far, plot_gantt

        title = f"{result.summary.scheduler}, {settings.spec.allocation} GPU/trial on {settings.spec.cluster.gpus} GPUs"
        plot_gantt(result.events, settings.spec.cluster.gpus, out_dir / "gantt.png", title)
        plot_best_so_far(result.events, settings.spec.workload.metric.mode, out_dir / "best_so_far.png", title)
    warning = settings.spec.profile.node_size_warning(settings.spec.cluster.node_size)
    print(report(result, out_dir.resolve(), wall) + (f"\n{warning}" if warning else ""))


__all__ = ["SimulateConf", "SimulateSettings", "build_spec", "checked_target", "epoch_times_source", "load", "main", "report"]
