"""One contract, every scheduler (in the spirit of Syne Tune's ``test_schedulers_api.py``).

A fake, deterministic driver plays the part of the simulator / executor: a fixed number of
workers, per-trial epoch times, learning curves computed from the config, optional failure
injection, and a small event loop. It checks the contract of `nasalloc.sim.schedulers.base`
on every call, so each scheduler and variant is held to the same invariants.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasalloc.sim.schedulers import (
    FINISHED,
    WAIT,
    Decision,
    Job,
    Scheduler,
    TrialStatus,
    make_scheduler,
    scheduler_config,
)
from nasalloc.sim.schedulers.asha import geometric_rungs
from nasalloc.sim.space import SearchSpace
from test_sim_support import scheduler_node

SPACE = SearchSpace.from_config(
    {
        "x": {"type": "float", "low": 0.0, "high": 1.0},
        "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
        "width": {"type": "int", "low": 1, "high": 8},
        "opt": {"type": "categorical", "choices": ["sgd", "adam", "lamb"]},
    }
)

TERMINAL = (TrialStatus.STOPPED, TrialStatus.COMPLETED, TrialStatus.DROPPED)


def curve(config: dict[str, Any], epoch: int) -> float:
    """A saturating learning curve whose asymptote and rate depend on the config."""
    asymptote = 0.5 + 0.4 * (1 - abs(config["x"] - 0.7)) - 0.05 * abs(math.log10(config["lr"]) + 2.5)
    rate = 0.2 + 0.1 * config["width"] + (0.2 if config["opt"] == "adam" else 0.0)
    wiggle = 0.01 * math.sin(7.3 * epoch + 13.1 * config["x"])
    return asymptote * (1 - math.exp(-rate * epoch)) + wiggle


def epoch_time(config: dict[str, Any]) -> float:
    return 1.0 + 0.5 * config["x"] + 0.1 * config["width"]


@dataclass
class Run:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    finished: bool = False


def no_failures(trial: int, epoch: int, attempt: int) -> bool:
    return False


def some_failures(trial: int, epoch: int, attempt: int) -> bool:
    """About 6% of epochs fail at random; trials 3, 10, 17, ... fail at epoch 1 and 5, 16, 27, ...
    at epoch 2 on every attempt, so they are dropped (some at a rung, some between rungs)."""
    if (trial % 7 == 3 and epoch == 1) or (trial % 11 == 5 and epoch == 2):
        return True
    return (trial * 7919 + epoch * 104729 + attempt * 31) % 100 < 6


def drive(
    sched: Scheduler, workers: int, fails=no_failures, metric=curve, max_events: int = 200_000, fail_after_pause: bool = False
) -> Run:
    """Run the search to the end with `workers` parallel workers; assert the contract throughout.

    `fail_after_pause`: some jobs crash right after their PAUSE answer (while "saving"), so
    their newest checkpoint is one epoch older; the scheduler must resume them from there.
    """
    run = Run()
    running: dict[int, Job] = {}  # worker -> job
    heap: list[tuple[float, int, int, int]] = []  # (time, seq, worker, epoch)
    free = list(range(workers))
    seq = 0
    now = 0.0
    reported: dict[int, int] = {}  # trial -> highest epoch reported
    terminal: set[int] = set()
    paused: set[int] = set()
    stop_seen: set[int] = set()
    checkpoint: dict[int, int] = {}  # trial -> newest checkpoint when older than its last result
    sync = sched.name in ("hyperband", "bohb")

    def drain() -> None:
        for t in sched.drain_stopped():
            assert t in paused, f"drain_stopped gave trial {t}, which is not paused"
            assert t not in stop_seen, f"trial {t} drained twice"
            assert sched.trials[t].status is TrialStatus.STOPPED
            stop_seen.add(t)
            paused.discard(t)
            terminal.add(t)
            run.events.append((now, "stop", t, sched.trials[t].last_epoch))

    while True:
        while free:
            job = sched.ask()
            drain()
            if job is WAIT:
                assert sched.ask() is WAIT and not sched.drain_stopped(), "WAIT must not change state"
                break
            if job is FINISHED:
                assert not running, "FINISHED while jobs are running"
                assert all(t.status in TERMINAL for t in sched.trials.values()), sched.state()
                assert not paused
                run.finished = True
                return run
            assert isinstance(job, Job)
            t = job.trial
            assert t not in terminal, f"trial {t} got a job after it was stopped/completed/dropped"
            assert job.until_epoch <= sched.max_epochs
            assert 0 <= job.start_epoch < job.until_epoch
            assert job.start_epoch <= reported.get(t, 0), "job would skip epochs (no checkpoint there)"
            assert job.resume == (t in reported or job.attempt > 0 or t in paused)
            if job.resume and job.attempt == 0:
                assert t in paused, f"resume of trial {t} which was not paused"
                promo = getattr(sched.cfg, "promotion", "continue")
                assert job.start_epoch == (checkpoint.get(t, reported[t]) if promo == "continue" else 0)
                if sync:
                    trial = sched.trials[t]
                    for u in sched.trials.values():
                        if u.id != t and u.bracket == trial.bracket and u.status in (TrialStatus.RUNNING, TrialStatus.PENDING):
                            assert u.until_epoch > trial.last_epoch, f"trial {t} resumed before its rung completed"
            if not job.resume:
                assert t not in sched.trials or sched.trials[t].last_epoch == 0
            paused.discard(t)
            w = free.pop(0)
            running[w] = job
            seq += 1
            heapq.heappush(heap, (now + epoch_time(job.config), seq, w, job.start_epoch + 1))
            run.events.append((now, "resume" if job.resume else "start", t, job.start_epoch, job.until_epoch, job.attempt))
        if not heap:
            raise AssertionError(f"deadlock: no job runs and ask() says WAIT; {sched.state()}")
        now, _, w, epoch = heapq.heappop(heap)
        job = running[w]
        t = job.trial
        if fails(t, epoch, job.attempt):
            retried = sched.on_failure(t, resume_epoch=epoch - 1)
            drain()
            run.events.append((now, "fail", t, epoch, retried))
            if not retried:
                terminal.add(t)
                assert sched.trials[t].status is TrialStatus.DROPPED
            del running[w]
            free.append(w)
            continue
        assert epoch <= sched.max_epochs
        value = metric(job.config, epoch)
        decision = sched.on_result(t, epoch, value)
        drain()
        if epoch > reported.get(t, 0):
            reported[t] = epoch
            checkpoint.pop(t, None)
        run.events.append((now, "result", t, epoch, round(value, 12), decision.value))
        if epoch >= sched.max_epochs:
            assert decision is Decision.STOP
            assert sched.trials[t].status is TrialStatus.COMPLETED
        if decision is Decision.CONTINUE:
            assert epoch < job.until_epoch
            seq += 1
            heapq.heappush(heap, (now + epoch_time(job.config), seq, w, epoch + 1))
            continue
        if decision is Decision.PAUSE:
            assert epoch == job.until_epoch, "PAUSE before the end of the job"
            assert sched.trials[t].status is TrialStatus.PAUSED
            paused.add(t)
            if fail_after_pause and (t * 31 + epoch) % 5 == 0:
                kept = sched.on_failure(t, resume_epoch=epoch - 1)
                drain()
                run.events.append((now, "fail-after-pause", t, epoch, kept))
                if kept:
                    assert sched.trials[t].status is TrialStatus.PAUSED
                    checkpoint[t] = epoch - 1
                else:
                    assert sched.trials[t].status is TrialStatus.DROPPED
                    paused.discard(t)
                    terminal.add(t)
        else:
            assert sched.trials[t].status in (TrialStatus.STOPPED, TrialStatus.COMPLETED)
            terminal.add(t)
        del running[w]
        free.append(w)
        if len(run.events) > max_events:
            raise AssertionError("the search does not end")


def build(overrides: dict[str, Any], seed: int = 0) -> Scheduler:
    cfg = scheduler_config(scheduler_node(overrides))
    return make_scheduler(cfg, SPACE, np.random.default_rng(seed))


VARIANTS: dict[str, dict[str, Any]] = {
    "random": {"name": "random", "n_trials": 12, "max_epochs": 9},
    "asha-stopping-ray": {"name": "asha", "n_trials": 40, "max_epochs": 27},
    "asha-stopping-rank": {"name": "asha", "n_trials": 40, "max_epochs": 27, "rule": "rank", "mode": "min"},
    "asha-stopping-brackets": {"name": "asha", "n_trials": 40, "max_epochs": 27, "brackets": 3},
    "asha-promotion": {"name": "asha", "n_trials": 40, "max_epochs": 27, "variant": "promotion"},
    "asha-promotion-rerun": {"name": "asha", "n_trials": 40, "max_epochs": 27, "variant": "promotion", "promotion": "rerun"},
    "asha-promotion-brackets": {"name": "asha", "n_trials": 40, "max_epochs": 27, "variant": "promotion", "brackets": 2, "bracket_assignment": "round_robin"},
    "hyperband": {"name": "hyperband", "n_trials": 60},
    "hyperband-table-ceil": {"name": "hyperband", "n_trials": 60, "bracket_sizes": "table", "keep": "ceil", "mode": "min"},
    "hyperband-overlap": {"name": "hyperband", "n_trials": 60, "overlap_brackets": True},
    "hyperband-rerun": {"name": "hyperband", "n_trials": 49, "promotion": "rerun", "min_epochs": 2, "max_epochs": 20},
    "bohb": {"name": "bohb", "n_trials": 60},
    "bohb-overlap-rerun": {"name": "bohb", "n_trials": 49, "overlap_brackets": True, "promotion": "rerun"},
}


@pytest.mark.parametrize("workers", [1, 4, 16])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract(variant: str, workers: int) -> None:
    sched = build(VARIANTS[variant])
    run = drive(sched, workers)
    assert run.finished
    assert len(sched.trials) == VARIANTS[variant]["n_trials"]
    best = max(v for t in sched.trials.values() for v in t.metrics.values())
    assert best > 0
    completed = [t for t in sched.trials.values() if t.status is TrialStatus.COMPLETED]
    assert completed, "some trial should reach max_epochs"
    assert all(t.last_epoch == sched.max_epochs for t in completed)
    assert all(0 < t.last_epoch < sched.max_epochs for t in sched.trials.values() if t.status is TrialStatus.STOPPED)
    if sched.name == "random":
        assert len(completed) == len(sched.trials)
    else:
        assert len(completed) < len(sched.trials), "early stopping should stop someone"
    if getattr(sched.cfg, "variant", "") == "stopping":
        assert not any(e[1] == "resume" for e in run.events)
        assert not any(e[1] == "result" and e[-1] == "pause" for e in run.events)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_identical_seeds_give_identical_decisions(variant: str) -> None:
    a = drive(build(VARIANTS[variant], seed=3), workers=5).events
    b = drive(build(VARIANTS[variant], seed=3), workers=5).events
    assert a == b
    c = drive(build(VARIANTS[variant], seed=4), workers=5).events
    assert c != a  # another seed samples other configs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_failures_are_retried_then_dropped_and_the_search_finishes(variant: str) -> None:
    sched = build({**VARIANTS[variant], "max_retries": 1})
    run = drive(sched, workers=6, fails=some_failures, fail_after_pause=True)
    assert run.finished
    fails = [e for e in run.events if e[1] == "fail"]
    assert any(e[-1] for e in fails), "some failure should be retried"
    assert any(t.status is TrialStatus.DROPPED for t in sched.trials.values()), "some trial should be dropped"
    assert all(t.failures <= 2 for t in sched.trials.values())


@pytest.mark.parametrize("variant", ["hyperband", "bohb", "asha-promotion", "hyperband-overlap"])
def test_every_failure_dropped_without_retries(variant: str) -> None:
    def always(trial: int, epoch: int, attempt: int) -> bool:
        return trial % 2 == 0 and epoch >= 2

    sched = build({**VARIANTS[variant], "max_retries": 0})
    assert drive(sched, workers=3, fails=always).finished


def test_synchronous_rungs_complete_before_promotion_explicitly() -> None:
    """Beyond the driver's check: every resume in a bracket comes after all results of the round."""
    sched = build({"name": "hyperband", "n_trials": 27, "max_epochs": 27})
    run = drive(sched, workers=7)
    for e in run.events:
        if e[1] != "resume":
            continue
        t, start = e[2], e[3]
        bracket = sched.trials[t].bracket
        time = e[0]
        round_members = [
            u for u in sched.trials.values() if u.bracket == bracket and u.last_epoch >= start and u.id != t
        ]
        for u in round_members:
            reached = [ev[0] for ev in run.events if ev[1] == "result" and ev[2] == u.id and ev[3] == start]
            assert reached and reached[0] <= time


# ----- property tests ---------------------------------------------------------------------
@st.composite
def search_settings(draw):
    name = draw(st.sampled_from(["asha-stopping", "asha-promotion", "hyperband", "bohb"]))
    eta = draw(st.integers(2, 4))
    min_epochs = draw(st.integers(1, 3))
    max_epochs = draw(st.integers(min_epochs, min_epochs * eta**3 + 2))
    node: dict[str, Any] = {
        "name": name.split("-")[0],
        "eta": eta,
        "min_epochs": min_epochs,
        "max_epochs": max_epochs,
        "n_trials": draw(st.integers(1, 30)),
        "mode": draw(st.sampled_from(["max", "min"])),
        "promotion": draw(st.sampled_from(["continue", "rerun"])),
        "max_retries": draw(st.integers(0, 2)),
    }
    if name.startswith("asha"):
        node["variant"] = name.split("-")[1]
        node["rule"] = draw(st.sampled_from(["ray", "rank"]))
        most = len(geometric_rungs(min_epochs, max_epochs, eta)) + 1
        node["brackets"] = draw(st.integers(1, most))
        node["bracket_assignment"] = draw(st.sampled_from(["softmax", "round_robin"]))
    else:
        node["overlap_brackets"] = draw(st.booleans())
        node["bracket_sizes"] = draw(st.sampled_from(["algorithm", "table"]))
        node["keep"] = draw(st.sampled_from(["floor", "ceil"]))
    if name == "bohb":
        node["num_samples"] = 8
    return node


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    node=search_settings(),
    workers=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    noise=st.integers(0, 3),
    failing=st.booleans(),
)
def test_contract_holds_for_random_settings(node, workers, seed, noise, failing) -> None:
    """Random eta/min/max/budget/workers/metrics: the driver's contract checks never fire."""
    metric_rng = np.random.default_rng(seed)
    table: dict[tuple[int, int], float] = {}

    def metric(config: dict[str, Any], epoch: int) -> float:
        key = (hash(tuple(sorted((k, str(v)) for k, v in config.items()))), epoch)
        if key not in table:  # insertion order is deterministic, so are the values
            value = float(metric_rng.normal())
            table[key] = float("nan") if noise == 3 and value > 2.0 else value
        return table[key]

    sched = build(node, seed=seed)
    run = drive(sched, workers, fails=some_failures if failing else no_failures, metric=metric, fail_after_pause=failing)
    assert run.finished
    assert len(sched.trials) == node["n_trials"]
    for trial in sched.trials.values():
        assert trial.last_epoch <= node["max_epochs"]
        assert all(1 <= e <= node["max_epochs"] for e in trial.metrics)
