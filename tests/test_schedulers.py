"""Hand-computed cases for ASHA, HyperBand and BOHB (the contract test covers the rest)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from nasalloc.sim.errors import UserError
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
from nasalloc.sim.schedulers.asha import AshaBracket, geometric_rungs, rank_continues, ray_continues
from nasalloc.sim.schedulers.bohb import KDESearcher, ProductKDE
from nasalloc.sim.schedulers.hyperband import SyncBracket, hyperband_plan, s_max_for
from nasalloc.sim.space import SearchSpace
from test_sim_support import scheduler_node

SPACE = SearchSpace.from_config({"x": {"type": "float", "low": 0.0, "high": 1.0}})


def build(node: dict[str, Any], seed: int = 0) -> Scheduler:
    return make_scheduler(scheduler_config(scheduler_node(node)), SPACE, np.random.default_rng(seed))


def jobs(sched: Scheduler, n: int) -> list[Job]:
    out = []
    for _ in range(n):
        job = sched.ask()
        assert isinstance(job, Job), job
        out.append(job)
    return out


# ----- rung placement ---------------------------------------------------------------------
def test_rungs_use_integer_arithmetic_and_keep_exact_powers() -> None:
    assert geometric_rungs(1, 27, 3) == [1, 3, 9]
    assert geometric_rungs(1, 243, 3) == [1, 3, 9, 27, 81]  # Ray's float log loses 81
    assert geometric_rungs(1, 244, 3) == [1, 3, 9, 27, 81, 243]
    assert geometric_rungs(2, 30, 2) == [2, 4, 8, 16]
    assert geometric_rungs(1, 27, 3, first_power=1) == [3, 9]
    assert geometric_rungs(5, 5, 3) == []


def test_milestones_property() -> None:
    assert build({"name": "asha", "max_epochs": 27}).milestones == [1, 3, 9]
    assert build({"name": "asha", "max_epochs": 27, "brackets": 2}).milestones == [1, 3, 9]
    assert build({"name": "hyperband", "max_epochs": 81}).milestones == [1, 3, 9, 27]
    assert build({"name": "hyperband", "min_epochs": 1, "max_epochs": 30}).milestones == [1, 3, 10]


# ----- ASHA stopping rules ------------------------------------------------------------------
def test_facts_example_ray_stops_rank_continues() -> None:
    assert not ray_continues([1.0, 2.0], 1.5, eta=3)  # 66.7th percentile of {1, 2} is 1.667
    assert rank_continues([1.0, 2.0], 1.5, eta=3)  # 1 better of 3 is not > 1/3


def test_rules_first_result_ties_and_nan() -> None:
    for rule in (ray_continues, rank_continues):
        assert rule([], -1e9, eta=3)  # the first result at a rung always continues
        assert rule([], float("nan"), eta=3)
        assert rule([1.0, 1.0, 1.0], 1.0, eta=3)  # ties continue
    # Ray: NaN continues and is ignored in later cut-offs
    assert ray_continues([1.0, 2.0], float("nan"), eta=3)
    assert ray_continues([float("nan"), float("nan")], 0.0, eta=3)
    assert not ray_continues([float("nan"), 1.0, 2.0], 1.5, eta=3)  # as if {1, 2}
    # rank: NaN is worst
    assert not rank_continues([1.0, 2.0], float("nan"), eta=3)  # 2 better of 3 > 1/3
    assert rank_continues([float("nan"), float("nan")], 0.0, eta=3)
    # rank thresholds: 1 better of 2 is > 1/3 -> stop; eta=2: 1 of 2 is not > 1/2 -> continue
    assert not rank_continues([2.0], 1.0, eta=3)
    assert rank_continues([2.0], 1.0, eta=2)
    # Ray with one recorded value: the cut-off is that value
    assert not ray_continues([2.0], 1.0, eta=2)
    assert ray_continues([2.0], 2.0, eta=2)


@pytest.mark.parametrize(
    "rule, mode, values, expected",
    [
        ("ray", "max", [1.0, 2.0, 1.5], ["continue", "continue", "stop"]),
        ("rank", "max", [1.0, 2.0, 1.5], ["continue", "continue", "continue"]),
        ("ray", "min", [3.0, 1.0, 2.0], ["continue", "continue", "stop"]),  # scores -3, -1, -2
        ("rank", "min", [3.0, 1.0, 2.0], ["continue", "continue", "continue"]),
        ("ray", "max", [0.5, 0.4, 0.6, 0.45], ["continue", "stop", "continue", "stop"]),
        ("rank", "max", [0.5, 0.4, 0.6, 0.45], ["continue", "stop", "continue", "stop"]),
    ],
)
def test_asha_stopping_sequence(rule: str, mode: str, values: list[float], expected: list[str]) -> None:
    sched = build({"name": "asha", "n_trials": len(values), "max_epochs": 9, "rule": rule, "mode": mode})
    js = jobs(sched, len(values))
    assert all(j.start_epoch == 0 and j.until_epoch == 9 and not j.resume for j in js)
    assert sched.ask() is WAIT
    got = [sched.on_result(j.trial, 1, v).value for j, v in zip(js, values)]
    assert got == expected
    # the stopped trials' values are recorded too
    assert len(sched.brackets[0].rungs[0].recorded) == len(values)


def test_asha_stopping_runs_to_max_and_completes() -> None:
    sched = build({"name": "asha", "n_trials": 1, "max_epochs": 9})
    (job,) = jobs(sched, 1)
    decisions = [sched.on_result(job.trial, e, 0.1 * e) for e in range(1, 10)]
    assert decisions[:-1] == [Decision.CONTINUE] * 8
    assert decisions[-1] is Decision.STOP
    assert sched.trials[job.trial].status is TrialStatus.COMPLETED
    assert sched.ask() is FINISHED
    assert sched.drain_stopped() == []


def test_asha_result_jumping_rungs_is_judged_at_the_highest_only() -> None:
    sched = build({"name": "asha", "n_trials": 3, "max_epochs": 27})
    a, b, c = jobs(sched, 3)
    assert sched.on_result(a.trial, 3, 0.9) is Decision.CONTINUE
    assert sched.on_result(b.trial, 1, 0.1) is Decision.CONTINUE
    assert sched.on_result(c.trial, 4, 0.5) is Decision.STOP  # judged at rung 3 against {0.9}
    rungs = sched.brackets[0].rungs
    assert set(rungs[0].recorded) == {b.trial}
    assert set(rungs[1].recorded) == {a.trial, c.trial}
    assert sched.on_result(a.trial, 5, 0.9) is Decision.CONTINUE  # no new rung passed
    assert sched.on_result(a.trial, 27, 0.95) is Decision.STOP  # max_epochs before rung logic


def test_asha_promotion_hand_made() -> None:
    sched = build({"name": "asha", "variant": "promotion", "n_trials": 4, "max_epochs": 9})
    assert sched.milestones == [1, 3]
    results = [0.3, 0.8, 0.5, 0.9]
    j0 = sched.ask()
    assert isinstance(j0, Job) and (j0.start_epoch, j0.until_epoch, j0.resume) == (0, 1, False)
    assert sched.on_result(j0.trial, 1, results[0]) is Decision.PAUSE
    j1 = sched.ask()  # one result at rung 1: floor(1/3) = 0 promotable -> a new trial
    assert isinstance(j1, Job) and not j1.resume
    assert sched.on_result(j1.trial, 1, results[1]) is Decision.PAUSE
    j2 = sched.ask()
    assert isinstance(j2, Job) and not j2.resume
    assert sched.on_result(j2.trial, 1, results[2]) is Decision.PAUSE
    # three results: the best (trial 1) is promoted before any new trial starts
    p = sched.ask()
    assert isinstance(p, Job) and (p.trial, p.start_epoch, p.until_epoch, p.resume) == (j1.trial, 1, 3, True)
    assert sched.on_result(p.trial, 2, 0.85) is Decision.CONTINUE
    assert sched.on_result(p.trial, 3, 0.9) is Decision.PAUSE
    j3 = sched.ask()  # rung 3 has one result, trial 1 was already promoted from rung 1
    assert isinstance(j3, Job) and not j3.resume and j3.trial == 3
    assert sched.drain_stopped() == []
    assert sched.on_result(j3.trial, 1, results[3]) is Decision.PAUSE
    # now 4 results at rung 1: top floor(4/3) = 1 is trial 3 (0.9) -> promoted
    p = sched.ask()
    assert isinstance(p, Job) and p.trial == 3 and (p.start_epoch, p.until_epoch) == (1, 3)
    assert sched.ask() is WAIT  # budget spent, a trial still runs
    assert sched.on_result(3, 3, 0.95) is Decision.PAUSE
    # rung 3 now {1: 0.9, 3: 0.95}: floor(2/3) = 0 -> nothing promotable, nothing runs
    assert sched.ask() is FINISHED
    assert sorted(sched.drain_stopped()) == [0, 1, 2, 3]
    assert sched.drain_stopped() == []
    assert all(t.status is TrialStatus.STOPPED for t in sched.trials.values())


def test_driver_calls_return_the_trials_they_stopped_and_count_what_may_change_the_state() -> None:
    """`step_*`: an ask counts only when it hands out a job; every result and failure counts."""
    sched = build({"name": "asha", "variant": "promotion", "n_trials": 3, "max_epochs": 3, "eta": 3, "min_epochs": 1})
    steps = [sched.step_ask()]  # trial 0: 1 call
    steps.append(sched.step_result(0, 1, 0.5))  # 2
    steps.append(sched.step_ask())  # trial 1: 3
    steps.append(sched.step_result(1, 1, 0.9))  # 4
    steps.append(sched.step_ask())  # trial 2: 5
    steps.append(sched.step_ask())  # WAIT: budget spent, trial 2 runs; still 5
    assert sched.calls == 5 and steps[-1] == (WAIT, ())
    steps.append(sched.step_failure(2, 0))  # retried: 6
    steps.append(sched.step_ask())  # the retry: 7
    steps.append(sched.step_result(2, 1, 0.7))  # 8; rung 1 holds 3 results: trial 1 is promotable
    steps.append(sched.step_ask())  # trial 1 to epoch 3: 9
    steps.append(sched.step_result(1, 3, 0.95))  # 10; STOP at max_epochs
    assert [step.answer for step in steps[6:]] == [True, Job(2, sched.trials[2].config, 0, 1, resume=True, attempt=1),
                                                   Decision.PAUSE, Job(1, sched.trials[1].config, 1, 3, resume=True),
                                                   Decision.STOP]
    assert all(step.stopped == () for step in steps) and sched.calls == 10
    assert sched.step_ask() == (FINISHED, (0, 2))  # nothing left to promote: the paused trials stop
    assert sched.calls == 10 and sched.drain_stopped() == []


def test_asha_promotion_rerun_restarts_from_scratch() -> None:
    sched = build({"name": "asha", "variant": "promotion", "promotion": "rerun", "n_trials": 3, "max_epochs": 3, "eta": 3})
    for v in (0.1, 0.7, 0.2):
        job = sched.ask()
        assert sched.on_result(job.trial, 1, v) is Decision.PAUSE
    p = sched.ask()
    assert isinstance(p, Job) and (p.trial, p.start_epoch, p.until_epoch) == (1, 0, 3)
    assert sched.on_result(1, 1, 0.123) is Decision.CONTINUE  # replay: not recorded again
    assert sched.trials[1].metrics[1] == 0.7
    assert sched.on_result(1, 2, 0.8) is Decision.CONTINUE
    assert sched.on_result(1, 3, 0.9) is Decision.STOP
    assert sched.trials[1].status is TrialStatus.COMPLETED


def test_asha_bracket_assignment() -> None:
    rr = build({"name": "asha", "n_trials": 6, "brackets": 3, "bracket_assignment": "round_robin"})
    assert [j.trial for j in jobs(rr, 6)] == list(range(6))
    assert [rr.trials[i].bracket for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [list(b.milestones) for b in rr.brackets] == [[1, 3, 9], [3, 9], [9]]
    soft = build({"name": "asha", "n_trials": 300, "brackets": 3}, seed=1)
    jobs(soft, 300)
    counts = np.bincount([t.bracket for t in soft.trials.values()], minlength=3)
    # p ~ e^0, e^-1, e^-2 normalised = 0.665, 0.245, 0.090
    assert counts[0] > counts[1] > counts[2] > 0


def test_asha_bracket_class() -> None:
    b = AshaBracket(1, 1, 27, 3, "rank")
    assert b.milestones == [3, 9]
    assert b.next_stop(0) == 3 and b.next_stop(3) == 9 and b.next_stop(9) == 27
    assert b.judge(0, 2, 0.5) is None  # below the first rung
    assert b.judge(0, 3, 0.5) == (0, True)
    assert b.judge(0, 3, 0.5) is None  # already recorded there
    assert b.judge(1, 3, 0.1) == (0, False)
    assert b.judge(2, 3, 0.7) == (0, True)
    assert b.promotable({0: True, 1: True, 2: True}) == (0, 2)
    assert b.promotable({0: True, 1: True, 2: False}) is None  # the top one is not paused


# ----- HyperBand ----------------------------------------------------------------------------
def test_hyperband_table_r81_eta3_algorithm_1() -> None:
    plan = hyperband_plan(1, 81, 3)  # Algorithm 1, keep floor(n_i / eta)
    assert [(p.s, p.sizes, p.budgets) for p in plan] == [
        (4, (81, 27, 9, 3, 1), (1, 3, 9, 27, 81)),
        (3, (34, 11, 3, 1), (3, 9, 27, 81)),
        (2, (15, 5, 1), (9, 27, 81)),
        (1, (8, 2), (27, 81)),
        (0, (5,), (81,)),
    ]


def test_hyperband_table_r81_eta3_table_1() -> None:
    plan = hyperband_plan(1, 81, 3, bracket_sizes="table")  # the paper's Table 1
    assert [p.sizes for p in plan] == [(81, 27, 9, 3, 1), (27, 9, 3, 1), (9, 3, 1), (6, 2), (5,)]


def test_hyperband_table_r81_eta3_ceil_keep() -> None:
    plan = hyperband_plan(1, 81, 3, keep="ceil")  # Ray Tune / Syne Tune keep ceil(n_i / eta)
    assert [p.sizes for p in plan] == [(81, 27, 9, 3, 1), (34, 12, 4, 2), (15, 5, 2), (8, 3), (5,)]


def test_hyperband_budgets_anchor_at_max_epochs() -> None:
    assert s_max_for(1, 81, 3) == 4 and s_max_for(1, 80, 3) == 3 and s_max_for(2, 20, 3) == 2
    assert [p.budgets for p in hyperband_plan(2, 20, 3)] == [(2, 6, 20), (6, 20), (20,)]
    assert [p.budgets for p in hyperband_plan(5, 5, 3)] == [(5,)]


def test_sync_bracket_rounds() -> None:
    b = SyncBracket(0, s=2, n=9, budgets=(1, 3, 9), eta=3)
    assert b.sizes == (9, 3, 1)
    for t in range(9):
        assert b.needs_trials()
        b.add(t)
    assert not b.needs_trials()
    for t in range(8):
        assert b.report(t, float(t)) is None
    out = b.report(8, 4.5)
    assert out is not None and out.winners == [7, 6, 5] and out.losers == [8, 4, 3, 2, 1, 0]
    assert (b.round, b.budget, b.to_resume) == (1, 3, [7, 6, 5])
    assert b.drop(6) is None
    out = b.report(7, 1.0)
    assert out is None
    out = b.report(5, 2.0)
    assert out is not None and out.winners == [5] and out.losers == [7]
    assert b.is_last_round and b.budget == 9
    assert not b.finished
    assert b.report(5, 3.0) is not None and b.finished


def test_sync_bracket_ties_nan_and_all_dropped() -> None:
    b = SyncBracket(0, s=1, n=3, budgets=(3, 9), eta=3)
    for t in range(3):
        b.add(t)
    b.report(0, float("nan"))
    b.report(1, 1.0)
    out = b.report(2, 1.0)
    assert out is not None and out.winners == [1] and out.losers == [2, 0]  # tie: earlier id; NaN last
    assert b.drop(1) is not None and b.finished  # the only survivor failed: the bracket ends


def test_hyperband_drives_a_bracket_by_hand() -> None:
    sched = build({"name": "hyperband", "n_trials": 9, "min_epochs": 1, "max_epochs": 9, "eta": 3})
    js = jobs(sched, 9)
    assert all((j.start_epoch, j.until_epoch) == (0, 1) for j in js)
    assert sched.ask() is WAIT
    values = [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5]
    for j, v in zip(js[:-1], values[:-1]):
        assert sched.on_result(j.trial, 1, v) is Decision.PAUSE
        assert sched.drain_stopped() == []
        assert sched.ask() is WAIT  # the rung is not complete
    assert sched.on_result(8, 1, values[8]) is Decision.STOP  # completes the rung and loses
    assert sorted(sched.drain_stopped()) == [0, 2, 4, 6, 7]  # paused losers (8 got STOP itself)
    resumed = jobs(sched, 3)
    assert [(j.trial, j.start_epoch, j.until_epoch, j.resume) for j in resumed] == [
        (1, 1, 3, True), (3, 1, 3, True), (5, 1, 3, True)
    ]
    assert sched.ask() is WAIT
    assert sched.on_result(1, 2, 0.9) is Decision.CONTINUE
    assert sched.on_result(1, 3, 0.95) is Decision.PAUSE
    assert sched.on_result(3, 3, 0.99) is Decision.PAUSE
    assert sched.on_failure(5, resume_epoch=2) is True  # retried from its checkpoint
    retry = sched.ask()
    assert isinstance(retry, Job) and (retry.trial, retry.start_epoch, retry.until_epoch, retry.attempt) == (5, 1, 3, 1)
    assert sched.on_result(5, 2, 0.1) is Decision.CONTINUE
    assert sched.on_result(5, 3, 0.2) is Decision.STOP
    assert sorted(sched.drain_stopped()) == [1]
    final = sched.ask()
    assert isinstance(final, Job) and (final.trial, final.start_epoch, final.until_epoch) == (3, 3, 9)
    assert sched.on_result(3, 9, 1.0) is Decision.STOP
    assert sched.trials[3].status is TrialStatus.COMPLETED
    assert sched.ask() is FINISHED


def test_hyperband_dropped_trial_does_not_block_its_rung() -> None:
    sched = build({"name": "hyperband", "n_trials": 3, "min_epochs": 3, "max_epochs": 9, "eta": 3, "max_retries": 0})
    a, b, c = jobs(sched, 3)  # s_max = 1: 3 trials at 3 epochs, keep 1 for 9
    assert sched.on_result(a.trial, 3, 0.5) is Decision.PAUSE
    assert sched.on_result(b.trial, 3, 0.7) is Decision.PAUSE
    assert sched.ask() is WAIT
    assert sched.on_failure(c.trial, 2) is False
    assert sched.trials[c.trial].status is TrialStatus.DROPPED
    assert sched.drain_stopped() == [a.trial]
    job = sched.ask()
    assert isinstance(job, Job) and (job.trial, job.start_epoch, job.until_epoch) == (b.trial, 3, 9)


def test_hyperband_next_bracket_waits_unless_overlap() -> None:
    node = {"name": "hyperband", "n_trials": 20, "min_epochs": 1, "max_epochs": 9, "eta": 3}
    sched = build({**node, "overlap_brackets": False})
    jobs(sched, 9)  # bracket s=2 is 9 trials
    assert sched.ask() is WAIT
    over = build(node)  # overlap is the default
    jobs(over, 9)
    nxt = over.ask()  # the next bracket (s=1: 5 trials at 3 epochs) starts on the idle worker
    assert isinstance(nxt, Job) and (nxt.until_epoch, over.trials[nxt.trial].bracket) == (3, 1)


def test_hyperband_budget_cuts_the_last_bracket_short() -> None:
    sched = build({"name": "hyperband", "n_trials": 11, "min_epochs": 1, "max_epochs": 9, "eta": 3,
                   "overlap_brackets": False})
    first = jobs(sched, 9)
    for j in first:
        sched.on_result(j.trial, 1, 0.5 + 0.01 * j.trial)
    for j in jobs(sched, 3):
        sched.on_result(j.trial, 3, 0.5 + 0.01 * j.trial)
    (top,) = jobs(sched, 1)
    assert sched.on_result(top.trial, 9, 1.0) is Decision.STOP
    second = jobs(sched, 2)  # bracket s=1 would have 5 trials; 2 are left in the budget
    assert sched.brackets[1].sizes == (2, 1)
    assert all(j.until_epoch == 3 for j in second)


# ----- BOHB ---------------------------------------------------------------------------------
def test_product_kde_is_a_density() -> None:
    rng = np.random.default_rng(0)
    data = np.column_stack([rng.random(20), rng.integers(0, 3, 20)])
    kde = ProductKDE(data, levels=[0, 3])
    xs = np.linspace(-1.0, 2.0, 3001)
    total = 0.0
    for c in range(3):
        pts = np.column_stack([xs, np.full_like(xs, c)])
        total += float(np.trapezoid(kde.pdf(pts), xs))
    assert total == pytest.approx(1.0, abs=1e-3)
    assert kde.pdf(data[0]) == pytest.approx(float(kde.pdf(data[:1])[0]))
    assert np.all(kde.bw >= 1e-3) and kde.bw[1] <= 2 / 3


def test_product_kde_samples_stay_in_the_unit_cube_and_on_choices() -> None:
    data = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 2.0]])
    kde = ProductKDE(data, levels=[0, 3])
    rng = np.random.default_rng(1)
    draws = kde.sample(rng, 3.0, 500)
    assert np.all((0 <= draws[:, 0]) & (draws[:, 0] <= 1))
    assert set(np.unique(draws[:, 1])) <= {0.0, 1.0, 2.0}


def test_kde_searcher_random_until_a_model_then_concentrates_on_the_good_region() -> None:
    space = SearchSpace.from_config(
        {"x": {"type": "float", "low": 0.0, "high": 1.0}, "c": {"type": "categorical", "choices": ["a", "b", "c"]}}
    )
    rng = np.random.default_rng(2)
    s = KDESearcher(space, rng, random_fraction=0.0)
    assert s.min_points_in_model == 3
    for _ in range(40):
        config = space.sample(rng)
        s.observe(config, 3, -abs(config["x"] - 0.8) - (0.0 if config["c"] == "b" else 0.3))
        if len(s.observations[3]) < 3:
            assert not s.models
    assert 3 in s.models
    picks = [s.suggest(9) for _ in range(40)]
    assert abs(float(np.median([p["x"] for p in picks])) - 0.8) < 0.1
    assert sum(p["c"] == "b" for p in picks) > 30
    # a model on a larger budget takes over as soon as it has one
    for x in (0.1, 0.15, 0.2, 0.9, 0.95, 0.3, 0.25, 0.6):
        s.observe({"x": x, "c": "a"}, 9, -abs(x - 0.2))
    assert max(s.models) == 9
    picks = [s.suggest(9)["x"] for _ in range(30)]
    assert abs(float(np.median(picks)) - 0.2) < 0.15


def test_kde_searcher_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        s = KDESearcher(SPACE, rng)
        out = []
        for i in range(30):
            c = s.suggest(1)
            out.append(c)
            s.observe(c, 1, -((c["x"] - 0.3) ** 2) if i % 5 else float("nan"))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


# ----- bad configs --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "node, key",
    [
        ({"name": "asha", "eta": 1}, "scheduler.eta=1"),
        ({"name": "asha", "min_epochs": 10, "max_epochs": 9}, "scheduler.max_epochs=9"),
        ({"name": "asha", "variant": "sync"}, "scheduler.variant=sync"),
        ({"name": "asha", "rule": "median"}, "scheduler.rule=median"),
        ({"name": "asha", "n_trials": 0}, "scheduler.n_trials=0"),
        ({"name": "asha", "brackets": 5}, "scheduler.brackets=5"),
        ({"name": "asha", "bracket_assignment": "random"}, "scheduler.bracket_assignment=random"),
        ({"name": "asha", "promotion": "restart"}, "scheduler.promotion=restart"),
        ({"name": "asha", "grace_period": 1}, "scheduler.grace_period"),
        ({"name": "hyperband", "eta": 1}, "scheduler.eta=1"),
        ({"name": "hyperband", "n_trials": 0}, "scheduler.n_trials=0"),
        ({"name": "hyperband", "min_epochs": 30}, "scheduler.max_epochs=27"),
        ({"name": "hyperband", "bracket_sizes": "paper"}, "scheduler.bracket_sizes=paper"),
        ({"name": "hyperband", "keep": "round"}, "scheduler.keep=round"),
        ({"name": "hyperband", "min_epochs": 0}, "scheduler.min_epochs=0"),
        ({"name": "bohb", "top_n_percent": 0}, "scheduler.top_n_percent=0"),
        ({"name": "bohb", "random_fraction": 1.5}, "scheduler.random_fraction=1.5"),
        ({"name": "bohb", "num_samples": 0}, "scheduler.num_samples=0"),
        ({"name": "bohb", "eta": 1}, "scheduler.eta=1"),
        ({"name": "asha", "eta": "three"}, "scheduler.eta"),
        ({"name": "sha"}, "scheduler.name='sha'"),
    ],
)
def test_bad_configs_name_the_key(node: dict[str, Any], key: str) -> None:
    with pytest.raises(UserError) as err:
        scheduler_config(scheduler_node(node))
    message = str(err.value)
    assert message.startswith(key), message
    assert "\n" not in message


def test_shipped_yaml_configs_validate() -> None:
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[1] / "conf" / "scheduler"
    for name in ("asha", "hyperband", "bohb"):
        node = yaml.safe_load((conf / f"{name}.yaml").read_text())
        cfg = scheduler_config(node)
        assert cfg.name == name
        sched = make_scheduler(cfg, SPACE, np.random.default_rng(0))
        assert sched.name == name and sched.max_epochs == 27


# ----- base contract details ----------------------------------------------------------------
def test_results_for_non_running_trials_are_rejected() -> None:
    sched = build({"name": "asha", "n_trials": 1, "max_epochs": 3})
    (job,) = jobs(sched, 1)
    assert sched.on_result(job.trial, 3, 1.0) is Decision.STOP
    with pytest.raises(ValueError):
        sched.on_result(job.trial, 3, 1.0)
    # a crash after the final answer changes nothing
    assert sched.on_failure(job.trial, 2) is False
    assert sched.trials[job.trial].status is TrialStatus.COMPLETED and sched.trials[job.trial].failures == 0
    assert sched.ask() is FINISHED


def test_failure_after_pause_keeps_the_pause_and_resumes_from_the_checkpoint() -> None:
    sched = build({"name": "hyperband", "n_trials": 3, "min_epochs": 3, "max_epochs": 9, "eta": 3, "max_retries": 1})
    a, b, c = jobs(sched, 3)
    assert sched.on_result(a.trial, 3, 0.9) is Decision.PAUSE
    assert sched.on_failure(a.trial, resume_epoch=2) is True  # crashed while saving epoch 3
    assert sched.trials[a.trial].status is TrialStatus.PAUSED
    assert sched.ask() is WAIT  # no retry job: the PAUSE stands
    assert sched.on_result(b.trial, 3, 0.5) is Decision.PAUSE
    assert sched.on_result(c.trial, 3, 0.1) is Decision.STOP
    assert sched.drain_stopped() == [b.trial]
    job = sched.ask()
    assert isinstance(job, Job) and (job.trial, job.start_epoch, job.until_epoch) == (a.trial, 2, 9)
    assert sched.on_result(a.trial, 3, 0.0) is Decision.CONTINUE  # replay, not recorded again
    assert sched.trials[a.trial].metrics[3] == 0.9


def test_failure_after_pause_without_retries_drops_and_does_not_block_the_rung() -> None:
    sched = build({"name": "hyperband", "n_trials": 3, "min_epochs": 3, "max_epochs": 9, "eta": 3, "max_retries": 0})
    a, b, c = jobs(sched, 3)
    assert sched.on_result(a.trial, 3, 0.9) is Decision.PAUSE
    assert sched.on_failure(a.trial, resume_epoch=2) is False
    assert sched.trials[a.trial].status is TrialStatus.DROPPED
    assert sched.on_result(b.trial, 3, 0.5) is Decision.PAUSE
    assert sched.on_result(c.trial, 3, 0.1) is Decision.STOP
    job = sched.ask()  # the best survivor goes on, not the dropped trial
    assert isinstance(job, Job) and job.trial == b.trial
    with pytest.raises(ValueError):
        sched.on_result(a.trial, 4, 1.0)


def test_score_handles_min_mode() -> None:
    assert build({"name": "asha", "mode": "min"}).score(2.0) == -2.0
    assert math.isnan(build({"name": "asha"}).score(float("nan")))


def test_linear_percentile_is_numpys_bit_for_bit():
    """The ray rule's cutoff is computed without numpy on the hot path; it must not drift."""
    import numpy as np

    from nasalloc.sim.schedulers.asha import linear_percentile

    rng = np.random.default_rng(7)
    for i in range(3000):
        n = int(rng.integers(1, 50))
        values = rng.choice([0.1, 0.2, 0.5, 1.0], n) if i % 2 else rng.random(n) * rng.choice([1e-3, 1.0, 1e5])
        for eta in (2, 3, 4, 5):
            p = 100.0 * (1.0 - 1.0 / eta)
            assert linear_percentile(sorted(map(float, values)), p) == float(np.nanpercentile(values, p))
