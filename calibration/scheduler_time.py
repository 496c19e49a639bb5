"""The schedulers' own compute time on this machine: the profile's `scheduler_time` block.

The executor asks the scheduler for work and tells it every result in its one search loop
(`execute/loop.py` driving `sim/dispatch.py`); while the scheduler computes, the loop
answers no report and starts no job. ASHA and HyperBand only keep books; BOHB fits its
density model on every result and draws and scores candidates on every ask. So each
shipped scheduler (its conf/scheduler/<name>.yaml as shipped: 49 trials for HyperBand and
BOHB) is driven here through a whole search on the calibrated search space, by the
dispatch core with an instant clock (every epoch reported at once, a synthetic learning
curve), and its `ask` and `on_result` calls are timed (`time.perf_counter`). The profile
gets the mean seconds per call; the simulator charges them in its model of the loop
(`sim/engine.py`). The search is the same for the same seed; the times are this machine's.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import numpy as np

from nasalloc.sim.cluster import ClusterSpec, DevicePool, parse_allocation
from nasalloc.sim.config import shipped
from nasalloc.sim.dispatch import Dispatcher, Segment
from nasalloc.sim.profile import Profile
from nasalloc.sim.schedulers import Ask, Decision, Step, make_scheduler, scheduler_config, scheduler_names
from nasalloc.sim.workload import workload_from_config


class _Stopwatch:
    """The scheduler with its `ask` and `on_result` calls timed (everything else passed through)."""

    def __init__(self, sched: Any):
        self._sched = sched
        self.seconds = {"ask": 0.0, "on_result": 0.0}
        self.calls = {"ask": 0, "on_result": 0}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sched, name)

    def _timed(self, name: str, call: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = call(*args)
        self.seconds[name] += time.perf_counter() - t0
        self.calls[name] += 1
        return out

    def step_ask(self) -> Step[Ask]:  # the calls the dispatch core makes
        return self._timed("ask", self._sched.step_ask)

    def step_result(self, trial_id: int, epoch: int, metric: float) -> Step[Decision]:
        return self._timed("on_result", self._sched.step_result, trial_id, epoch, metric)


def time_scheduler(name: str, space: dict[str, Any] | None, profile: Profile, seed: int = 0) -> dict[str, float]:
    """Mean seconds per `ask` and per `on_result` of scheduler `name` (shipped settings) over
    one whole search on `space` (None: the synthetic workload's own space), 4 devices, k = 1."""
    node = shipped("workload", "synthetic")
    if space:
        node = {**node, "space": space}
    workload = workload_from_config(node)
    cfg = scheduler_config(shipped("scheduler", name))
    watch = _Stopwatch(make_scheduler(cfg, workload.space, np.random.default_rng(seed)))
    curves = workload.run(cfg.max_epochs, profile.epoch.global_batch_at)
    cluster = ClusterSpec("calibration", 4, 4)
    allocation = parse_allocation(1, cluster)
    queue: deque[Segment] = deque()
    core = Dispatcher(watch, allocation, DevicePool(cluster, allocation.ks), launch=queue.append,  # type: ignore[arg-type]
                      emit=lambda event: None)
    now = 0.0
    core.start(now)
    while queue:
        seg = queue.popleft()
        epoch = seg.start_epoch
        while True:
            epoch += 1
            now += 1.0
            metric, _ = curves.result(seg.trial, seg.config, epoch, 1.0)
            if core.result(now, seg.trial, epoch, metric) is not Decision.CONTINUE:
                break
        core.released(now, seg.trial)
    return {"ask_s": watch.seconds["ask"] / max(1, watch.calls["ask"]),
            "result_s": watch.seconds["on_result"] / max(1, watch.calls["on_result"])}


def time_schedulers(space: dict[str, Any] | None, profile: Profile, seed: int = 0) -> dict[str, dict[str, float]]:
    """`time_scheduler` for every shipped scheduler: the profile's `scheduler_time` block."""
    return {name: time_scheduler(name, space, profile, seed) for name in scheduler_names()}
