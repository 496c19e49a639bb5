"""From per-seed simulation metrics to a recommendation: aggregate, compare, choose.

Groups are (scheduler, cluster size, allocation). For each group every objective gets a mean
and a 95% Student-t interval over seeds; the group with the best mean objective is
recommended, and the others that a paired t-test over the same seeds cannot tell apart from
it are listed as equivalent ("statistically indistinguishable"). Speed-ups are ratios of
mean makespans (and of mean time-to-target when a target is set): against the slowest
allocation of the same scheduler and cluster size, and against one GPU per trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nasalloc.sim.cluster import ELASTIC
from nasalloc.sim.stats import Estimate, mean_ci, paired_indistinguishable
from nasalloc.sim.sweep import RunMetrics

# Which way is better for each objective; best_metric follows the metric's mode.
LOWER_IS_BETTER = {"makespan": True, "time_to_target": True, "cost": True}
REPORTED = ("makespan_s", "time_to_target_s", "best_metric", "best_test_metric", "metric_at_deadline",
            "device_hours", "cost", "gpu_utilization")


@dataclass
class GroupStats:
    scheduler: str
    gpus: int
    allocation: str
    runs: list[RunMetrics]
    estimates: dict[str, Estimate] = field(default_factory=dict)
    speedup_vs_slowest: float | None = None
    speedup_vs_one_gpu: float | None = None
    target_speedup_vs_slowest: float | None = None
    target_speedup_vs_one_gpu: float | None = None
    best_in_family: bool = False  # best allocation for its scheduler and cluster size
    equivalent_in_family: bool = False  # indistinguishable from that best (paired test)
    equivalent_overall: bool = False  # indistinguishable from the overall recommendation
    recommended: bool = False

    def values(self, objective: str) -> list[float | None]:
        return [r.objective(objective) for r in self.runs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler,
            "gpus": self.gpus,
            "gpus_per_trial": self.allocation,
            "seeds": [r.seed for r in self.runs],
            **{name: est.to_dict() for name, est in self.estimates.items()},
            "speedup_vs_slowest": self.speedup_vs_slowest,
            "speedup_vs_1_gpu_per_trial": self.speedup_vs_one_gpu,
            "time_to_target_speedup_vs_slowest": self.target_speedup_vs_slowest,
            "time_to_target_speedup_vs_1_gpu_per_trial": self.target_speedup_vs_one_gpu,
            "best_for_scheduler": self.best_in_family,
            "equivalent_to_best_for_scheduler": self.equivalent_in_family,
            "equivalent_to_recommended": self.equivalent_overall,
            "recommended": self.recommended,
        }


def _better(objective: str, mode: str) -> float:
    """+1 when larger is better for this objective, -1 when smaller is."""
    if objective == "best_metric":
        return 1.0 if mode == "max" else -1.0
    return -1.0 if LOWER_IS_BETTER[objective] else 1.0


def _ratio(num: float, den: float) -> float | None:
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return num / den


def group_runs(runs: Sequence[RunMetrics]) -> list[GroupStats]:
    """Groups in first-appearance order (the sweep's grid order), each with its estimates."""
    groups: dict[tuple[str, int, str], GroupStats] = {}
    for r in runs:
        key = (r.scheduler, r.gpus, r.allocation)
        if key not in groups:
            groups[key] = GroupStats(r.scheduler, r.gpus, r.allocation, [])
        groups[key].runs.append(r)
    for g in groups.values():
        g.estimates = {name: mean_ci([getattr(r, name) for r in g.runs]) for name in REPORTED}
    return list(groups.values())


def _speedups(groups: list[GroupStats]) -> None:
    by_family: dict[tuple[str, int], list[GroupStats]] = {}
    for g in groups:
        by_family.setdefault((g.scheduler, g.gpus), []).append(g)
    for family in by_family.values():
        for field_name, attr_slow, attr_one in (
            ("makespan_s", "speedup_vs_slowest", "speedup_vs_one_gpu"),
            ("time_to_target_s", "target_speedup_vs_slowest", "target_speedup_vs_one_gpu"),
        ):
            means = [g.estimates[field_name].mean for g in family]
            finite = [m for m in means if math.isfinite(m)]
            if not finite:
                continue
            slowest = max(finite)
            one = next((g.estimates[field_name].mean for g in family if g.allocation == "1"), math.nan)
            for g, m in zip(family, means):
                setattr(g, attr_slow, _ratio(slowest, m))
                setattr(g, attr_one, _ratio(one, m))


OBJECTIVE_FIELD = {"makespan": "makespan_s", "time_to_target": "time_to_target_s",
                   "best_metric": "metric_at_deadline", "cost": "cost"}


def _plainness(allocation: str) -> tuple[int, float]:
    """Tie-break between allocations whose means are equal: a static k before a per-rung
    schedule before the elastic policy, then the k nearest one whole device (no sharing, fewest ranks); e.g. when
    every trial runs alone anyway, 1/4 and 1 give the same makespan and 1 is recommended."""
    if allocation == ELASTIC:  # recommended only where it wins outright
        return 2, 0.0
    items = allocation.strip("[]").split(",")
    if len(items) > 1:
        return 1, 0.0
    num, _, den = items[0].partition("/")
    k = float(num) / float(den or 1)
    return 0, abs(math.log2(k)) if k > 0 else math.inf


def choose(groups: list[GroupStats], objective: str, mode: str) -> tuple[GroupStats | None, list[GroupStats]]:
    """The best group by mean objective (means within a relative 1e-9 are equal: then the
    plainest allocation, `_plainness`, then grid order; elastic only if the best other
    allocation is distinguishable from it), and the groups a paired test over the same seeds
    cannot tell apart from it (the best included)."""
    sign = _better(objective, mode)
    field_name = OBJECTIVE_FIELD[objective]
    candidates = [g for g in groups if math.isfinite(g.estimates[field_name].mean)]
    if not candidates:
        return None, []
    top = max(sign * g.estimates[field_name].mean for g in candidates)
    tied = [g for g in candidates if math.isclose(sign * g.estimates[field_name].mean, top, rel_tol=1e-9, abs_tol=1e-12)]
    best = min(tied, key=lambda g: _plainness(g.allocation))
    equivalent = _indistinguishable(groups, best, objective)
    if best.allocation == ELASTIC:
        # The elastic policy is recommended only where it wins over the seeds: when the best
        # fixed or per-rung allocation cannot be told apart from it, that one is. Only the
        # best: a worse allocation whose seeds merely scatter too widely for the paired test
        # must not take the place of both.
        plain = [g for g in candidates if g.allocation != ELASTIC]
        if plain:
            top_plain = max(sign * g.estimates[field_name].mean for g in plain)
            runner_up = min((g for g in plain if math.isclose(sign * g.estimates[field_name].mean, top_plain,
                                                               rel_tol=1e-9, abs_tol=1e-12)),
                            key=lambda g: _plainness(g.allocation))
            if runner_up in equivalent:
                best = runner_up
                equivalent = _indistinguishable(groups, best, objective)
    return best, equivalent


def _indistinguishable(groups: list[GroupStats], best: GroupStats, objective: str) -> list[GroupStats]:
    """The groups a paired test over the same seeds cannot tell apart from `best` (it included)."""
    best_seeds = [r.seed for r in best.runs]
    return [
        g for g in groups
        if g is best or ([r.seed for r in g.runs] == best_seeds
                         and paired_indistinguishable(g.values(objective), best.values(objective)))
    ]


@dataclass
class Recommendation:
    objective: str
    mode: str
    groups: list[GroupStats]
    per_scheduler: dict[tuple[str, int], GroupStats]  # best per (scheduler, cluster size)
    per_size: dict[int, GroupStats]  # best over schedulers per cluster size
    overall: GroupStats | None

    def worst_beside_overall(self) -> GroupStats | None:
        """The worst allocation (by mean objective, among those that reached it) of the
        recommended group's scheduler and cluster size: what the recommendation is shown
        against in the best-so-far plot."""
        best = self.overall
        if best is None:
            return None
        field_name = OBJECTIVE_FIELD[self.objective]
        sign = _better(self.objective, self.mode)
        family = [g for g in self.groups if (g.scheduler, g.gpus) == (best.scheduler, best.gpus)
                  and math.isfinite(g.estimates[field_name].mean)]
        return min(family, key=lambda g: sign * g.estimates[field_name].mean)


def recommend(runs: Sequence[RunMetrics], objective: str, mode: str) -> Recommendation:
    """Aggregate the sweep and choose per scheduler, per cluster size and overall."""
    groups = group_runs(runs)
    _speedups(groups)
    per_scheduler: dict[tuple[str, int], GroupStats] = {}
    families: dict[tuple[str, int], list[GroupStats]] = {}
    for g in groups:
        families.setdefault((g.scheduler, g.gpus), []).append(g)
    for key, fam in families.items():
        best, equivalent = choose(fam, objective, mode)
        if best is not None:
            per_scheduler[key] = best
            best.best_in_family = True
            for g in equivalent:
                g.equivalent_in_family = True
    per_size: dict[int, GroupStats] = {}
    for size in sorted({g.gpus for g in groups}):
        best, _ = choose([g for g in groups if g.gpus == size], objective, mode)
        if best is not None:
            per_size[size] = best
    overall, equivalent = choose(groups, objective, mode)
    if overall is not None:
        overall.recommended = True
        for g in equivalent:
            g.equivalent_overall = True
    return Recommendation(objective, mode, groups, per_scheduler, per_size, overall)
