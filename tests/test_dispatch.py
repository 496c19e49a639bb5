"""The dispatch core (`sim/dispatch.py`) driven directly, with a fake clock: no simpy, no processes.

Every epoch of every trial takes 1 s whatever its k, saves take no time, and a trial's metric
is the same at every epoch (its row in `metrics`). Events at one instant are handled in the
order their epochs started. Each scenario's trace (results left out) was worked out by hand
from the scheduler's rules (`sim/schedulers/asha.py`) and the core's (its module docstring);
the comment above each row says why it happens.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from nasalloc.sim.cluster import ClusterSpec, DevicePool, parse_allocation
from nasalloc.sim.dispatch import WAITED, Dispatcher, Segment
from nasalloc.sim.schedulers import AshaConfig, Decision, make_scheduler
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.trace import TraceEvent

SPACE = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0}})


@dataclass
class Scenario:
    name: str
    variant: str  # ASHA's: promotion | stopping
    n_trials: int
    gpus_per_trial: Any
    metrics: list[float]  # trial id -> its metric at every epoch
    expected: list[tuple]  # (time, event, trial, epoch, devices[, typed fields and info])
    faults: set[tuple[int, int]] = field(default_factory=set)  # (trial, epoch): its first attempt crashes there


def run(sc: Scenario) -> tuple[list[TraceEvent], Dispatcher]:
    """Drive a Dispatcher over 2 devices (one node), ASHA with rungs at epoch 1 of 3 (eta 3)."""
    cfg = AshaConfig(name="asha", n_trials=sc.n_trials, max_epochs=3, mode="max", max_retries=1, promotion="continue",
                     min_epochs=1, eta=3, variant=sc.variant, rule="ray", brackets=1, bracket_assignment="softmax")
    cluster = ClusterSpec("two", 2, 2)
    allocation = parse_allocation(sc.gpus_per_trial, cluster)
    events: list[TraceEvent] = []
    clock: list[tuple[float, int, Segment]] = []  # (when its next epoch ends, order of start, segment)
    now = 0.0
    started = 0

    def launch(seg: Segment) -> None:
        nonlocal started
        heapq.heappush(clock, (now + 1.0, started, seg))
        started += 1

    core = Dispatcher(make_scheduler(cfg, SPACE, np.random.default_rng(0)), allocation,
                      DevicePool(cluster, allocation.ks), launch=launch, emit=events.append)
    core.start(now)
    while clock:
        now, order, seg = heapq.heappop(clock)
        epoch = seg.last_epoch + 1
        if (seg.trial, epoch) in sc.faults and seg.attempt == 0:
            core.failed(now, seg.trial, epoch - 1, "injected")  # its checkpoint of the epoch before
            continue
        if core.result(now, seg.trial, epoch, sc.metrics[seg.trial]) is Decision.CONTINUE:
            heapq.heappush(clock, (now + 1.0, order, seg))
        else:
            core.released(now, seg.trial)
    return events, core


SCENARIOS = [
    Scenario(
        "promotion: 4 trials, the best of the rung resumes, the rest stop at the end",
        variant="promotion", n_trials=4, gpus_per_trial=1, metrics=[0.5, 0.9, 0.7, 0.8],
        expected=[
            (0, "start", 0, 0, (0,)),  # two free devices: two new trials
            (0, "start", 1, 0, (1,)),
            (1, "pause", 0, 1, (0,)),  # at rung 1; 1 result there: floor(1/3) = 0 promotable, a new trial
            (1, "start", 2, 0, (0,)),
            (1, "pause", 1, 1, (1,)),  # 2 results: still none promotable
            (1, "start", 3, 0, (1,)),
            (2, "pause", 2, 1, (0,)),  # 3 results: the top one (trial 1, 0.9) is promoted to epoch 3
            (2, "resume", 1, 1, (0,)),
            (2, "pause", 3, 1, (1,)),  # 4 results: floor(4/3) = 1, trial 1, already promoted; budget spent: WAIT
            # epochs 2 and 3 at t = 3, 4; the STOP at max_epochs is a dispatch point and device 1
            # is free, so the scheduler is asked before trial 1's release: nothing can be promoted
            # any more, FINISHED stops the paused trials
            (4, "stop", 0, 1, ()),
            (4, "stop", 2, 1, ()),
            (4, "stop", 3, 1, ()),
            (4, "complete", 1, 3, (0,)),
        ]),
    Scenario(
        "promotion, per-rung [1, 2]: the promoted trial waits for 2 devices",
        variant="promotion", n_trials=4, gpus_per_trial=[1, 2], metrics=[0.5, 0.9, 0.7, 0.8],
        expected=[
            (0, "start", 0, 0, (0,)),  # calls 1, 2 (asks that gave a job)
            (0, "start", 1, 0, (1,)),
            (1, "pause", 0, 1, (0,)),  # call 3: result
            (1, "start", 2, 0, (0,)),  # call 4
            (1, "pause", 1, 1, (1,)),  # call 5
            (1, "start", 3, 0, (1,)),  # call 6
            (2, "pause", 2, 1, (0,)),  # call 7; the promotion of trial 1 (call 8) needs 2 devices, 1 is free
            (2, "pause", 3, 1, (1,)),  # call 9; now both are free: trial 1 resumes, asked after 7 calls
            (2, "resume", 1, 1, (0, 1), 7, None, WAITED),
            (4, "complete", 1, 3, (0, 1)),  # no device free at its STOP: asked after its release
            (4, "stop", 0, 1, ()),
            (4, "stop", 2, 1, ()),
            (4, "stop", 3, 1, ()),
        ]),
    Scenario(
        "promotion, per-rung [1, 2]: a WAIT is no call; asked at a PAUSE while the reporter holds its device",
        variant="promotion", n_trials=3, gpus_per_trial=[1, 2], metrics=[0.5, 0.9, 0.7],
        expected=[
            (0, "start", 0, 0, (0,)),  # calls 1, 2
            (0, "start", 1, 0, (1,)),
            (1, "pause", 0, 1, (0,)),  # call 3
            (1, "start", 2, 0, (0,)),  # call 4
            (1, "pause", 1, 1, (1,)),  # call 5; budget spent, trial 2 runs: WAIT (not counted)
            # call 6: trial 2's PAUSE; device 1 is free, so the scheduler is asked before trial 2's
            # release: trial 1 is promoted (call 7) and waits for device 0, asked after 6 calls
            (2, "pause", 2, 1, (0,)),
            (2, "resume", 1, 1, (0, 1), 6, None, WAITED),
            (4, "complete", 1, 3, (0, 1)),
            (4, "stop", 0, 1, ()),
            (4, "stop", 2, 1, ()),
        ]),
    Scenario(
        "stopping: the third trial is below the rung's 66.7th percentile and stops there",
        variant="stopping", n_trials=3, gpus_per_trial=1, metrics=[0.5, 0.9, 0.6],
        expected=[
            (0, "start", 0, 0, (0,)),
            (0, "start", 1, 0, (1,)),  # at rung 1: 0.5 is first (continues), 0.9 >= 0.5 continues
            (3, "complete", 0, 3, (0,)),  # every job runs to max_epochs
            (3, "start", 2, 0, (0,)),
            (3, "complete", 1, 3, (1,)),  # budget spent, trial 2 runs: WAIT
            (4, "stop", 2, 1, (0,)),  # 0.6 < 0.5 + (0.9 - 0.5) * 2/3: STOP at rung 1; then FINISHED
        ]),
    Scenario(
        "stopping, a crash in epoch 2: fail, retried from its epoch-1 checkpoint",
        variant="stopping", n_trials=2, gpus_per_trial=1, metrics=[0.5, 0.9], faults={(0, 2)},
        expected=[
            (0, "start", 0, 0, (0,)),
            (0, "start", 1, 0, (1,)),
            (2, "fail", 0, 1, (0,), None, 1, "injected"),  # retries left (max_retries 1): asked again at once
            (2, "resume", 0, 1, (0,)),
            (3, "complete", 1, 3, (1,)),
            (4, "complete", 0, 3, (0,)),
        ]),
]


def row(ev: TraceEvent) -> tuple:
    base = (ev.time, ev.event, ev.trial, ev.epoch, ev.devices)
    extra = (ev.asked_after, ev.resume_epoch, ev.info)
    return base + extra if any(x is not None for x in extra) else base


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.name for sc in SCENARIOS])
def test_dispatcher_places_pauses_promotes_and_stops_as_the_rules_say(sc: Scenario) -> None:
    events, core = run(sc)
    assert [row(ev) for ev in events if ev.event != "result"] == sc.expected
    assert core.done
    # every epoch a job trained was reported once (none lost, none twice)
    trained = sum(1 for ev in events if ev.event == "result")
    held = sum(ev.epoch - start.epoch for start, ev in _holds(events))
    assert trained == held


def _holds(events: list[TraceEvent]) -> list[tuple[TraceEvent, TraceEvent]]:
    """(start or resume, the event that ended it) per job; a fail ends it at its last result."""
    opened: dict[int, TraceEvent] = {}
    out = []
    for ev in events:
        if ev.event in ("start", "resume"):
            opened[ev.trial] = ev
        elif ev.event in ("pause", "complete", "fail") or (ev.event == "stop" and ev.trial in opened):
            out.append((opened.pop(ev.trial), ev))
    return out
