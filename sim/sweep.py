"""The grid `recommend` simulates: scheduler x cluster size x allocation x seed, in parallel.

Each grid point is one `SimulationSpec`; a worker process simulates it and sends back only
the numbers a recommendation needs (`RunMetrics`), never the trace, so a thousand runs
cost little more than their simulation. Results come back in grid order whatever order the
workers finish in, so the sweep is deterministic for its seed list.

Seeds pair allocations: seed i searches the same configurations with the same learning
curves at every allocation (the workload's curves depend on the configuration only), so
differences between allocations at one seed are differences of allocation alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from nasalloc.sim.cluster import (
    Allocation,
    ClusterSpec,
    allowed_allocations,
    is_allowed,
)
from nasalloc.sim.config import require, require_choice
from nasalloc.sim.engine import SimulationSpec, simulate

OBJECTIVES = ("makespan", "time_to_target", "best_metric", "cost")


@dataclass(frozen=True)
class Pricing:
    """What a search costs: `per_gpu_hour` x GPU-hours; `billing` says which hours.

    cluster: all N GPUs for the whole makespan (a rented or reserved cluster);
    busy:    only the device-hours trials held devices (a shared allocation billed by use).
    """

    per_gpu_hour: float  # `cost.per_gpu_hour` of conf/recommend.yaml, the one place its default is written
    billing: str  # cluster | busy

    def __post_init__(self) -> None:
        require(0 <= self.per_gpu_hour < math.inf, f"per_gpu_hour={self.per_gpu_hour:g}: must be a number >= 0")
        require_choice("billing", self.billing, ("cluster", "busy"))

    def cost(self, gpus: int, makespan_s: float, device_hours: float) -> float:
        hours = gpus * makespan_s / 3600.0 if self.billing == "cluster" else device_hours
        return self.per_gpu_hour * hours


@dataclass(frozen=True)
class RunMetrics:
    """The numbers of one simulated search that the recommendation compares."""

    scheduler: str
    gpus: int
    allocation: str
    seed: int
    makespan_s: float
    time_to_target_s: float | None
    best_metric: float | None
    best_test_metric: float | None
    metric_at_deadline: float | None
    device_hours: float
    cost: float
    gpu_utilization: float
    trials: int
    epochs_trained: int

    def objective(self, name: str) -> float | None:
        return {
            "makespan": self.makespan_s,
            "time_to_target": self.time_to_target_s,
            "best_metric": self.metric_at_deadline,
            "cost": self.cost,
        }[name]


@dataclass(frozen=True)
class GridPoint:
    """One simulation of the sweep; `spec` carries everything, the rest labels it."""

    scheduler: str
    allocation: Allocation
    spec: SimulationSpec
    deadline_s: float | None
    pricing: Pricing


def adaptive_schedules(cluster: ClusterSpec, n_rungs: int, starts: Sequence[float], max_k: float) -> list[Allocation]:
    """Successive doubling per rung (RASDA): start at k0 and double at every rung passed.

    `n_rungs` is the number of allocation segments (milestones + 1). A doubling that is not
    allowed on the cluster (or exceeds `max_k`) keeps the last allowed k, so the schedule is
    always valid; schedules that never change k are dropped (they equal a static one).
    """
    out = []
    for k0 in starts:
        if not is_allowed(cluster, k0) or k0 > max_k:
            continue
        ks = [float(k0)]
        for _ in range(n_rungs - 1):
            nxt = ks[-1] * 2
            ks.append(nxt if nxt <= max_k and is_allowed(cluster, nxt) else ks[-1])
        if len(set(ks)) > 1:
            out.append(Allocation(tuple(ks)))
    return out


def static_allocations(cluster: ClusterSpec, min_k: float, max_k: float) -> list[Allocation]:
    return [Allocation((float(k),)) for k in allowed_allocations(cluster, min_k) if k <= max_k]


def _metric_at_deadline(result, deadline_s: float | None, mode: str) -> float | None:  # noqa: ANN001
    if deadline_s is None:
        return result.summary.best_metric
    sign = 1.0 if mode == "max" else -1.0
    best = None
    for ev in result.events:
        if ev.event == "result" and ev.metric is not None and ev.time <= deadline_s and not math.isnan(ev.metric):
            if best is None or sign * ev.metric > sign * best:
                best = ev.metric
    return best


def run_point(point: GridPoint) -> RunMetrics:
    """Simulate one grid point (runs in a worker process)."""
    result = simulate(point.spec)
    s = result.summary
    gpus = point.spec.cluster.gpus
    return RunMetrics(
        scheduler=point.scheduler,
        gpus=gpus,
        allocation=str(point.allocation),
        seed=point.spec.seed,
        makespan_s=s.makespan_s,
        time_to_target_s=s.time_to_target_s,
        best_metric=s.best_metric,
        best_test_metric=s.best_test_metric,
        metric_at_deadline=_metric_at_deadline(result, point.deadline_s, point.spec.workload.metric.mode),
        device_hours=s.device_hours,
        cost=point.pricing.cost(gpus, s.makespan_s, s.device_hours),
        gpu_utilization=s.gpu_utilization,
        trials=s.trials,
        epochs_trained=s.epochs_trained,
    )


def run_grid(points: Sequence[GridPoint], workers: int,
             progress: Callable[[int, int], None] | None = None) -> list[RunMetrics]:
    """Simulate every point, in `workers` processes (0: one per core; 1: in this process).

    Results are in the order of `points`. `progress(done, total)` is called as runs finish.
    """
    total = len(points)
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total < 4:
        results = []
        for i, p in enumerate(points):
            results.append(run_point(p))
            if progress:
                progress(i + 1, total)
        return results
    chunk = max(1, min(16, total // (workers * 8)))
    results_in_order: list[RunMetrics] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, metrics in enumerate(pool.map(run_point, points, chunksize=chunk)):
            results_in_order.append(metrics)
            if progress:
                progress(i + 1, total)
    return results_in_order


def with_seed(spec: SimulationSpec, seed: int, propagate_uncertainty: bool) -> SimulationSpec:
    """The spec at one seed; with uncertainty propagation seed i also draws step-time sample i."""
    sample = seed if propagate_uncertainty and spec.profile.step_time_samples else spec.profile_sample
    return dataclasses.replace(spec, seed=seed, profile_sample=sample)
