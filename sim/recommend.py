"""`nasalloc recommend`: which allocation should this search use?

Simulates every allocation (static k from 1/4 of a GPU up to the whole cluster, and adaptive
per-rung schedules) for each scheduler and cluster size over the same seeds, then reports
mean and 95% interval of makespan, time-to-target, best metric and cost, the speed-ups, the
recommended allocation per scheduler and overall, and which allocations cannot be told apart
from it. Writes `sweep.csv`, `recommendation.json`, plots, and `plan.yaml`: the recommended
search, which `nasalloc run plan=PATH` runs as it was simulated (`sim/plan.py`); prints a table.

Layout: `load` validates the whole sweep before any folder exists (one-line errors);
`sweep.py` builds and runs the grid in worker processes; `ranking.py` aggregates and
chooses; this module writes and prints, and hands `recommend_plots.py` the data it draws
(never the other way round).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from nasalloc.sim.cluster import ELASTIC, Allocation, ClusterSpec
from nasalloc.sim.elastic import resolve_allocation
from nasalloc.sim.config import require, require_choice, required, shipped, to_typed
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.errors import UserError
from nasalloc.sim.plan import PLAN_FILE, Plan, TrainConfig, allocation_value, profile_reference, write_plan
from nasalloc.sim.formatting import (
    duration_unit,
    format_allocation,
    format_duration,
    format_in_unit,
    format_significant,
    number_scale,
)
from nasalloc.sim.profile import Profile, load_profile
from nasalloc.sim.ranking import OBJECTIVE_FIELD, GroupStats, Recommendation, choose, recommend
from nasalloc.sim.schedulers import make_scheduler, scheduler_config, scheduler_names
from nasalloc.sim.simulate import checked_target
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.sweep import (
    OBJECTIVES,
    GridPoint,
    Pricing,
    RunMetrics,
    adaptive_schedules,
    run_grid,
    static_allocations,
    with_seed,
)
from nasalloc.sim.trace import write_json
from nasalloc.sim.tune_export import ray_tune_snippet, syne_tune_settings
from nasalloc.sim.workload import ReplayWorkload, Workload, workload_from_config
from omegaconf import DictConfig


@dataclass
class RecommendConf:
    """conf/recommend.yaml as composed, the one place the defaults are written (none here).

    The groups stay mappings, each read by its own schema in `load` (`scheduler_config`,
    `workload_from_config`, `ClusterSpec`, `Pricing`, `ElasticChoice`), so a message names
    the group's key (``cost.billing='x': ...``)."""

    schedulers: Any  # shipped scheduler configs compared (a name or a list); unread with scheduler=NAME
    n_trials: Optional[int]
    profile: str  # a shipped name or a path (`load_profile`)
    cluster: dict[str, Any]  # a ClusterSpec whose gpus may be a list of sizes
    workload: dict[str, Any]
    allocations: Any  # auto, or a list of allocations (`resolve_allocation`)
    min_k: float
    max_k: Optional[float]
    adaptive: bool
    elastic: dict[str, Any]  # `ElasticChoice`
    unshare: bool
    seeds: Any  # a count, or a list of seeds; a list after `__post_init__`
    objective: str
    target: Optional[float]  # within the workload metric's range (`checked_target`)
    deadline_s: Optional[float]
    cost: dict[str, Any]  # `Pricing`
    propagate_uncertainty: bool
    workers: int
    plots: bool
    seed: int  # conf/common.yaml's; unread here (the seeds simulated are `seeds`)
    scheduler: Optional[dict[str, Any]] = None  # present with scheduler=NAME only (the group is empty otherwise)
    train: Optional[dict[str, Any]] = None  # present with train=NAME only
    out_dir: Optional[str] = None  # Hydra's output folder: Hydra reads it, no command does

    def __post_init__(self) -> None:
        require_choice("objective", self.objective, OBJECTIVES)
        require(self.objective != "time_to_target" or self.target is not None,
                "objective=time_to_target: needs target=VALUE (a metric value to reach)")
        require(self.n_trials is None or self.n_trials >= 1,
                f"n_trials={self.n_trials}: must be an integer >= 1 or null (each scheduler's own default)")
        require(0 < self.min_k < math.inf, f"min_k={self.min_k:g}: must be > 0 (e.g. 0.25: four trials share one GPU)")
        require(self.max_k is None or self.min_k <= self.max_k < math.inf,
                f"max_k={self.max_k}: must be >= min_k={self.min_k:g}, or null (the whole cluster)")
        require(self.deadline_s is None or 0 <= self.deadline_s < math.inf,
                f"deadline_s={self.deadline_s}: must be a number >= 0 or null (at the end)")
        require(self.workers >= 0, f"workers={self.workers}: must be an integer >= 0 (0: one per core)")
        self.seeds = _seed_list(self.seeds)
        if self.scheduler is None:
            names = [self.schedulers] if isinstance(self.schedulers, str) else self.schedulers
            require(isinstance(names, list) and bool(names),
                    f"schedulers={names!r}: give a non-empty list; allowed: {', '.join(scheduler_names())}")
            for name in names:
                require(name in scheduler_names(),
                        f"schedulers: {name!r} is not a scheduler; allowed: {', '.join(scheduler_names())}")
            self.schedulers = names


@dataclass
class ElasticChoice:
    """`elastic` of conf/recommend.yaml: include the elastic policy in allocations=auto, and
    its bounds (checked by `resolve_allocation`, as simulate and run check them)."""

    compare: bool
    min: Any
    max: Any


@dataclass(frozen=True)
class RecommendSettings:
    points: list[GridPoint]
    seeds: list[int]
    objective: str
    target: float | None
    deadline_s: float | None
    pricing: Pricing
    workers: int
    plots: bool
    profile: Profile
    workload: Workload
    clusters: list[ClusterSpec]
    profile_ref: str  # the profile as plan.yaml names it (`profile_reference`)
    train: dict[str, Any] | None  # train=NAME: the training function plan.yaml names (its space is simulated)
    elastic: dict[str, Any]  # elastic.min / elastic.max, for plan.yaml


def _seed_list(value: Any) -> list[int]:
    """`seeds`: a count n (the seeds 0..n-1) or a list of distinct seeds."""
    require(not isinstance(value, bool), f"seeds={value!r}: give a count >= 1 or a list of seeds")
    if isinstance(value, int):
        require(value >= 1, f"seeds={value}: must be >= 1 (the number of seeds) or a list of seeds")
        return list(range(value))
    require(isinstance(value, list) and bool(value)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value),
            f"seeds={value!r}: give a count >= 1 or a non-empty list of integers >= 0")
    require(len(set(value)) == len(value), f"seeds={value}: seeds must be distinct")
    return list(value)


def _schedulers(conf: RecommendConf, mode: str) -> list[Any]:
    """Typed scheduler configs: the one named by `scheduler=NAME`, else those in `schedulers`.

    `n_trials` (when set) sizes every compared search alike, so schedulers are compared on
    the same number of configurations (null: each scheduler config's own n_trials).
    """
    sized = {"mode": mode} if conf.n_trials is None else {"mode": mode, "n_trials": conf.n_trials}
    if conf.scheduler is not None:
        return [scheduler_config({**conf.scheduler, **sized})]
    return [scheduler_config({**shipped("scheduler", name), **sized}, key=f"scheduler {name}") for name in conf.schedulers]


def _train(node: dict[str, Any] | None) -> TrainConfig | None:
    """`train=NAME`'s settings (conf/train/NAME.yaml, as `nasalloc run` reads them), or None.

    The training function itself is not imported here: recommend may run where it cannot
    be (no GPU, no data); `nasalloc run` checks it."""
    if node is None:
        return None
    train = to_typed(TrainConfig, node, "train")
    SearchSpace.from_config(train.space, "train.space")
    return train


def _clusters(node: dict[str, Any]) -> list[ClusterSpec]:
    sizes = required(node, "gpus", "cluster.")
    if isinstance(sizes, list):
        if not sizes:
            raise UserError("cluster.gpus=[]: give a number of GPUs or a non-empty list of cluster sizes")
        if len(set(sizes)) != len(sizes):
            raise UserError(f"cluster.gpus={sizes}: sizes must be distinct")
    else:
        sizes = [sizes]
    return [to_typed(ClusterSpec, {**node, "gpus": size}, "cluster") for size in sizes]


def _allocations(conf: RecommendConf, elastic: ElasticChoice, cluster: ClusterSpec, n_segments: int,
                 profile: Profile) -> list[Allocation]:
    raw, min_k = conf.allocations, conf.min_k
    max_k = float(cluster.gpus) if conf.max_k is None else conf.max_k
    bounds = {"min": elastic.min, "max": elastic.max}
    if raw == "auto":
        out = static_allocations(cluster, min_k, max_k)
        if not out:
            raise UserError(f"min_k={min_k:g}, max_k={max_k:g}: no allowed allocation on {cluster.gpus} GPUs in between")
        if conf.adaptive:
            starts = [k for k in (0.25, 1.0) if k >= min_k]
            out += [a for a in adaptive_schedules(cluster, n_segments, starts, max_k) if a not in out]
        if elastic.compare:
            out.append(resolve_allocation(ELASTIC, cluster, profile, bounds))
        return out
    if not isinstance(raw, list) or not raw:
        raise UserError(f"allocations={raw!r}: give auto or a non-empty list of allocations, e.g. [1, 2, 4, \"1/2\", [1,2,4]]")
    out = []
    for item in raw:
        for k in item if isinstance(item, list) else [item]:
            if isinstance(k, (int, float)) and not isinstance(k, bool) and k > cluster.gpus:
                raise UserError(f"allocations: {k} GPUs per trial does not fit the cluster of {cluster.gpus} GPUs")
        alloc = resolve_allocation(item, cluster, profile, bounds, key="allocations")
        if alloc not in out:
            out.append(alloc)
    return out


def load(cfg: DictConfig) -> RecommendSettings:
    conf = to_typed(RecommendConf, cfg)
    train = _train(conf.train)
    workload_node = conf.workload
    if train is not None:  # the space the run will search is the one simulated
        workload_node = {**workload_node, "space": train.space}
    workload = workload_from_config(workload_node)
    profile = load_profile(conf.profile)
    target = checked_target(conf.target, workload.metric)
    pricing = to_typed(Pricing, conf.cost, "cost")
    elastic = to_typed(ElasticChoice, conf.elastic, "elastic")
    schedulers = _schedulers(conf, workload.metric.mode)
    clusters = _clusters(conf.cluster)
    points: list[GridPoint] = []
    for sched in schedulers:
        n_segments = len(make_scheduler(sched, workload.space, np.random.default_rng(0)).milestones) + 1
        for cluster in clusters:
            for alloc in _allocations(conf, elastic, cluster, n_segments, profile):
                base = SimulationSpec(scheduler=sched, workload=workload, profile=profile, cluster=cluster,
                                      allocation=alloc, target=target, unshare=conf.unshare)
                for seed in conf.seeds:
                    points.append(GridPoint(sched.name, alloc, with_seed(base, seed, conf.propagate_uncertainty),
                                            conf.deadline_s, pricing))
    return RecommendSettings(points, conf.seeds, conf.objective, target, conf.deadline_s, pricing, conf.workers,
                             conf.plots, profile, workload, clusters, profile_reference(conf.profile),
                             None if train is None else dataclasses.asdict(train),
                             {"min": elastic.min, "max": elastic.max})


# ----- output ----------------------------------------------------------------------------

CSV_FIELDS = [f.name for f in dataclasses.fields(RunMetrics)]


def write_sweep_csv(path: Path, runs: list[RunMetrics]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in runs:
            writer.writerow({k: ("" if v is None else v) for k, v in dataclasses.asdict(r).items()})
    tmp.replace(path)


def _group_key(g: GroupStats) -> dict[str, Any]:
    return {"scheduler": g.scheduler, "gpus": g.gpus, "gpus_per_trial": g.allocation}


def recommendation_json(settings: RecommendSettings, rec: Recommendation) -> dict[str, Any]:
    metric = settings.workload.metric
    overall = rec.overall
    field_name = OBJECTIVE_FIELD[rec.objective]
    return {
        "objective": rec.objective,
        "metric": {"name": metric.name, "mode": metric.mode},
        "target": settings.target,
        "deadline_s": settings.deadline_s,
        "cost": dataclasses.asdict(settings.pricing),
        "profile": settings.profile.name,
        "clusters": [dataclasses.asdict(c) for c in settings.clusters],
        "seeds": settings.seeds,
        "recommended": None if overall is None else {
            **_group_key(overall),
            field_name: overall.estimates[field_name].to_dict(),
            "best_metric": overall.estimates["best_metric"].to_dict(),
            "speedup_vs_slowest": overall.speedup_vs_slowest,
            "speedup_vs_1_gpu_per_trial": overall.speedup_vs_one_gpu,
            "time_to_target_speedup_vs_slowest": overall.target_speedup_vs_slowest,
            "time_to_target_speedup_vs_1_gpu_per_trial": overall.target_speedup_vs_one_gpu,
            "indistinguishable": [_group_key(g) for g in rec.groups if g.equivalent_overall and g is not overall],
        },
        "per_scheduler": [
            {**_group_key(g), field_name: g.estimates[field_name].to_dict(),
             "indistinguishable": [_group_key(o) for o in rec.groups
                                   if o.equivalent_in_family and o is not g and (o.scheduler, o.gpus) == key]}
            for key, g in rec.per_scheduler.items()
        ],
        "per_cluster_size": [
            {**_group_key(g), "makespan_s": g.estimates["makespan_s"].to_dict(), "cost": g.estimates["cost"].to_dict()}
            for g in rec.per_size.values()
        ],
        "allocations": [g.to_dict() for g in rec.groups],
    }


def _fmt_est(est: Any, fmt: Any) -> str:
    """`mean ±half` in one unit; `n/m reached` when some seeds never got there."""
    if not math.isfinite(est.mean):
        return f"{est.n}/{est.total} reached" if est.total else "-"
    half = est.half_width
    return f"{fmt(est.mean)} ±{fmt(half)}" if math.isfinite(half) else fmt(est.mean)


def cost_unit(pricing: Pricing) -> str:
    """What the cost column counts, in the currency of cost.per_gpu_hour."""
    hours = "all GPUs for the whole makespan" if pricing.billing == "cluster" else "the device-hours trials held"
    return f"cost: {pricing.per_gpu_hour:g} per GPU-hour x {hours} (cost.billing={pricing.billing})"


def render_table(settings: RecommendSettings, rec: Recommendation) -> Any:
    from rich.table import Table

    metric = settings.workload.metric
    several_sizes = len(settings.clusters) > 1
    spans = [g.estimates["makespan_s"].mean for g in rec.groups if math.isfinite(g.estimates["makespan_s"].mean)]
    _, t_unit = duration_unit(min(spans) if spans else 0.0)  # one unit per column: means and intervals compare
    cost_scale, cost_label = number_scale(g.estimates["cost"].mean for g in rec.groups)  # one scale for the column

    def t_fmt(seconds: float) -> str:
        return format_in_unit(seconds, t_unit)

    table = Table(title=f"objective: {rec.objective}; mean ±95% CI over {len(settings.seeds)} seeds; "
                        f"x slowest / x k=1: makespan speed-up\n{cost_unit(settings.pricing)}", title_justify="left")
    columns = ["scheduler"] + (["GPUs"] if several_sizes else []) + ["k", f"makespan \\[{t_unit}]", "x slowest", "x k=1",
                                                                     metric.name]
    if settings.target is not None:
        columns.append(f"to target \\[{t_unit}]")
    columns += [f"cost \\[{cost_label}]" if cost_label else "cost", "util", ""]
    for col in columns:
        table.add_column(col, justify="left" if col in ("scheduler", "") else "right")
    previous = None
    for g in rec.groups:
        family = (g.scheduler, g.gpus)
        if previous is not None and family != previous:
            table.add_section()
        previous = family
        mark = "<- recommended" if g.recommended else ("best for scheduler" if g.best_in_family else "")
        if not g.recommended and g.equivalent_overall:
            mark = (mark + ", " if mark else "") + "~ recommended"
        elif not g.best_in_family and g.equivalent_in_family:
            mark = "~ best for scheduler"
        e = g.estimates
        row = [g.scheduler] + ([str(g.gpus)] if several_sizes else []) + [
            g.allocation,
            _fmt_est(e["makespan_s"], t_fmt),
            "-" if g.speedup_vs_slowest is None else f"{g.speedup_vs_slowest:.2f}",
            "-" if g.speedup_vs_one_gpu is None else f"{g.speedup_vs_one_gpu:.2f}",
            _fmt_est(e["best_metric"], lambda x: f"{x:.3f}"),
        ]
        if settings.target is not None:
            row.append(_fmt_est(e["time_to_target_s"], t_fmt))
        cost = e["cost"]
        cost_text = format_significant(cost.mean / cost_scale, cost.half_width / cost_scale)
        row += [cost_text if math.isfinite(cost.mean) else "-", f"{100 * e['gpu_utilization'].mean:.0f}%", mark]
        table.add_row(*row, style="bold green" if g.recommended else ("bold" if g.best_in_family else None))
    return table


def _k(allocation: str) -> str:
    return allocation if allocation == ELASTIC else f"k={allocation}"


def _allocation_words(settings: RecommendSettings, g: Any) -> str:
    """How the recommended allocation reads in a sentence."""
    if g.allocation != ELASTIC:
        return f"{g.allocation} GPU(s) per trial"
    point = next(p for p in settings.points if p.scheduler == g.scheduler and p.spec.cluster.gpus == g.gpus
                 and p.allocation.is_elastic)
    alloc = point.allocation
    return (f"elastic allocation (every job starts at {format_allocation(alloc.schedule[0])} GPU(s); trials grow "
            f"onto idle GPUs up to {format_allocation(alloc.grow[-1])} per trial)")


def _speedup_words(objective: str, g: GroupStats) -> str:
    """The recommended group's speed-up in the objective's own terms: time to the target
    when that is the objective (a search can reach the target sooner yet end no sooner), else
    makespan. "" when there is nothing to compare."""
    if objective == "time_to_target":
        slowest, one, words = g.target_speedup_vs_slowest, g.target_speedup_vs_one_gpu, "reaches the target {}x sooner than"
    elif objective == "makespan":
        slowest, one, words = g.speedup_vs_slowest, g.speedup_vs_one_gpu, "{}x faster than"
    else:
        slowest, one, words = g.speedup_vs_slowest, g.speedup_vs_one_gpu, "makespan {}x shorter than with"
    if slowest is None:
        return ""
    return (words.format(f"{slowest:.2f}") + f" the slowest allocation of {g.scheduler}"
            + ("" if one is None else f", {one:.2f}x vs 1 GPU per trial"))


def verdict(settings: RecommendSettings, rec: Recommendation) -> str:
    g = rec.overall
    if g is None:
        return "no allocation reached the objective in every seed (e.g. the target was never reached); see the table"
    e = g.estimates
    field_name = OBJECTIVE_FIELD[rec.objective]
    value = e[field_name]
    shown = format_duration(value.mean) if field_name.endswith("_s") else f"{value.mean:,.4g}"
    same = [o for o in rec.groups if o.equivalent_overall and o is not g]
    half = value.half_width
    interval = "" if not math.isfinite(half) else f" ±{format_duration(half) if field_name.endswith('_s') else f'{half:,.4g}'}"
    lines = [f"recommended: {g.scheduler} with {_allocation_words(settings, g)} on {g.gpus} GPUs: "
             f"{rec.objective} {shown}{interval} (95% CI)"]
    speedup = _speedup_words(rec.objective, g)
    if speedup:
        lines.append(f"  {speedup}; best {settings.workload.metric.name} {e['best_metric'].mean:.4f}")
    if same:
        lines.append("  indistinguishable over these seeds: " + ", ".join(f"{o.scheduler} {_k(o.allocation)}" + (f" ({o.gpus} GPUs)" if len(settings.clusters) > 1 else "") for o in same))
    for key, best in rec.per_scheduler.items():
        if best is not g:
            lines.append(f"  best for {key[0]}" + (f" on {key[1]} GPUs" if len(settings.clusters) > 1 else "")
                         + f": {_k(best.allocation)}")
    if len(settings.clusters) > 1:
        for size, best in rec.per_size.items():
            lines.append(f"  {size:>5} GPUs: {best.scheduler} {_k(best.allocation)}, makespan {format_duration(best.estimates['makespan_s'].mean)}, "
                         f"cost {format_significant(best.estimates['cost'].mean)}")
    return "\n".join(lines)


def _progress_printer() -> Any:
    """A rich progress bar on a terminal; a line every 10% otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    if sys.stderr.isatty():
        progress = Progress("simulating", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
        task = progress.add_task("sweep", total=None)
        progress.start()

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)
            if done == total:
                progress.stop()

        return update
    last = [-1]

    def plain(done: int, total: int) -> None:
        step = int(10 * done / total)
        if step != last[0]:
            last[0] = step
            print(f"simulated {done}/{total}", file=sys.stderr, flush=True)

    return plain


def main(settings: RecommendSettings, out_dir: Path) -> None:
    from rich.console import Console

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs = run_grid(settings.points, settings.workers, _progress_printer())
    wall = time.perf_counter() - t0
    rec = recommend(runs, settings.objective, settings.workload.metric.mode)
    write_sweep_csv(out_dir / "sweep.csv", runs)
    syne = write_ray_tune(settings, rec, out_dir)
    write_json(out_dir / "recommendation.json", {**recommendation_json(settings, rec), "syne_tune": syne})
    plan = plan_of(settings, rec)
    if plan is not None:
        write_plan(out_dir / PLAN_FILE, plan)
    if settings.plots:
        write_plots(settings, rec, out_dir)
    table = render_table(settings, rec)
    console = Console(width=max(120, Console().width))
    if not console.is_terminal:  # a file or pipe has no width: room for the whole table, no wrapped cells
        console.width = max(console.width, Console(width=10_000).measure(table).maximum)
    console.print(table)
    print(verdict(settings, rec))
    for warning in dict.fromkeys(settings.profile.node_size_warning(c.node_size) for c in settings.clusters):
        if warning:
            print(warning)
    if isinstance(settings.workload, ReplayWorkload):
        times = settings.workload.epoch_times(settings.profile)
        print(f"epoch times: {settings.workload.times_note if times is None else times.describe()}")
    if syne is not None:
        workers = "cannot run it (see ray_tune.py)" if syne["n_workers"] is None else f"n_workers={syne['n_workers']} ({syne['note']})"
        print(f"Ray Tune: ray_tune.py; Syne Tune: {workers}")
    if plan is not None:
        print(f"plan: {out_dir.resolve() / PLAN_FILE} (run this search: nasalloc run plan={out_dir.resolve() / PLAN_FILE})")
    print(f"{len(runs)} simulations in {format_duration(wall)}; output: {out_dir.resolve()}")


def plan_of(settings: RecommendSettings, rec: Recommendation) -> Plan | None:
    """The recommended search as plan.yaml holds it (None when nothing was recommended): the
    scheduler config the sweep simulated, the allocation, the first seed, profile, cluster."""
    g = rec.overall
    if g is None:
        return None
    point = _point(settings, g)
    field_name = OBJECTIVE_FIELD[rec.objective]
    predicted = {"objective": rec.objective, field_name: g.estimates[field_name].to_dict(),
                 "makespan_s": g.estimates["makespan_s"].to_dict(), "seeds": list(settings.seeds)}
    return Plan(scheduler=dataclasses.asdict(point.spec.scheduler), gpus_per_trial=allocation_value(point.allocation),
                elastic=dict(settings.elastic), seed=settings.seeds[0], profile=settings.profile_ref,
                cluster=point.spec.cluster, predicted=predicted, train=settings.train)


def _point(settings: RecommendSettings, group: GroupStats) -> GridPoint:
    """The first grid point of a group (its allocation, scheduler config and cluster)."""
    return next(p for p in settings.points if p.scheduler == group.scheduler and p.spec.cluster.gpus == group.gpus
                and str(p.allocation) == group.allocation)


def write_ray_tune(settings: RecommendSettings, rec: Recommendation, out_dir: Path) -> dict[str, Any] | None:
    """`ray_tune.py` for the recommended allocation (`tune_export`); -> Syne Tune's settings
    for it (None when nothing was recommended). An allocation that changes during a trial
    comes with the best fixed allocation of the same scheduler and cluster size."""
    g = rec.overall
    if g is None:
        return None
    point = _point(settings, g)
    field_name = OBJECTIVE_FIELD[rec.objective]

    def shown(group: GroupStats) -> str:
        value = group.estimates[field_name].mean
        return f"{rec.objective} {format_duration(value) if field_name.endswith('_s') else f'{value:,.4g}'}"

    fixed, fixed_note = None, ""
    if not point.allocation.is_static:
        family = [o for o in rec.groups if (o.scheduler, o.gpus) == (g.scheduler, g.gpus)
                  and _point(settings, o).allocation.is_static]
        best, _ = choose(family, rec.objective, rec.mode)
        if best is not None:
            fixed, fixed_note = _point(settings, best).allocation, f" ({shown(best)} predicted)"
    metric = settings.workload.metric
    text = ray_tune_snippet(alloc=point.allocation, scheduler=point.spec.scheduler, cluster=point.spec.cluster,
                            space=settings.workload.space, metric=metric.name, mode=metric.mode,
                            headline=f"{g.scheduler}, {g.allocation} GPU(s) per trial on {g.gpus} GPUs ({shown(g)} predicted)",
                            fixed=fixed, fixed_note=fixed_note)
    (out_dir / "ray_tune.py").write_text(text, encoding="utf-8")
    return syne_tune_settings(point.allocation, point.spec.cluster)


def write_plots(settings: RecommendSettings, rec: Recommendation, out_dir: Path) -> None:
    """The plots of `recommend_plots`. The two runs they show (the recommended allocation
    and the worst of its family) are simulated again here and passed as traces, so data
    flows one way: recommend -> recommend_plots. Imported here, not at the top, so that
    `plots=false` never loads matplotlib."""
    from nasalloc.sim.recommend_plots import ShownRun, write_all

    best, worst = rec.overall, rec.worst_beside_overall()
    shown = [None if g is None else ShownRun(g, rerun(settings, g).events) for g in (best, worst)]
    write_all(rec, out_dir, shown[0], shown[1])


def rerun(settings: RecommendSettings, group: GroupStats, seed_index: int = 0) -> Any:
    """Simulate one group's run again in this process (for its trace: Gantt, best-so-far)."""
    point = next(p for p in settings.points if p.scheduler == group.scheduler and p.spec.cluster.gpus == group.gpus
                 and str(p.allocation) == group.allocation and p.spec.seed == group.runs[seed_index].seed)
    return simulate(point.spec)
