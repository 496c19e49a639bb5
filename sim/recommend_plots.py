"""Plots of a recommendation: objective vs allocation with 95% intervals, best-so-far of the
recommended against the worst allocation, the recommended run's Gantt chart, and (when
several cluster sizes were compared) time and cost against cluster size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from nasalloc.sim.cluster import ELASTIC  # noqa: E402
from nasalloc.sim.formatting import duration_unit  # noqa: E402
from nasalloc.sim.plots import plot_gantt  # noqa: E402
from nasalloc.sim.ranking import OBJECTIVE_FIELD, GroupStats, Recommendation  # noqa: E402
from nasalloc.sim.trace import TraceEvent  # noqa: E402

_LABELS = {"makespan_s": "makespan", "time_to_target_s": "time to target", "metric_at_deadline": "best metric",
           "cost": "cost"}


def _k(allocation: str) -> str:
    """"k=2", "k=[1,2,4,8]"; the elastic policy is no k: "elastic"."""
    return allocation if allocation == ELASTIC else f"k={allocation}"


def _axis(field: str, values: list[float]) -> tuple[float, str]:
    """(divisor, axis label) for a field: durations in the unit their largest value calls for
    (`sim.formatting.duration_unit`: a 46 s search in seconds, a 7.8 h one in hours), so the
    axis ticks read as small numbers; other fields as they are."""
    if not field.endswith("_s"):
        return 1.0, _LABELS[field]
    finite = [v for v in values if math.isfinite(v)]
    scale, unit = duration_unit(max(finite) if finite else 0.0)
    return scale, f"{_LABELS[field]} [{unit}]"


# Kinds of allocation, in the order the x axis shows them. Allocations are categories: a
# line may join the static k of one series (an ordered quantity), never one kind to another.
KINDS = ("static k", "per-rung schedule", "elastic")


def allocation_kind(allocation: str) -> int:
    """Index into `KINDS` of an allocation label ("2", "1/4", "[1,2,4,8]", "elastic")."""
    if allocation == ELASTIC:
        return 2
    return 1 if allocation.startswith("[") else 0


def _category_key(allocation: str) -> tuple[int, tuple[Fraction, ...]]:
    """x order: static k ascending, then per-rung schedules by their k, then elastic; the same
    for every cluster size, so 32 and 64 sit after 16, not after the schedules."""
    kind = allocation_kind(allocation)
    if kind == 2:
        return kind, ()
    return kind, tuple(Fraction(k) for k in allocation.strip("[]").split(","))


def plot_objective(rec: Recommendation, path: Path) -> None:
    """objective_by_allocation.png: `draw_objective` on a figure of its own."""
    fig, ax = plt.subplots(figsize=(10, 4.8))
    draw_objective(ax, rec)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_objective(ax: Any, rec: Recommendation) -> None:
    """Mean objective with its 95% interval per allocation, one series per scheduler (and
    cluster size), the recommended allocation ringed in black (a colour no series uses).
    Static k of a series are joined by a line; per-rung schedules and elastic are points.
    The legend sits right of the axes, off the points."""
    field = OBJECTIVE_FIELD[rec.objective]
    families: dict[tuple[str, int], list[GroupStats]] = {}
    for g in rec.groups:
        families.setdefault((g.scheduler, g.gpus), []).append(g)
    labels = sorted({g.allocation for g in rec.groups}, key=_category_key)
    x_of = {label: i for i, label in enumerate(labels)}
    scale, axis_label = _axis(field, [g.estimates[field].mean for g in rec.groups])
    n = len(families)
    offsets = {}
    several_sizes = len({gpus for _, gpus in families}) > 1
    for j, ((sched, gpus), groups) in enumerate(families.items()):
        offset = offsets[(sched, gpus)] = (j - (n - 1) / 2) * 0.6 / max(n, 1)
        color = f"C{j % 10}"
        name = f"{sched}, {gpus} GPUs" if several_sizes else sched
        for kind in range(len(KINDS)):
            points = sorted((g for g in groups if allocation_kind(g.allocation) == kind
                             and math.isfinite(g.estimates[field].mean)), key=lambda g: _category_key(g.allocation))
            if not points:
                continue
            est = [g.estimates[field] for g in points]
            lo = [(e.mean - (e.low if math.isfinite(e.low) else e.mean)) / scale for e in est]
            hi = [((e.high if math.isfinite(e.high) else e.mean) - e.mean) / scale for e in est]
            ax.errorbar([x_of[g.allocation] + offset for g in points], [e.mean / scale for e in est], yerr=[lo, hi],
                        fmt="o-" if kind == 0 else "o", ms=4, capsize=3, lw=1.2, color=color, label=name)
            name = "_nolegend_"  # one legend entry per series
    for i in range(1, len(labels)):  # a dotted rule between kinds
        if allocation_kind(labels[i]) != allocation_kind(labels[i - 1]):
            ax.axvline(i - 0.5, color="0.75", lw=0.8, ls=":")
    if rec.overall is not None:
        est = rec.overall.estimates[field]
        x = x_of[rec.overall.allocation] + offsets[(rec.overall.scheduler, rec.overall.gpus)]
        ax.scatter([x], [est.mean / scale], s=170, facecolors="none", edgecolors="black", linewidths=2, zorder=5,
                   label="recommended")
    if not any(math.isfinite(g.estimates[field].mean) for g in rec.groups):  # e.g. a target never reached
        what = "reached the target" if field == "time_to_target_s" else f"has a {_LABELS[field]}"
        ax.text(0.5, 0.5, f"no allocation {what} in every seed", transform=ax.transAxes, ha="center", va="center",
                color="0.4")
        axis_label = _LABELS[field]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 8 else 0)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    present = [KINDS[k] for k in sorted({allocation_kind(lab) for lab in labels})]
    ax.set_xlabel("GPUs per trial: " + " | ".join(present))
    ax.set_ylabel(axis_label)
    if field != "metric_at_deadline":  # durations and cost are never negative (a t interval of few seeds may reach below 0)
        ax.set_ylim(bottom=0)
    ax.set_title(f"{rec.objective} by allocation (mean and 95% CI over seeds)")
    ax.grid(alpha=0.3, axis="y")
    handles, names = ax.get_legend_handles_labels()
    order = sorted(range(len(names)), key=lambda i: names[i] == "recommended")  # the series first
    ax.legend([handles[i] for i in order], [names[i] for i in order], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def _best_so_far(events: list[Any], sign: float) -> tuple[list[float], list[float]]:
    xs, ys, best = [0.0], [math.nan], None
    for e in sorted((e for e in events if e.event == "result" and e.metric is not None), key=lambda e: e.time):
        if best is None or sign * e.metric > sign * best:
            best = e.metric
            xs.append(e.time)
            ys.append(best)
    return xs, ys


def plot_recommended_vs_worst(best_events: list[Any], worst_events: list[Any], labels: tuple[str, str],
                              mode: str, path: Path) -> None:
    sign = 1.0 if mode == "max" else -1.0
    scale, unit = duration_unit(max((e.time for e in [*best_events, *worst_events]), default=0.0))
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for events, label, colour in ((best_events, labels[0], "#1a7f37"), (worst_events, labels[1], "#cf222e")):
        xs, ys = _best_so_far(events, sign)
        end = max((e.time for e in events), default=0.0)
        ax.step([x / scale for x in xs + [end]], ys + [ys[-1]], where="post", lw=1.8, color=colour, label=label)
        ax.axvline(end / scale, color=colour, lw=0.8, ls=":")
    ax.set_xlabel(f"time [{unit}]")
    ax.set_ylabel("best metric so far")
    ax.set_title("best metric over time: recommended vs worst allocation (seed of the first run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cluster_sizes(rec: Recommendation, path: Path) -> None:
    sizes = sorted(rec.per_size)
    best = [rec.per_size[s] for s in sizes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, field in ((ax1, "makespan_s"), (ax2, "cost")):
        scale, label = _axis(field, [g.estimates[field].mean for g in best])
        ys = [g.estimates[field].mean / scale for g in best]
        ax.plot(sizes, ys, "o-")
        for s, y, g in zip(sizes, ys, best):
            ax.annotate(_k(g.allocation), (s, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log", base=2)
        ax.margins(x=0.12)  # room for the k labels of the first and last size
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("cluster size [GPUs]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("best allocation per cluster size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class ShownRun:
    """One simulated run that a plot shows: its group (scheduler, cluster size, allocation)
    and its trace. `recommend` simulates it and hands it over, so this module needs only
    plain data and never imports `recommend` back."""

    group: GroupStats
    events: list[TraceEvent]


def write_all(rec: Recommendation, out_dir: Path, recommended: ShownRun | None, worst: ShownRun | None) -> None:
    """Every plot of a recommendation; the best-so-far and Gantt plots need the recommended
    and the worst run of its family (both None when nothing was recommended)."""
    plot_objective(rec, out_dir / "objective_by_allocation.png")
    if len(rec.per_size) > 1:
        plot_cluster_sizes(rec, out_dir / "cluster_sizes.png")
    if recommended is None or worst is None:
        return
    best = recommended.group
    plot_recommended_vs_worst(recommended.events, worst.events,
                              (f"recommended: {_k(best.allocation)}", f"worst: {_k(worst.group.allocation)}"),
                              rec.mode, out_dir / "best_so_far.png")
    plot_gantt(recommended.events, best.gpus, out_dir / "gantt_recommended.png",
               f"{best.scheduler}, {_k(best.allocation)} on {best.gpus} GPUs (recommended, seed {best.runs[0].seed})")
