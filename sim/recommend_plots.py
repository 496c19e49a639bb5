"""Plots of a recommendation: objective vs allocation with 95% intervals, best-so-far of the
recommended against the worst allocation, the recommended run's Gantt chart, and (when
several cluster sizes were compared) time and cost against cluster size."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from nasalloc.sim.formatting import duration_unit  # noqa: E402
from nasalloc.sim.plots import plot_gantt  # noqa: E402
from nasalloc.sim.ranking import OBJECTIVE_FIELD, GroupStats, Recommendation  # noqa: E402
from nasalloc.sim.trace import TraceEvent  # noqa: E402

_LABELS = {"makespan_s": "makespan", "time_to_target_s": "time to target", "metric_at_deadline": "best metric",
           "cost": "cost"}


def _axis(field: str, values: list[float]) -> tuple[float, str]:
    """(divisor, axis label) for a field: durations in the unit of their smallest value, as the
    recommend table's column (`sim.formatting.duration_unit`); other fields as they are."""
    if not field.endswith("_s"):
        return 1.0, _LABELS[field]
    finite = [v for v in values if math.isfinite(v)]
    scale, unit = duration_unit(min(finite) if finite else 0.0)
    return scale, f"{_LABELS[field]} [{unit}]"


def plot_objective(rec: Recommendation, path: Path) -> None:
    field = OBJECTIVE_FIELD[rec.objective]
    families: dict[tuple[str, int], list[GroupStats]] = {}
    for g in rec.groups:
        families.setdefault((g.scheduler, g.gpus), []).append(g)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    labels: list[str] = []
    for g in rec.groups:
        if g.allocation not in labels:
            labels.append(g.allocation)
    x_of = {label: i for i, label in enumerate(labels)}
    scale, axis_label = _axis(field, [g.estimates[field].mean for g in rec.groups])
    n = len(families)
    offsets = {}
    for j, ((sched, gpus), groups) in enumerate(families.items()):
        offset = offsets[(sched, gpus)] = (j - (n - 1) / 2) * 0.8 / max(n, 1)
        xs, ys, lo, hi = [], [], [], []
        for g in groups:
            est = g.estimates[field]
            if not math.isfinite(est.mean):
                continue
            xs.append(x_of[g.allocation] + offset)
            ys.append(est.mean / scale)
            low = est.low if math.isfinite(est.low) else est.mean
            high = est.high if math.isfinite(est.high) else est.mean
            lo.append((est.mean - low) / scale)
            hi.append((high - est.mean) / scale)
        name = sched if len({k[1] for k in families}) == 1 else f"{sched}, {gpus} GPUs"
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o-", ms=4, capsize=3, lw=1.2, label=name)
    if rec.overall is not None:
        est = rec.overall.estimates[field]
        x = x_of[rec.overall.allocation] + offsets[(rec.overall.scheduler, rec.overall.gpus)]
        ax.scatter([x], [est.mean / scale], s=160, facecolors="none",
                   edgecolors="#1a7f37", linewidths=2, zorder=5, label="recommended")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 8 else 0)
    ax.set_xlabel("GPUs per trial (k; [..] = per-rung schedule)")
    ax.set_ylabel(axis_label)
    ax.set_title(f"{rec.objective} by allocation (mean and 95% CI over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for events, label, colour in ((best_events, labels[0], "#1a7f37"), (worst_events, labels[1], "#cf222e")):
        xs, ys = _best_so_far(events, sign)
        end = max((e.time for e in events), default=0.0)
        ax.step([x / scale for x in xs + [end]], ys + [ys[-1]], where="post", lw=1.8, color=colour, label=label)
        ax.axvline(end / scale, color=colour, lw=0.8, ls=":")
    ax.set_xlabel(f"time [{unit}]")
    ax.set_ylabel("best metric so far")
    ax.set_title("best metric over time: recommended vs worst allocation (seed of the first run)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if mode == "max" else "upper right")
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
            ax.annotate(f"k={g.allocation}", (s, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log", base=2)
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
                              (f"recommended: k={best.allocation}", f"worst: k={worst.group.allocation}"),
                              rec.mode, out_dir / "best_so_far.png")
    plot_gantt(recommended.events, best.gpus, out_dir / "gantt_recommended.png",
               f"{best.scheduler}, k={best.allocation} on {best.gpus} GPUs (recommended, seed {best.runs[0].seed})")
