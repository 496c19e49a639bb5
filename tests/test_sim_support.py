"""Builders and trace checkers shared by the simulator's tests (no tests in here)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from nasalloc.sim.cluster import Allocation, ClusterSpec, parse_allocation
from nasalloc.sim.engine import SimulationResult, SimulationSpec, effective_profile
from nasalloc.sim.profile import Profile, parse_profile
from nasalloc.sim.config import shipped
from nasalloc.sim.schedulers import make_scheduler, rung_index, scheduler_config, scheduler_names
from nasalloc.sim.trace import HOLDS, RELEASES, TraceEvent
from nasalloc.sim.workload import workload_from_config

SPACE = {
    "lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "width": {"type": "int", "low": 16, "high": 256, "log": True},
    "opt": {"type": "categorical", "choices": ["sgd", "adam"]},
}


def make_profile(*, t_compute=1.0, samples=400, batch=10, startup=5.0, per_doubling=1.0, eval_s=0.0,
                 save=0.0, restore=0.0, decision=0.0, bandwidth="inf", sharing=None, cv=0.0, gpn=4,
                 config_cost=None, release=0.0) -> Profile:
    return parse_profile({
        **({"config_cost": config_cost} if config_cost is not None else {}),
        "name": "test",
        "hardware": {"gpus_per_node": gpn},
        "workload": {"samples_per_epoch": samples, "batch_per_device": batch, "scaling": "weak"},
        "step_time": {"t_compute_s": t_compute, "grad_bytes": 1e8, "intra_bandwidth_Bps": bandwidth,
                      "inter_bandwidth_Bps": bandwidth, "straggler_cv": cv},
        "overheads": {"startup_s": startup, "startup_per_doubling_s": per_doubling, "eval_s": eval_s,
                      "checkpoint_save_s": save, "checkpoint_restore_s": restore, "decision_latency_s": decision,
                      "release_s": release},
        "sharing": sharing or {1: 1.0, 2: 1.8, 4: 3.5},
    })


def scheduler_node(node: dict) -> dict:
    """A scheduler config: the shipped conf/scheduler/<name>.yaml with `node`'s settings over it
    (the configs have no defaults in code); an unknown name is passed through for its error."""
    name = node.get("name")
    return {**shipped("scheduler", name), **node} if name in scheduler_names() else dict(node)


def make_workload(**over):
    node = {**shipped("workload", "synthetic"), "metric": {"name": "acc", "mode": "max", "low": 0.0, "high": 1.0},
            "space": SPACE}
    node.update(over)
    return workload_from_config(node)


def make_spec(*, scheduler=None, gpus=4, gpn=4, k=1, profile=None, seed=0, target=None, workload=None) -> SimulationSpec:
    cluster = ClusterSpec("test", gpus, gpn)
    sched = scheduler_config(scheduler_node(scheduler or {"name": "random", "n_trials": 8, "max_epochs": 3}))
    alloc = k if isinstance(k, Allocation) else parse_allocation(k, cluster)
    return SimulationSpec(scheduler=sched, workload=workload or make_workload(), profile=profile or make_profile(gpn=gpn),
                          cluster=cluster, allocation=alloc, seed=seed, target=target)


def segments(events: list[TraceEvent]) -> list[dict]:
    """Every hold: trial, start, end, devices, start epoch, results inside, how it ended."""
    open_: dict[int, dict] = {}
    out = []
    for ev in events:
        if ev.event in HOLDS:
            assert ev.trial not in open_, f"trial {ev.trial} holds twice at t={ev.time}"
            open_[ev.trial] = {"trial": ev.trial, "t0": ev.time, "devices": ev.devices, "epoch0": ev.epoch, "results": 0}
        elif ev.event == "result":
            assert ev.trial in open_, f"result of trial {ev.trial} at t={ev.time} without devices"
            assert ev.devices == open_[ev.trial]["devices"]
            open_[ev.trial]["results"] += 1
        elif ev.event in RELEASES and ev.devices:
            seg = open_.pop(ev.trial)
            seg.update(t1=ev.time, end=ev.event, epoch1=ev.epoch)
            out.append(seg)
    assert not open_, f"trials still holding devices at the end: {sorted(open_)}"
    return out


def check_invariants(result: SimulationResult) -> None:
    """Capacity, sharing, no duplicate epochs (continue semantics), busy-time accounting."""
    spec = result.spec
    n = spec.cluster.gpus
    max_share = max(round(1 / k) if k < 1 else 1 for k in spec.allocation.schedule)
    fractional = any(k < 1 for k in spec.allocation.schedule)
    on_device: dict[int, set[int]] = defaultdict(set)
    for ev in result.events:
        assert all(0 <= d < n for d in ev.devices)
        if ev.event in HOLDS:
            if not fractional or len(ev.devices) > 1:
                for d in ev.devices:
                    assert not on_device[d], f"device {d} given to trial {ev.trial} while {on_device[d]} run at t={ev.time}"
            for d in ev.devices:
                on_device[d].add(ev.trial)
                assert len(on_device[d]) <= max_share
            assert sum(1 for d in on_device if on_device[d]) <= n
        elif ev.event in RELEASES:
            for d in ev.devices:
                on_device[d].discard(ev.trial)
    if getattr(spec.scheduler, "promotion", "continue") == "continue":
        seen = set()
        for ev in result.events:
            if ev.event == "result":
                assert (ev.trial, ev.epoch) not in seen, f"epoch {ev.epoch} of trial {ev.trial} simulated twice"
                seen.add((ev.trial, ev.epoch))
    # busy time = epoch times + start-up + restore + decision latency + checkpoint saves
    prof = effective_profile(spec)
    ov = prof.overheads
    configs = {ev.trial: ev.config for ev in result.events if ev.event == "start"}
    milestones = make_scheduler(spec.scheduler, spec.workload.space, np.random.default_rng(0)).milestones
    last_epoch: dict[int, int] = defaultdict(int)
    total = 0.0
    segs = segments(result.events)
    for seg in segs:
        seg["factor"] = prof.config_factor(configs[seg["trial"]])
        dur = seg["t1"] - seg["t0"]
        first_new = max(seg["epoch0"], last_epoch[seg["trial"]]) + 1
        last_epoch[seg["trial"]] = max(last_epoch[seg["trial"]], seg["epoch1"])
        k = spec.allocation.k_at(rung_index(list(milestones), first_new))
        if k < 1:  # epochs under processor sharing: checked by _check_shared_epochs
            base = _fixed(prof, 1.0, seg) + sum(b - a for a, b in _training_intervals(prof, seg, result.events))
        else:
            base = _expected(prof, k, seg)
        # the ranks checkpoint after every epoch they continue from (checkpoint_every = 1), at a
        # PAUSE and at completion; every job's end pays the release
        extra = dur - base - (seg["results"] - 1) * ov.checkpoint_save_s - ov.release_s
        if seg["end"] in ("pause", "complete"):
            assert extra == pytest.approx(ov.checkpoint_save_s, abs=1e-6), seg
        else:  # a "stop" may end a PAUSE whose save was under way when the scheduler stopped it
            assert extra == pytest.approx(0.0, abs=1e-6) or extra == pytest.approx(ov.checkpoint_save_s, abs=1e-6), seg
        total += k * dur
        seg["k"] = k
    assert result.device_seconds == pytest.approx(total, rel=1e-9, abs=1e-6)
    if not fractional:
        assert result.summary.device_hours * 3600 == pytest.approx(total, rel=1e-9, abs=1e-6)
    else:
        _check_shared_epochs(prof, result.events, segs, configs)


def _fixed(prof: Profile, k: float, seg: dict) -> float:
    """Start-up (+ restore) before the first epoch and one decision after each epoch."""
    ov = prof.overheads
    return (prof.startup_time(k) + (ov.checkpoint_restore_s if seg["epoch0"] > 0 else 0.0)
            + seg["results"] * ov.decision_latency_s)


def _training_intervals(prof: Profile, seg: dict, events: list[TraceEvent]) -> list[tuple[float, float]]:
    """[begin, end) of every epoch trained in a single-device hold, from its result times."""
    ov = prof.overheads
    results = [ev.time for ev in events if ev.event == "result" and ev.trial == seg["trial"] and seg["t0"] <= ev.time <= seg["t1"]
               and seg["epoch0"] < ev.epoch <= seg["epoch1"]][: seg["results"]]
    begin = seg["t0"] + prof.startup_time(1.0) + (ov.checkpoint_restore_s if seg["epoch0"] > 0 else 0.0)
    out = []
    for r in results:
        out.append((begin, r))
        begin = r + ov.decision_latency_s + ov.checkpoint_save_s  # checkpoint_every = 1: a save after each epoch
    return out


def _check_shared_epochs(prof: Profile, events: list[TraceEvent], segs: list[dict], configs: dict) -> None:
    """Processor sharing conserves work: over each epoch trained on a shared device, the
    integral of 1 / sharing(trainers on that device at t) dt is the epoch's alone time."""
    by_device: dict[int, list[tuple[float, float, int]]] = defaultdict(list)
    for seg in segs:
        if len(seg["devices"]) == 1 and seg["k"] <= 1:
            for a, b in _training_intervals(prof, seg, events):
                by_device[seg["devices"][0]].append((a, b, seg["trial"]))
    alone = prof.epoch_time(1.0)
    for intervals in by_device.values():
        cuts = sorted({t for a, b, _ in intervals for t in (a, b)})
        for a, b, trial in intervals:
            done = 0.0
            for lo, hi in zip(cuts, cuts[1:]):
                if hi <= a + 1e-12 or lo >= b - 1e-12:
                    continue
                mid = (lo + hi) / 2
                j = sum(1 for x, y, _ in intervals if x <= mid < y)
                done += (min(hi, b) - max(lo, a)) / prof.epoch.sharing_slowdown(j)
            assert done == pytest.approx(alone * prof.config_factor(configs[trial]), rel=1e-6, abs=1e-6), (trial, a, b)


def _expected(prof: Profile, k: float, seg: dict) -> float:
    ov = prof.overheads
    return (prof.startup_time(k) + (ov.checkpoint_restore_s if seg["epoch0"] > 0 else 0.0)
            + seg["results"] * (prof.epoch_time(k) * seg.get("factor", 1.0) + ov.decision_latency_s))
