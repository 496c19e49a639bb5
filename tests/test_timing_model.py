"""One timing model: what the elastic and unshare policies expect an epoch and a move to cost
is what the engine charges for them (`Profile.trial_epoch_time`, `Profile.move_cost`), for a
profile shaped as calibration writes it: `config_cost` with `applies_to: compute`, a measured
resume(k), release(k) per doubling and the inter-node step, on nodes of 2 (k = 4 spans two).

Every expected value is worked out by hand below from the profile's numbers:
- steps per epoch 400 / (10 k) (weak scaling); a step is the compute 0.1 f (f: the trial's
  configuration factor, which scales the compute only) plus the ring all-reduce of 1 MB,
  2(k-1)/k x 1e6 / B, with B = 1e8 B/s inside a node and 5e7 B/s across nodes (g = 1, no
  overlap); evaluation 2 f / k. So epoch(1) = 40 x 0.1 f + 2 f = 6 f, epoch(2) = 20 (0.1 f +
  0.01) + f = 3 f + 0.2, epoch(4) = 10 (0.1 f + 0.03) + 0.5 f = 1.5 f + 0.3, and a trial at
  k = 1/2 with j trials on its device 6 f x sharing(j) (sharing(2) = 1.5).
- f = exp(0.8 (u - 0.5)) / 1.25 with u = log10(lr / 1e-3) / 3, lr's place on its log range.
- start-up(k) = 2 + log2 k (+ 4 across nodes); resume(k) = 3 + 0.5 log2 k (+ 4 across
  nodes); release(k) = 0.25 + 0.125 log2 k; save 0.5; decision 0.1.
- a move from k to k': save + release(k) + resume(k').
"""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import pytest

from nasalloc.sim.cluster import Allocation
from nasalloc.sim.elastic import ElasticPolicy
from nasalloc.sim.engine import simulate
from nasalloc.sim.profile import parse_profile
from nasalloc.sim.unshare import UnsharePolicy
from test_sim_support import make_spec

DECISION, SAVE = 0.1, 0.5


def calibrated(resume: bool = True):
    overheads = {"startup_s": 2.0, "startup_per_doubling_s": 1.0, "startup_inter_node_s": 4.0, "eval_s": 2.0,
                 "checkpoint_save_s": SAVE, "checkpoint_restore_s": 0.7, "decision_latency_s": DECISION,
                 "release_s": 0.25, "release_per_doubling_s": 0.125}
    if resume:
        overheads.update(resume_s=3.0, resume_per_doubling_s=0.5)
    return parse_profile({
        "name": "calibrated",
        "hardware": {"gpus_per_node": 2},
        "workload": {"samples_per_epoch": 400, "batch_per_device": 10, "scaling": "weak"},
        "step_time": {"t_compute_s": 0.1, "grad_bytes": 1e6, "intra_bandwidth_Bps": 1e8, "inter_bandwidth_Bps": 5e7},
        "overheads": overheads,
        "sharing": {1: 1.0, 2: 1.5},
        "config_cost": {"params": {"lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True, "slope": 0.8,
                                          "center": 0.5}},
                        "norm": 1.25, "applies_to": "compute"},
    }, "calibrated test profile")


def factor(config) -> float:
    return math.exp(0.8 * (math.log10(config["lr"] / 1e-3) / 3 - 0.5)) / 1.25


def epoch_by_hand(k: float, f: float, sharers: int = 1) -> float:
    if k < 1:
        return 6 * f * {1: 1.0, 2: 1.5}[sharers]
    return {1: 6 * f, 2: 3 * f + 0.2, 4: 1.5 * f + 0.3}[int(k)]


def start_by_hand(k: float, resumed: bool, resume: bool = True) -> float:
    across = 4.0 if k > 2 else 0.0
    doublings = math.log2(max(k, 1))
    if not resumed:
        return 2 + doublings + across
    return 3 + 0.5 * doublings + across if resume else 2 + doublings + across + 0.7


def move_by_hand(k_from: float, k_to: float, resume: bool = True) -> float:
    return SAVE + 0.25 + 0.125 * math.log2(max(k_from, 1)) + start_by_hand(k_to, True, resume)


def _one_trial_grows(profile, k_from: int, k_to: int, max_epochs: int):
    """One trial of a random search on 4 devices in nodes of 2, allowed to grow from k_from to
    k_to once (its move pays by construction: many epochs left)."""
    alloc = Allocation((Fraction(k_from),), grow=(Fraction(k_to),))
    spec = make_spec(scheduler={"name": "random", "n_trials": 1, "max_epochs": max_epochs}, gpus=4, gpn=2, k=alloc,
                     profile=profile)
    return simulate(spec), ElasticPolicy(alloc, profile, [max_epochs])


@pytest.mark.parametrize("resume", [True, False], ids=["resume_s", "start-up+restore"])
@pytest.mark.parametrize("k_from, k_to", [(1, 2), (2, 4), (1, 4)], ids=["1->2", "2->4 across nodes", "1->4 across nodes"])
def test_elastic_prices_epochs_and_moves_as_the_engine_charges_them(k_from, k_to, resume):
    profile = calibrated(resume)
    result, policy = _one_trial_grows(profile, k_from, k_to, max_epochs=20)
    ev = result.events
    kinds = [(e.event, e.epoch, len(e.devices)) for e in ev[:6]]
    assert kinds == [("start", 0, k_from), ("result", 1, k_from), ("pause", 1, k_from), ("resume", 1, k_to),
                     ("result", 2, k_to), ("result", 3, k_to)]
    start, first, pause, resumed, second, third = ev[:6]
    f = factor(start.config)
    seg = SimpleNamespace(trial=start.trial, config=start.config)
    # what the engine charged, read off its trace
    epoch_from = first.time - start.time - start_by_hand(k_from, False)
    epoch_to = third.time - second.time - DECISION - SAVE  # the executor saves after every epoch it continues from
    move = (pause.time - first.time - DECISION) + (second.time - resumed.time - epoch_by_hand(k_to, f))
    assert epoch_from == pytest.approx(epoch_by_hand(k_from, f), rel=1e-9)
    assert epoch_to == pytest.approx(epoch_by_hand(k_to, f), rel=1e-9)
    assert move == pytest.approx(move_by_hand(k_from, k_to, resume), rel=1e-9)
    # what the policy expected
    assert policy.epoch_time(seg, k_from) == pytest.approx(epoch_by_hand(k_from, f), rel=1e-12)
    assert policy.epoch_time(seg, k_to) == pytest.approx(epoch_by_hand(k_to, f), rel=1e-12)
    assert policy.move_cost(k_from, k_to) == pytest.approx(move_by_hand(k_from, k_to, resume), rel=1e-12)


@pytest.mark.parametrize("resume", [True, False], ids=["resume_s", "start-up+restore"])
def test_unshare_prices_the_shared_epoch_and_the_move_as_the_engine_charges_them(resume):
    """Three trials at k = 1/2 on 2 devices: two share a device; when the trial alone on the
    other ends, one of the sharing trials moves there (the window pays by construction).
    An epoch beside a partner costs 6 f x 1.5, alone 6 f; the move save + release(1/2) +
    resume(1/2) (k = 1/2 starts as k = 1 does: log2 of at most 1 is 0)."""
    profile = calibrated(resume)
    spec = make_spec(scheduler={"name": "random", "n_trials": 3, "max_epochs": 30}, gpus=2, gpn=2, k="1/2",
                     profile=profile)
    spec = type(spec)(**{**spec.__dict__, "unshare": True})
    ev = simulate(spec).events
    moved = [e for e in ev if e.event == "resume" and e.info == "reallocate"]
    assert len(moved) == 1
    trial = moved[0].trial
    mine = [e for e in ev if e.trial == trial]
    at = mine.index(moved[0])
    config = mine[0].config
    f = factor(config)
    last, pause, resumed, after = mine[at - 2], mine[at - 1], mine[at], mine[at + 1]
    assert (last.event, pause.event, after.event) == ("result", "pause", "result")
    move = (pause.time - last.time - DECISION) + (after.time - resumed.time - epoch_by_hand(0.5, f, 1))
    assert move == pytest.approx(move_by_hand(0.5, 0.5, resume), rel=1e-9)
    # an epoch beside a partner: the two trials placed on one device both start at 0 and
    # train their first epoch side by side from 2 s on; the one with the smaller factor ends
    # it first, having trained beside the other the whole time
    starts = [e for e in ev if e.event == "start"]
    pair = [e for e in starts if [s.devices for s in starts].count(e.devices) == 2]
    first = min(pair, key=lambda e: factor(e.config))
    first_result = next(e for e in ev if e.event == "result" and e.trial == first.trial)
    assert first_result.time == pytest.approx(start_by_hand(0.5, False) + epoch_by_hand(0.5, factor(first.config), 2),
                                              rel=1e-9)
    policy = UnsharePolicy(profile, [30])
    seg = SimpleNamespace(trial=trial, config=config, k=Fraction(1, 2))
    assert policy.epoch_time(seg, 2) == pytest.approx(epoch_by_hand(0.5, f, 2), rel=1e-12)
    assert policy.epoch_time(seg, 1) == pytest.approx(epoch_by_hand(0.5, f, 1), rel=1e-12)
    assert policy.move_cost(seg) == pytest.approx(move_by_hand(0.5, 0.5, resume), rel=1e-12)
