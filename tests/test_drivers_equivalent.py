"""The simulator and the executor run the same search: same scheduler, seed and per-trial
epoch times give every trial the same decisions in both traces.

The executor runs the toy trainer on CPU slots: each trial sleeps its own `epoch_s` per epoch
(halved on 2 ranks: strong scaling; sleeping trials sharing a slot do not slow each other)
and reports a known curve. The simulator is given the same: a profile whose per-trial epoch
time is exactly `epoch_s` (a `config_cost` block, log-linear in `epoch_s` with slope 1; no
start-up, checkpoint or decision cost) and the toy curve as its learning curves.

Real time adds a few ms of overhead per job and epoch that the profile leaves out, so two
epochs ending within that much of each other could come out in either order. Each case
therefore first checks, in the simulated trace, that no two trials' epochs end within
`MARGIN_S` of each other; the seeds below were chosen so they do not (a changed schedule
fails there with a clear message, not by chance in the comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from nasalloc.execute.run import settings_from, shipped_backend
from nasalloc.execute.search import run_search
from nasalloc.execute.trainers.toy import curve, profile_data
from nasalloc.sim.cluster import machine, parse_allocation
from nasalloc.sim.config import shipped
from nasalloc.sim.elastic import elastic_allocation
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.profile import parse_profile
from nasalloc.sim.schedulers import scheduler_config
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.trace import TraceEvent, read_trace
from nasalloc.sim.workload import MetricSpec, WorkloadRun
from test_sim_support import scheduler_node

TOY = "nasalloc.execute.trainers.toy:train"
EPOCH_LOW, EPOCH_HIGH = 0.4, 1.6  # seconds per epoch on one device, per trial
MARGIN_S = 0.15  # least time between two trials' epoch ends in the simulated trace
SPACE = {"quality": {"type": "float", "low": 0.1, "high": 1.0},
         "epoch_s": {"type": "float", "low": EPOCH_LOW, "high": EPOCH_HIGH, "log": True}}


def toy_profile(devices: int, sharing: float = 1.0) -> Any:
    """Epoch time = the trial's epoch_s at k = 1, epoch_s / k at k > 1, no other cost; two
    trials on one device each train `sharing` times slower."""
    return parse_profile(toy_profile_data(devices, sharing), "toy profile")


def toy_profile_data(devices: int, sharing: float = 1.0) -> dict[str, Any]:
    return profile_data(devices, EPOCH_LOW, EPOCH_HIGH, steps=4, sharing=sharing)


class _ToyRun(WorkloadRun):
    def result(self, trial: int, config: dict[str, Any], epoch: int, k: float) -> tuple[float, float | None]:
        value = curve(config["quality"], epoch)
        return value, value / 2


@dataclass(frozen=True)
class ToyCurves:
    """The toy trainer's learning curve, as the simulator's workload."""

    space: SearchSpace
    metric: MetricSpec = MetricSpec(name="metric", mode="max", low=0.0, high=1.0)

    def run(self, max_epochs: int, batch_at: Any = None) -> WorkloadRun:
        return _ToyRun()


@dataclass(frozen=True)
class Case:
    name: str
    scheduler: dict[str, Any]
    gpus_per_trial: Any = 1
    devices: int = 2
    seed: int = 0
    faults: tuple[tuple[int, int], ...] = ()  # (trial, epoch): its first attempt raises there
    elastic: tuple[int, int] | None = None  # gpus_per_trial=elastic with these (min, max)
    # unshare=true, deciding with a profile whose sharing slow-down is this (> 1: a move off a
    # shared device pays, as every cost is 0 here; close to 1 so that the simulated times stay
    # within a few ms of the sleeping trainers', which do not slow each other)
    unshare: float | None = None


CASES = [
    Case("asha-stopping", {"name": "asha", "n_trials": 8, "max_epochs": 4, "eta": 2}, seed=47),
    Case("asha-promotion", {"name": "asha", "n_trials": 8, "max_epochs": 9, "eta": 3, "variant": "promotion"}, seed=13),
    Case("hyperband", {"name": "hyperband", "n_trials": 8, "max_epochs": 9, "eta": 3}, seed=32),
    Case("bohb", {"name": "bohb", "n_trials": 8, "max_epochs": 9, "eta": 3}, seed=32),
    Case("per-rung-[1,2]", {"name": "asha", "n_trials": 8, "max_epochs": 9, "eta": 3}, gpus_per_trial=[1, 2], seed=5),
    Case("k=1/2", {"name": "asha", "n_trials": 8, "max_epochs": 9, "eta": 3, "variant": "promotion"},
         gpus_per_trial="1/2", seed=47),
    Case("elastic", {"name": "hyperband", "n_trials": 6, "max_epochs": 9, "eta": 3}, gpus_per_trial="elastic", seed=35,
         elastic=(1, 2)),
    Case("unshare", {"name": "hyperband", "n_trials": 6, "max_epochs": 9, "eta": 3}, gpus_per_trial="1/2", seed=1927,
         unshare=1.001),
    Case("fail-and-retry", {"name": "asha", "n_trials": 8, "max_epochs": 9, "eta": 3, "variant": "promotion",
                            "max_retries": 1}, seed=8, faults=((2, 2),)),
]


def simulated(case: Case) -> list[TraceEvent]:
    space = SearchSpace.from_config(SPACE)
    profile = toy_profile(case.devices, case.unshare or 1.0)
    if case.elastic is not None:
        allocation = elastic_allocation(machine(case.devices), profile, *case.elastic)
    else:
        allocation = parse_allocation(case.gpus_per_trial, machine(case.devices))
    spec = SimulationSpec(scheduler=scheduler_config(scheduler_node(case.scheduler)), workload=ToyCurves(space),
                          profile=profile, cluster=machine(case.devices), allocation=allocation, seed=case.seed,
                          failures=case.faults, unshare=case.unshare is not None)
    return simulate(spec).events


def executed(case: Case, run_dir: Path) -> list[TraceEvent]:
    faults = [{"trial": t, "epoch": e, "mode": "raise"} for t, e in case.faults]
    raw = {
        "seed": case.seed,
        "scheduler": scheduler_node(case.scheduler),
        "train": {"name": "toy", "entrypoint": TOY, "space": SPACE,
                  "params": {"steps_per_epoch": 4, "scaling": "strong", "faults": faults}},
        "devices": {**shipped("devices", "cpu"), "count": case.devices},
        "gpus_per_trial": case.gpus_per_trial, "trial_timeout_s": 60, "checkpoint_every": 1, "progress": "none",
        "target": None, "profile": None, "resume": None, "unshare": case.unshare is not None, **shipped_backend(),
    }
    if case.elastic is not None or case.unshare is not None:  # the policy decides with the simulator's profile
        path = run_dir.parent / f"{run_dir.name}_profile.yaml"
        path.write_text(yaml.safe_dump(toy_profile_data(case.devices, case.unshare or 1.0)), encoding="utf-8")
        raw.update(profile=str(path))
    if case.elastic is not None:
        raw.update(elastic={"min": case.elastic[0], "max": case.elastic[1]})
    run_search(settings_from(raw), run_dir)
    return read_trace(run_dir / "trace.jsonl")


def closest_epoch_ends(events: list[TraceEvent]) -> float:
    """Least time between two different trials' results or failures (epoch ends)."""
    ends = sorted((ev.time, ev.trial) for ev in events if ev.event in ("result", "fail"))
    gaps = [b[0] - a[0] for a, b in zip(ends, ends[1:]) if a[1] != b[1]]
    return min(gaps, default=math.inf)


def decisions(events: list[TraceEvent]) -> dict[int, list[tuple]]:
    """Per trial, what happened to it in order: event, epoch, devices, the typed fields a
    resume reads, and why (times left out)."""
    out: dict[int, list[tuple]] = {}
    for ev in events:
        info = None if ev.event == "fail" else ev.info  # the crash message differs
        out.setdefault(ev.trial, []).append((ev.event, ev.epoch, ev.devices, ev.asked_after, ev.resume_epoch, info))
    return out


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_simulator_and_executor_make_the_same_decisions(case: Case, tmp_path: Path) -> None:
    sim = simulated(case)
    assert closest_epoch_ends(sim) >= MARGIN_S, (
        f"{case.name}: two trials' epochs end {closest_epoch_ends(sim):.3f} s apart in the simulated trace, under the "
        f"{MARGIN_S} s the comparison needs; choose another seed")
    real = executed(case, tmp_path)
    assert decisions(real) == decisions(sim)
    kinds = {ev.event for ev in sim}
    if case.faults:
        assert "fail" in kinds and any(ev.event == "resume" and ev.trial == case.faults[0][0] for ev in sim)
    if isinstance(case.gpus_per_trial, list) or case.elastic or case.unshare:  # a move looks the same in both traces
        assert any(ev.info == "reallocate" for ev in sim if ev.event == "pause")
