"""How far a predicted trace is from a measured one: the arithmetic of `nasalloc validate`.

Both traces have the same schema, so one function reads the timings out of either:

- epoch time: the gap between consecutive results of one trial while it holds its devices
  (one epoch of training plus evaluation, reporting and the scheduler's decision);
- start-up: from a "start" to the trial's first result, less one epoch time (the trial's own);
- resume: the same from a "resume" (start-up plus checkpoint restore);
- pause: from the last result of a hold to its "pause" (decision plus checkpoint save).

Each is summarised by its median over the trace, per number of devices held, and the
prediction error of a quantity is (predicted - measured) / measured. Decisions are compared
per trial id (seeded schedulers sample the same configuration for the same trial id): a
trial agrees when it ended the same way (stopped, completed, failed) at the same epoch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nasalloc.sim.trace import HOLDS, RELEASES, TraceEvent, summarize


@dataclass
class Hold:
    """One interval during which a trial held devices."""

    trial: int
    begin: str  # "start" | "resume"
    begin_time: float
    devices: int
    results: list[float] = field(default_factory=list)  # times of its results
    end: str | None = None  # pause | stop | complete | fail (None: still open)
    end_time: float | None = None


def holds(events: Sequence[TraceEvent]) -> list[Hold]:
    open_: dict[int, Hold] = {}
    out: list[Hold] = []
    for ev in events:
        if ev.event in HOLDS:
            hold = Hold(ev.trial, ev.event, ev.time, len(ev.devices))
            open_[ev.trial] = hold
            out.append(hold)
        elif ev.event == "result" and ev.trial in open_:
            open_[ev.trial].results.append(ev.time)
        elif ev.event in RELEASES and ev.trial in open_:
            hold = open_.pop(ev.trial)
            hold.end, hold.end_time = ev.event, ev.time
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Timings:
    """Medians (seconds) read from one trace; keys of the dicts: devices held."""

    epoch_s: dict[int, float]
    startup_s: dict[int, float]
    resume_s: dict[int, float]
    pause_s: float | None
    samples: dict[str, int]
    pause_by_devices: dict[int, float] = field(default_factory=dict)  # the pause per devices held (a refit's release(k))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def timings(events: Sequence[TraceEvent]) -> Timings:
    """Medians of the trace's epoch gaps, start-up, resume and pause costs.

    Start-up (and resume) cost is taken per hold: its first result less the time since the
    start, less *that trial's own* median epoch gap — configurations differ in epoch time
    (on the digits CNN by up to 6x), and subtracting a trace-wide median would put that
    spread into the start-up: a synchronous scheduler's first rung is made of one-epoch
    holds. A hold with a single result uses the trial's gaps from its other holds on as
    many devices; a trial that never trained two epochs in a row there gives no sample.
    """
    epoch: dict[int, list[float]] = {}
    trial_gaps: dict[tuple[int, int], list[float]] = {}
    per_hold: list[tuple[Hold, list[float]]] = []
    pause: list[float] = []
    pause_at: dict[int, list[float]] = {}
    for h in holds(events):
        gaps = [b - a for a, b in zip(h.results, h.results[1:])]
        epoch.setdefault(h.devices, []).extend(gaps)
        trial_gaps.setdefault((h.trial, h.devices), []).extend(gaps)
        per_hold.append((h, gaps))
        if h.results and h.end == "pause" and h.end_time is not None:
            pause.append(h.end_time - h.results[-1])
            pause_at.setdefault(h.devices, []).append(h.end_time - h.results[-1])
    epoch_med = {k: m for k, v in epoch.items() if (m := _median(v)) is not None}
    first: dict[tuple[str, int], list[float]] = {}
    for h, gaps in per_hold:
        own = _median(gaps or trial_gaps[(h.trial, h.devices)])
        if h.results and own is not None:
            first.setdefault((h.begin, h.devices), []).append(max(0.0, h.results[0] - h.begin_time - own))

    def overhead(kind: str) -> dict[int, float]:
        return {k: statistics.median(v) for (begin, k), v in first.items() if begin == kind}

    return Timings(
        epoch_s=epoch_med,
        startup_s=overhead("start"),
        resume_s=overhead("resume"),
        pause_s=_median(pause),
        samples={"epochs": sum(len(v) for v in epoch.values()),
                 "starts": sum(len(v) for (b, _), v in first.items() if b == "start"),
                 "resumes": sum(len(v) for (b, _), v in first.items() if b == "resume"), "pauses": len(pause)},
        pause_by_devices={k: statistics.median(v) for k, v in pause_at.items()},
    )


def relative_error(predicted: float | None, measured: float | None) -> float | None:
    """(predicted - measured) / measured; None when either is missing or measured is 0."""
    if predicted is None or measured is None or measured == 0 or not math.isfinite(predicted) or not math.isfinite(measured):
        return None
    return (predicted - measured) / measured


def outcomes(events: Sequence[TraceEvent]) -> dict[int, tuple[str, int | None]]:
    """Per trial: how its last hold ended and at which epoch."""
    out: dict[int, tuple[str, int | None]] = {}
    last_epoch: dict[int, int | None] = {}
    for ev in events:
        if ev.event == "result":
            last_epoch[ev.trial] = ev.epoch
        if ev.event in ("stop", "complete", "fail", "pause"):
            out[ev.trial] = (ev.event, ev.epoch if ev.epoch is not None else last_epoch.get(ev.trial))
    return out


@dataclass
class Agreement:
    trials_measured: int
    trials_predicted: int
    same_outcome: int  # trials that ended the same way at the same epoch
    fraction: float  # same_outcome / trials in either trace
    epochs_measured: int
    epochs_predicted: int
    same_best_trial: bool
    differing: list[dict[str, Any]]  # the first few disagreements, for the report


def agreement(predicted: Sequence[TraceEvent], measured: Sequence[TraceEvent], mode: str) -> Agreement:
    p, m = outcomes(predicted), outcomes(measured)
    ids = sorted(set(p) | set(m))
    same = [t for t in ids if p.get(t) == m.get(t)]
    diff = [{"trial": t, "predicted": p.get(t), "measured": m.get(t)} for t in ids if p.get(t) != m.get(t)]
    sp = summarize(list(predicted), mode=mode, n_devices=1, scheduler="", gpus_per_trial=None)
    sm = summarize(list(measured), mode=mode, n_devices=1, scheduler="", gpus_per_trial=None)
    return Agreement(
        trials_measured=len(m), trials_predicted=len(p), same_outcome=len(same),
        fraction=len(same) / len(ids) if ids else 1.0,
        epochs_measured=sm.epochs_trained, epochs_predicted=sp.epochs_trained,
        same_best_trial=sp.best_trial == sm.best_trial, differing=diff[:20],
    )


@dataclass
class Comparison:
    """Everything `validation.json` reports for one run."""

    makespan_s: dict[str, float | None]
    gpu_utilization: dict[str, float | None]
    epoch_s: dict[str, dict[str, float | None]]  # per devices held: predicted, measured, error
    startup_s: dict[str, dict[str, float | None]]
    resume_s: dict[str, dict[str, float | None]]
    pause_s: dict[str, float | None]
    decisions: Agreement
    timings_predicted: Timings
    timings_measured: Timings


def _pair(pred: float | None, meas: float | None) -> dict[str, float | None]:
    return {"predicted": pred, "measured": meas, "error": relative_error(pred, meas)}


def _per_k(pred: dict[int, float], meas: dict[int, float]) -> dict[str, dict[str, float | None]]:
    return {str(k): _pair(pred.get(k), meas.get(k)) for k in sorted(set(pred) | set(meas))}


def compare(predicted: Sequence[TraceEvent], measured: Sequence[TraceEvent], *, mode: str, n_devices: int) -> Comparison:
    sp = summarize(list(predicted), mode=mode, n_devices=n_devices, scheduler="", gpus_per_trial=None)
    sm = summarize(list(measured), mode=mode, n_devices=n_devices, scheduler="", gpus_per_trial=None)
    tp, tm = timings(predicted), timings(measured)
    return Comparison(
        makespan_s=_pair(sp.makespan_s, sm.makespan_s),
        gpu_utilization={"predicted": sp.gpu_utilization, "measured": sm.gpu_utilization,
                         "difference": sp.gpu_utilization - sm.gpu_utilization},
        epoch_s=_per_k(tp.epoch_s, tm.epoch_s),
        startup_s=_per_k(tp.startup_s, tm.startup_s),
        resume_s=_per_k(tp.resume_s, tm.resume_s),
        pause_s=_pair(tp.pause_s, tm.pause_s),
        decisions=agreement(predicted, measured, mode),
        timings_predicted=tp,
        timings_measured=tm,
    )


def kendall_tau(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Rank agreement of allocations (1: same order, -1: reversed); None with < 2 runs."""
    if len(predicted) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(predicted, measured).statistic
    return None if tau is None or math.isnan(tau) else float(tau)
