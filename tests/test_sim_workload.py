"""Learning-curve workloads: synthetic family and replay of recorded curves."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from nasalloc.sim.config import shipped
from nasalloc.sim.engine import simulate
from nasalloc.sim.errors import UserError
from nasalloc.sim.space import SearchSpace
from nasalloc.sim.trace import TraceEvent, write_trace
from nasalloc.sim.workload import MetricSpec, load_recording, workload_from_config
from test_sim_support import SPACE, make_spec, make_workload


def _curves(wl, n=60, epochs=27, seed=0):
    rng = np.random.default_rng(seed)
    run = wl.run(epochs)
    configs = [wl.space.sample(rng) for _ in range(n)]
    return np.array([[run.result(i, c, e, 1)[0] for e in range(1, epochs + 1)] for i, c in enumerate(configs)])


def test_curves_rise_to_config_dependent_asymptotes_within_range():
    curves = _curves(make_workload(noise=0.0, rank_fidelity=1.0))
    assert np.all(np.diff(curves, axis=1) >= -1e-12)  # no noise: monotone
    assert curves.min() >= 0.0 and curves.max() <= 1.0
    assert curves[:, -1].std() > 0.05  # configurations differ


def test_rank_fidelity_controls_how_well_early_ranks_predict_final():
    def rho(f):
        c = _curves(make_workload(rank_fidelity=f, noise=0.0, rate_spread=0.0), n=80)
        return stats.spearmanr(c[:, 0], c[:, -1]).statistic

    assert rho(1.0) > 0.99
    assert rho(0.0) < rho(0.5) < rho(1.0)


def test_same_config_same_curve_whatever_the_trial_id():
    wl = make_workload()
    cfg = {"lr": 0.01, "width": 64, "opt": "adam"}
    a, b = wl.run(9), wl.run(9)
    assert [a.result(0, cfg, e, 1) for e in range(1, 10)] == [b.result(5, cfg, e, 4) for e in range(1, 10)]
    other = make_workload(seed=1).run(9)
    assert other.result(0, cfg, 9, 1) != a.result(0, cfg, 9, 1)


def test_min_mode_curves_fall():
    wl = make_workload(metric={"name": "loss", "mode": "min", "low": 0.0, "high": 10.0},
                       initial=7.0, worst_final=3.0, best_final=1.0, noise=0.0)
    c = _curves(wl, n=10)
    assert np.all(c[:, -1] < c[:, 0])


@pytest.mark.parametrize("over, message", [
    ({"best_final": 1.5}, r"workload.best_final=1.5: outside the metric's range"),
    ({"best_final": 0.2}, r"must be better than worst_final"),
    ({"rank_fidelity": 2.0}, r"workload.rank_fidelity=2.0: must lie in \[0, 1\]"),
    ({"name": "nope"}, r"workload.name='nope': unknown workload; allowed: synthetic, replay"),
    ({"bogus": 1}, r"workload.bogus: unknown setting"),
])
def test_bad_synthetic_settings(over, message):
    with pytest.raises(UserError, match=message):
        make_workload(**over)


def _metric():
    return MetricSpec("acc", "max", 0.0, 1.0)


def test_replay_from_a_trace_counts_epochs_beyond_the_recording(tmp_path):
    events = [TraceEvent(time=0.0, event="start", trial=0, epoch=0, devices=(0,), config={"lr": 0.1})]
    events += [TraceEvent(time=float(e), event="result", trial=0, epoch=e, metric=0.1 * e, devices=(0,),
                          test_metric=0.1 * e - 0.01) for e in (1, 2, 3)]
    events += [TraceEvent(time=3.0, event="stop", trial=0, epoch=3, devices=(0,)),
               TraceEvent(time=3.0, event="start", trial=1, epoch=0, devices=(0,), config={"lr": 0.2})]
    events += [TraceEvent(time=4.0, event="result", trial=1, epoch=1, metric=0.05, devices=(0,))]
    path = tmp_path / "trace.jsonl"
    write_trace(path, events)
    node = {**shipped("workload", "replay"), "path": str(path), "metric": {"name": "acc", "mode": "max", "low": 0, "high": 1},
            "space": SPACE}
    wl = workload_from_config(node)
    assert len(wl.curves) == 2
    spec = make_spec(workload=wl, scheduler={"name": "random", "n_trials": 3, "max_epochs": 4})
    result = simulate(spec)
    by_trial = {}
    for e in result.events:
        if e.event == "result":
            by_trial.setdefault(e.trial, []).append(e.metric)
    assert by_trial[0] == pytest.approx([0.1, 0.2, 0.3, 0.3])  # epoch 4 holds the last recorded value
    assert by_trial[1] == pytest.approx([0.05] * 4)
    assert by_trial[2] == by_trial[0]  # trial 2 replays curve 0
    assert result.summary.extra["replay_results_beyond_recorded"] == 1 + 3 + 1
    assert result.summary.extra["replay_trials_wrapped"] == 1
    assert result.summary.best_test_metric == pytest.approx(0.29)


def test_replay_from_csv(tmp_path):
    path = tmp_path / "curves.csv"
    path.write_text("config_id,epoch,metric,test_metric\na,1,0.2,0.19\na,2,0.4,\nb,1,0.3,0.28\n")
    curves = load_recording(path, _metric(), Fraction(1)).curves
    assert curves == ({1: (0.2, 0.19), 2: (0.4, None)}, {1: (0.3, 0.28)})


@pytest.mark.parametrize("text, message", [
    ("id,epoch,value\n", r"curves.csv:1: header must name config_id, epoch, metric"),
    ("config_id,epoch,metric\na,one,0.2\n", r"curves.csv:2: epoch must be an integer and metric a number"),
    ("config_id,epoch,metric\na,1,1.7\n", r"metric 1.7 at epoch 1 outside workload.metric's range"),
    ("config_id,epoch,metric\n", r"no result events/rows to replay"),
])
def test_malformed_replay_csv(tmp_path, text, message):
    path = tmp_path / "curves.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_recording(path, _metric(), Fraction(1)).curves


def test_replay_needs_an_existing_file(tmp_path):
    node = {**shipped("workload", "replay"), "path": str(tmp_path / "none.jsonl"), "metric": dataclasses.asdict(_metric()),
            "space": SPACE}
    with pytest.raises(UserError, match=r"workload.path=.*none.jsonl: no such file"):
        workload_from_config(node)
    with pytest.raises(UserError, match=r"workload.path: required"):
        workload_from_config({**shipped("workload", "replay"), "metric": dataclasses.asdict(_metric()), "space": SPACE})


def test_space_is_required():
    with pytest.raises(UserError, match="workload.space: the search space is empty"):
        workload_from_config({**shipped("workload", "synthetic"), "space": None})
    assert isinstance(make_workload().space, SearchSpace)
