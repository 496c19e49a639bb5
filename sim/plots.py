"""Plots of a trace (simulated or real): a Gantt chart of the devices (bars coloured by how
each hold ended) and the best-so-far curve.

Both take plain `TraceEvent` lists, so the executor draws its real runs with the same code.
Matplotlib's Agg backend (no display); every bar of the Gantt chart goes into one
PolyCollection, so thousands of trials draw in well under a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from nasalloc.sim.formatting import duration_unit  # noqa: E402
from nasalloc.sim.trace import TraceEvent  # noqa: E402
from nasalloc.sim.trace import holds as trace_holds  # noqa: E402

# How a hold ended -> (colour, legend label). Okabe-Ito colours (told apart with the common
# colour-vision deficiencies); a trial's bars take the colour of how each of its holds ended,
# so hundreds of trials need no palette that would repeat.
OUTCOME_STYLE = {
    "complete": ("#009E73", "completed"),
    "stop": ("#D55E00", "stopped"),
    "pause": ("#56B4E9", "paused (resumed later)"),
    "fail": ("#CC79A7", "failed"),
    "running": ("#999999", "still running at the end"),
}


def plot_gantt(events: list[TraceEvent], n_devices: int, path: Path, title: str = "") -> None:
    """Devices (rows) over time, one bar per hold coloured by how it ended (see `draw_gantt`)."""
    fig_h = min(2.0 + 0.18 * n_devices, 14.0)
    fig, ax = plt.subplots(figsize=(11, fig_h))
    draw_gantt(ax, events, n_devices, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_gantt(ax: Any, events: list[TraceEvent], n_devices: int, title: str = "", span: float | None = None) -> None:
    """Draw the Gantt chart into `ax`; `span` (seconds) fixes the time axis so two charts
    (predicted and measured) can share one scale.

    One bar per hold (a trial holding its devices from a start or resume to its release),
    coloured by how the hold ended: completed, stopped, paused or failed (`OUTCOME_STYLE`).
    Trials sharing a device (k < 1) get lanes inside the device's row. The legend sits to the
    right of the axes, never over the bars.
    """
    holds = trace_holds(events, open_until=max((e.time for e in events), default=0.0))
    if span is None:
        span = max((h[2] for h in holds), default=1.0) or 1.0
    scale, unit = duration_unit(span)
    # lanes per device: greedy interval colouring so overlapping shares stack
    per_device: dict[int, list[tuple[float, float, str]]] = {}
    for _trial, t0, t1, devs, how in holds:
        for d in devs:
            per_device.setdefault(d, []).append((t0, t1, how))
    polys, colors, seen = [], [], set()
    for d, items in per_device.items():
        items.sort()
        lane_end: list[float] = []
        placed = []
        for t0, t1, how in items:
            lane = next((i for i, e in enumerate(lane_end) if e <= t0 + 1e-9), None)
            if lane is None:
                lane = len(lane_end)
                lane_end.append(t1)
            else:
                lane_end[lane] = t1
            placed.append((t0, t1, how, lane))
        height = 0.8 / max(len(lane_end), 1)
        for t0, t1, how, lane in placed:
            y0 = d - 0.4 + lane * height
            x0, x1 = t0 / scale, t1 / scale
            polys.append([(x0, y0), (x1, y0), (x1, y0 + height), (x0, y0 + height)])
            colors.append(OUTCOME_STYLE[how][0])
            seen.add(how)
    if polys:
        ax.add_collection(PolyCollection(polys, facecolors=colors, edgecolors="white", linewidths=0.3))
    ax.set_xlim(0, span / scale * 1.01)
    ax.set_ylim(-0.6, max(n_devices, 1) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel(f"time [{unit}]")
    ax.set_ylabel("device")
    if n_devices <= 32:
        ax.set_yticks(range(n_devices))
    ax.set_title(title or "devices over time")
    if seen:
        handles = [Patch(facecolor=color, label=label) for how, (color, label) in OUTCOME_STYLE.items() if how in seen]
        ax.legend(handles=handles, title="hold ended", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  borderaxespad=0.0, fontsize=8, title_fontsize=8, frameon=False)


def plot_best_so_far(events: list[TraceEvent], mode: str, path: Path, title: str = "") -> None:
    """Best metric reported so far over time (step line), every result as a faint dot, and
    the test metric of the best result where the trace has one."""
    results = [e for e in events if e.event == "result" and e.metric is not None and e.metric == e.metric]
    sign = 1.0 if mode == "max" else -1.0
    span = max((e.time for e in events), default=1.0) or 1.0
    scale, unit = duration_unit(span)
    xs, best_y, test_y = [], [], []
    best = None
    for e in sorted(results, key=lambda e: e.time):
        if best is None or sign * e.metric > sign * best.metric:  # type: ignore[operator]
            best = e
            xs.append(e.time / scale)
            best_y.append(e.metric)
            test_y.append(e.test_metric)
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    if results:
        ax.scatter([e.time / scale for e in results], [e.metric for e in results], s=4, alpha=0.25, color="#8c959f", label="results")
    if xs:
        ax.step(xs + [span / scale], best_y + [best_y[-1]], where="post", color="#0969da", lw=1.8, label="best so far")
        if any(t is not None for t in test_y):
            pts = [(x, t) for x, t in zip(xs, test_y) if t is not None]
            ax.step([p[0] for p in pts] + [span / scale], [p[1] for p in pts] + [pts[-1][1]], where="post",
                    color="#bf8700", lw=1.2, ls="--", label="test metric of the best")
    ax.set_xlabel(f"time [{unit}]")
    ax.set_ylabel("metric")
    ax.set_xlim(0, span / scale * 1.01)
    ax.set_title(title or "best metric so far")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)  # off the dots
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
