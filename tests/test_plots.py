"""The plots a user puts in a report, checked through their matplotlib artists: what is
joined by a line, where the legend sits, which colour means what, which unit an axis has.
Expected values come from the constructed inputs (traces, groups, timings), not from the
plotting code."""

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from nasalloc.sim.ranking import recommend  # noqa: E402
from nasalloc.sim.sweep import RunMetrics  # noqa: E402
from nasalloc.sim.trace import TraceEvent  # noqa: E402


def _legend_outside_the_data_area(ax) -> None:
    """The legend's box lies wholly right of the axes' box (so it covers no bar or point)."""
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend is not None
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert box.x0 >= axes_box.x1, (box, axes_box)


# ----- Gantt charts ------------------------------------------------------------------------

# Four holds on two devices, one of each outcome, and one still open when the trace ends:
#   device 0: trial 0 runs 0-10 s and completes; trial 1 runs 10-15 s and is stopped
#   device 1: trial 2 runs 0-6 s and is paused; trial 3 runs 6-9 s and fails;
#             trial 2 resumes at 9 s and is still running at 20 s (the last event)
OKABE_ITO = {"complete": "#009e73", "stop": "#d55e00", "pause": "#56b4e9", "fail": "#cc79a7", "running": "#999999"}
GANTT = [
    TraceEvent(time=0, event="start", trial=0, devices=(0,)),
    TraceEvent(time=0, event="start", trial=2, devices=(1,)),
    TraceEvent(time=6, event="pause", trial=2, devices=(1,)),
    TraceEvent(time=6, event="start", trial=3, devices=(1,)),
    TraceEvent(time=9, event="fail", trial=3, devices=(1,)),
    TraceEvent(time=9, event="resume", trial=2, devices=(1,)),
    TraceEvent(time=10, event="complete", trial=0, devices=(0,)),
    TraceEvent(time=10, event="start", trial=1, devices=(0,)),
    TraceEvent(time=15, event="stop", trial=1, devices=(0,)),
    TraceEvent(time=20, event="result", trial=2, epoch=3, metric=0.5, devices=(1,)),
]


def _gantt_axes(events, n_devices):
    from nasalloc.sim.plots import draw_gantt

    fig, ax = plt.subplots(figsize=(11, 3))
    draw_gantt(ax, events, n_devices)
    return fig, ax


def _bars(ax):
    """(x0, x1, device row, facecolour) of every bar."""
    coll = next(c for c in ax.collections if isinstance(c, PolyCollection))
    out = []
    for path, color in zip(coll.get_paths(), coll.get_facecolors()):
        xs, ys = path.vertices[:, 0], path.vertices[:, 1]
        out.append((round(xs.min(), 6), round(xs.max(), 6), round(float(ys.mean())), to_hex(color)))
    return sorted(out)


def test_gantt_bars_are_coloured_by_how_each_hold_ended():
    fig, ax = _gantt_axes(GANTT, 2)
    assert ax.get_xlabel() == "time [s]"  # a 20 s trace
    assert _bars(ax) == [
        (0.0, 6.0, 1, OKABE_ITO["pause"]),
        (0.0, 10.0, 0, OKABE_ITO["complete"]),
        (6.0, 9.0, 1, OKABE_ITO["fail"]),
        (9.0, 20.0, 1, OKABE_ITO["running"]),
        (10.0, 15.0, 0, OKABE_ITO["stop"]),
    ]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["completed", "stopped", "paused (resumed later)", "failed", "still running at the end"]
    _legend_outside_the_data_area(ax)
    plt.close(fig)


def test_hundreds_of_trials_share_the_few_outcome_colours():
    # 300 trials one after another on 4 devices, every 4th completes, the rest are stopped
    events = []
    for t in range(300):
        d, t0 = t % 4, 10.0 * (t // 4)
        events += [TraceEvent(time=t0, event="start", trial=t, devices=(d,)),
                   TraceEvent(time=t0 + 9, event="complete" if t % 4 == 0 else "stop", trial=t, devices=(d,))]
    fig, ax = _gantt_axes(events, 4)
    colours = {c for *_, c in _bars(ax)}
    assert colours == {OKABE_ITO["complete"], OKABE_ITO["stop"]}
    assert ax.get_xlabel() == "time [min]"  # 749 s: from 2 min up, minutes
    _legend_outside_the_data_area(ax)
    plt.close(fig)


# ----- objective by allocation -------------------------------------------------------------

def _runs(makespans):
    """RunMetrics for {(gpus, allocation): [makespan per seed]} of one scheduler (asha)."""
    return [RunMetrics("asha", gpus, alloc, seed, m, None, 0.7, None, 0.7, 1.0, 1.0, 0.9, 10, 20)
            for (gpus, alloc), values in makespans.items() for seed, m in enumerate(values)]


# Two cluster sizes, in the grid order `recommend` produces (each size's static k, then its
# schedules, then elastic): 64 GPUs brings k = 32 and 64, which must land after 16, not after
# 16 GPUs' schedules. Makespans in seconds, three seeds.
TWO_SIZES = {
    (16, "1/4"): [90.0, 95, 100], (16, "1"): [60.0, 62, 64], (16, "16"): [50.0, 52, 54],
    (16, "[1/4,1/2,1,2]"): [70.0, 72, 74], (16, "[1,2,4,8]"): [48.0, 50, 52], (16, "elastic"): [46.0, 47, 48],
    (64, "1"): [40.0, 41, 42], (64, "32"): [30.0, 31, 32], (64, "64"): [35.0, 36, 37],
    (64, "[1/4,1/2,1,2]"): [38.0, 39, 40], (64, "[1,2,4,8]"): [33.0, 34, 35], (64, "elastic"): [20.0, 21, 22],
}
ORDER = ["1/4", "1", "16", "32", "64", "[1/4,1/2,1,2]", "[1,2,4,8]", "elastic"]


def _objective_axes(makespans):
    from nasalloc.sim.recommend_plots import draw_objective

    fig, ax = plt.subplots(figsize=(10, 4.8))
    draw_objective(ax, recommend(_runs(makespans), "makespan", "max"))
    return fig, ax


def test_objective_plot_keeps_one_category_order_and_joins_no_kinds():
    fig, ax = _objective_axes(TWO_SIZES)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ORDER
    joined = []
    for line in ax.get_lines():
        xs = np.asarray(line.get_xdata(), dtype=float)
        if line.get_linestyle() in ("None", "", " ") or len(set(np.round(xs, 9))) < 2:
            continue  # markers only (points, error bar caps), a single point or a vertical rule: joins nothing
        categories = [ORDER[int(round(x))] for x in xs]  # the dodge offset is under half a slot
        joined.append(categories)
        assert np.all(np.diff(xs) > 0)  # a line runs left to right: no zigzag back
    # only the static k of each cluster size are joined (k is ordered); schedules and elastic
    # are categories of their own, not points on the k axis nor on each other's line
    assert sorted(joined) == [["1", "32", "64"], ["1/4", "1", "16"]]
    plt.close(fig)


def test_objective_plot_units_legend_and_recommended_marker():
    fig, ax = _objective_axes(TWO_SIZES)
    assert ax.get_ylabel() == "makespan [s]"  # the longest search is 100 s: seconds, not 0.03 h
    _legend_outside_the_data_area(ax)
    ring = next(c for c in ax.collections if c.get_label() == "recommended")
    ring_colour = to_hex(ring.get_edgecolor()[0])
    series = {to_hex(line.get_color()) for line in ax.get_lines()}
    assert ring_colour not in series
    # elastic on 64 GPUs (21 s) is the recommendation: the ring sits at its slot
    x, y = ring.get_offsets()[0]
    assert round(x) == ORDER.index("elastic") and y == pytest.approx(21.0)
    plt.close(fig)


@pytest.mark.parametrize("scale, unit", [(60.0, "min"), (3600.0, "h")])
def test_objective_axis_unit_follows_the_magnitude(scale, unit):
    # the same searches 60 and 3600 times longer: 100 min and 100 h at the longest
    fig, ax = _objective_axes({key: [v * scale for v in values] for key, values in TWO_SIZES.items()})
    assert ax.get_ylabel() == f"makespan [{unit}]"
    means = [y for line in ax.get_lines() if line.get_marker() == "o" for y in line.get_ydata()]
    assert max(means) == pytest.approx(95.0)  # 16 GPUs at k=1/4: the mean of 90, 95, 100 in the chosen unit
    plt.close(fig)


# ----- speedup.png -------------------------------------------------------------------------

def _speedup_axes(tmp_path, gpus_per_node):
    """Step times at k = 1, 2, 4 (nodes of `gpus_per_node`), 8 samples each, a little noise."""
    from nasalloc.calibration.analysis import analyse
    from nasalloc.calibration.fit import FitSettings
    from nasalloc.calibration.import_csv import read_timings
    from nasalloc.calibration.report import WorkloadFacts, draw_speedup

    rng = np.random.default_rng(0)
    rows = ["k,step_time_s"] + [f"{k},{t * (1 + 0.03 * rng.standard_normal()):.6f}"
                                for k, t in ((1, 0.1), (2, 0.056), (4, 0.031)) for _ in range(8)]
    path = tmp_path / "timings.csv"
    path.write_text("\n".join(rows) + "\n")
    m = read_timings(path, lambda k: 1.0 / k)
    a = analyse(m, FitSettings(gpus_per_node=gpus_per_node, backend="cuda"), bootstrap=20,
                rng=np.random.default_rng(1))
    w = WorkloadFacts(entrypoint="mytrain:train", samples_per_epoch=1000, batch_per_device=32, scaling="strong",
                      global_batch=32, eval_scales=False)
    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    draw_speedup(ax, m, a, w, name="my-profile")
    return fig, ax


def _line(ax, text):
    return next(line for line in ax.get_lines() if text in line.get_label())


def test_speedup_plot_marks_the_node_boundary_and_the_extrapolation(tmp_path):
    fig, ax = _speedup_axes(tmp_path, gpus_per_node=4)
    assert ax.get_title() == "my-profile (strong scaling)"  # the profile, not mytrain:train
    boundary = _line(ax, "node boundary")
    xs = set(boundary.get_xdata())
    assert len(xs) == 1 and 4 < xs.pop() < 8  # between the last k inside a node and the first beyond
    fitted, beyond = _line(ax, "fitted step-time model"), _line(ax, "extrapolated")
    assert max(fitted.get_xdata()) == 4 and min(beyond.get_xdata()) == 4  # measured up to k = 4
    assert beyond.get_linestyle() != fitted.get_linestyle()
    # the curve is drawn at allocations a cluster of nodes of 4 allows, no k = 3, 5, 6, 7
    assert set(fitted.get_xdata()) | set(beyond.get_xdata()) == {1, 2, 4, 8, 16}
    # beyond one node the curve rests on the pinned inter-node pair (no k > 4 measured)
    for name in ("inter_bandwidth_Bps", "inter_latency_s"):
        assert name in beyond.get_label()
    _legend_outside_the_data_area(ax)
    plt.close(fig)


def test_speedup_band_is_drawn_visibly(tmp_path):
    fig, ax = _speedup_axes(tmp_path, gpus_per_node=4)
    bands = [c for c in ax.collections if "95% band" in c.get_label()]
    assert len(bands) == 1 and bands[0].get_alpha() >= 0.3
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "95% band (20 bootstrap fits)" in labels
    plt.close(fig)


def test_an_extrapolation_names_exactly_the_terms_it_assumes(tmp_path):
    """Nodes of 16: measured k = 1, 2, 4, drawn to 64. k = 2 and 4 inside the node identify
    two intra-node terms (bandwidth, then latency), so no intra-node term is assumed on the
    way to k = 16; the overlap exponent gamma has no point left and the gradient size is never
    measured; 32 and 64 span nodes, where nothing was measured: both inter-node terms."""
    fig, ax = _speedup_axes(tmp_path, gpus_per_node=16)
    beyond = _line(ax, "extrapolated")
    assumed = {line.strip().split(" = ")[0] for line in beyond.get_label().splitlines()[2:]}
    assert assumed == {"gamma", "grad_bytes", "inter_bandwidth_Bps", "inter_latency_s"}
    assert set(beyond.get_xdata()) == {4, 8, 16, 32, 64}
    plt.close(fig)
    from nasalloc.calibration.report import speedup_grid

    assert list(speedup_grid(np.array([1.0, 2.0, 4.0]), 16)) == [1, 2, 4, 8, 16, 32, 64]
    assert list(speedup_grid(np.array([1.0, 2.0]), 2)) == [1, 2, 4, 8]
    assert math.isclose(speedup_grid(np.array([1.0, 3.0]), 6)[2], 3.0)  # 1, 2, 3, 6, 12, 24
