"""Hypothesis: random clusters, allocations, profiles and schedulers keep the invariants."""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nasalloc.sim.cluster import Allocation, ClusterSpec, allowed_allocations
from nasalloc.sim.engine import simulate
from test_sim_support import check_invariants, make_profile, make_spec

SCHEDULERS = [
    {"name": "random", "n_trials": 10, "max_epochs": 4},
    {"name": "asha", "n_trials": 20, "max_epochs": 9},
    {"name": "asha", "n_trials": 20, "max_epochs": 9, "variant": "promotion"},
    {"name": "hyperband", "n_trials": 15, "max_epochs": 9},
    {"name": "bohb", "n_trials": 15, "max_epochs": 9},
]


@st.composite
def cases(draw):
    gpn = draw(st.sampled_from([1, 2, 4, 8]))
    nodes = draw(st.integers(1, 4))
    cluster = ClusterSpec("h", gpn * nodes, gpn)
    allowed = allowed_allocations(cluster, min_k=0.25)
    if draw(st.booleans()):
        schedule = (draw(st.sampled_from(allowed)),)
    else:
        schedule = tuple(sorted(draw(st.lists(st.sampled_from(allowed), min_size=2, max_size=3))))
    profile = make_profile(
        t_compute=draw(st.floats(0.01, 2.0)),
        samples=draw(st.integers(50, 5000)),
        batch=draw(st.sampled_from([8, 32, 128])),
        startup=draw(st.floats(0.0, 30.0)),
        per_doubling=draw(st.floats(0.0, 3.0)),
        eval_s=draw(st.floats(0.0, 10.0)),
        save=draw(st.floats(0.0, 5.0)),
        restore=draw(st.floats(0.0, 5.0)),
        decision=draw(st.floats(0.0, 1.0)),
        bandwidth=draw(st.sampled_from(["inf", 1e9, 1e11])),
        cv=draw(st.floats(0.0, 0.3)),
        sharing={1: 1.0, 2: draw(st.floats(1.0, 2.5)), 4: draw(st.floats(2.0, 5.0))},
        gpn=gpn,
    )
    scheduler = draw(st.sampled_from(SCHEDULERS))
    seed = draw(st.integers(0, 2**31))
    return make_spec(scheduler=scheduler, gpus=cluster.gpus, gpn=gpn, k=Allocation(schedule), profile=profile, seed=seed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_invariants_hold_everywhere(spec):
    result = simulate(spec)
    check_invariants(result)
    s = result.summary
    assert 0.0 <= s.gpu_utilization <= 1.0 + 1e-9
    assert s.makespan_s == result.end_time


@settings(max_examples=15, deadline=None)
@given(cases())
def test_determinism_across_pickling(spec):
    def text(result):
        return "\n".join(e.to_json() for e in result.events)

    assert text(simulate(spec)) == text(simulate(pickle.loads(pickle.dumps(spec))))
