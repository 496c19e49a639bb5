"""ASHA: asynchronous successive halving (Li et al., MLSys 2020), in two variants.

Vocabulary (the same as Ray Tune's and Syne Tune's):

- A *rung* is an epoch count (a milestone) at which a trial's result is compared with the
  results other trials had at that same epoch count. Rungs lie at
  ``min_epochs * eta**(s + i)`` strictly below ``max_epochs`` (computed with integers:
  Ray computes their number with a float log and loses the top rung on exact powers,
  e.g. max_t=243, eta=3 stops at 81).
- A *bracket* ``s`` is one ladder of rungs; bracket s starts at ``min_epochs * eta**s``,
  so higher brackets stop later and less aggressively. ASHA usually runs one bracket
  (``brackets: 1``); with more, each new trial is assigned to one bracket for life.
- A *trial* is one configuration; it climbs the rungs of its bracket.

The two variants differ in *when* the comparison happens:

``variant: stopping`` (Ray Tune ``ASHAScheduler``, Syne Tune ``AsynchronousSuccessiveHalving``)
    Every job trains from its start straight to ``max_epochs``. When a result reaches a
    rung the trial is judged at once against the results recorded there so far and is
    answered STOP if it is not good enough, else CONTINUE. Nothing ever pauses.

``variant: promotion`` (Li et al.'s Algorithm 2; neither Ray nor Syne Tune ships it now)
    A job trains only up to the trial's next rung, where the trial is answered PAUSE.
    ``ask`` first looks for a *promotable* paused trial — among the top
    ``floor(n/eta)`` of the n results recorded at its rung and not yet promoted — taking
    the highest rung first (and the best trial there), and resumes it up to its next rung;
    only when none exists does it start a new trial. When the trial budget is spent and no
    promotion is possible any more, the search ends and the trials still paused are
    stopped (drivers learn it from ``drain_stopped``).

Stopping rules for the stopping variant (``rule``), both "higher score is better" after
`Scheduler.score`; the first result at a rung always continues in both:

``rule: ray`` — Ray Tune's quantile rule (``tune/schedulers/async_hyperband.py``):
    stop iff the new score is strictly below the ``100 * (1 - 1/eta)`` percentile (numpy's
    linear interpolation) of the scores already recorded at the rung, the new one
    excluded. Ties continue. A NaN score continues and is ignored by later percentiles
    (``nanpercentile``); it is still recorded, and a stopped trial's score is recorded too.

``rule: rank`` — Syne Tune's rank rule (``syne_tune/optimizer/schedulers/asha.py``):
    with n scores already recorded, stop iff ``#(recorded scores strictly better than the
    new one) / (n + 1) > 1/eta``. Ties continue. As in Syne Tune's numpy sort, NaN ranks
    worst: a NaN new score counts every non-NaN recorded score as better, and a recorded
    NaN is never better than anything.

The rules disagree in between, e.g. eta=3, recorded {1, 2}, new 1.5: the 66.7th percentile
is 1.67 so Ray stops; one better of three is not > 1/3 so the rank rule continues.

A result that jumps past several rungs at once (a driver that reports sparsely) is judged at
the highest rung passed only, and recorded only there: a value observed after more epochs
is not what the trial had at the lower rung's budget, so the lower rungs are left without it
(Ray and Syne Tune fill skipped rungs with that later value on later results; we do not).
A result at ``max_epochs`` completes the trial before any rung logic, as Ray's
``stop_last_trials=True``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from nasalloc.sim.config import require
from nasalloc.sim.schedulers.base import FINISHED, WAIT, Ask, Decision, Job, LadderConfig, Scheduler, Searcher, Trial, TrialStatus

VARIANTS = ("stopping", "promotion")
RULES = ("ray", "rank")
ASSIGNMENTS = ("softmax", "round_robin")


def geometric_rungs(min_epochs: int, max_epochs: int, eta: int, first_power: int = 0) -> list[int]:
    """``min_epochs * eta**k`` for k = first_power, first_power+1, ... while < max_epochs.

    Integer arithmetic only, so exact powers are never lost to rounding.
    """
    rungs = []
    m = min_epochs * eta**first_power
    while m < max_epochs:
        rungs.append(m)
        m *= eta
    return rungs


def _nan_worst(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def linear_percentile(sorted_values: list[float], percentile: float) -> float:
    """numpy's default ("linear") percentile of an ascending, NaN-free list, bit for bit.

    The ASHA rule runs once per result on the simulator's hot path; calling numpy there
    cost more than the rest of the simulation. The arithmetic below is numpy's own (virtual
    index (n - 1) * q and its two-sided lerp), so decisions match Ray's exactly.
    """
    n = len(sorted_values)
    q = percentile / 100.0
    index = (n - 1) * q
    below = math.floor(index)
    if below < 0:
        return sorted_values[0]
    if below >= n - 1:
        return sorted_values[-1]
    t = index - below
    a, b = sorted_values[below], sorted_values[below + 1]
    diff = b - a
    return b - diff * (1.0 - t) if t >= 0.5 else a + diff * t


def ray_continues(recorded: list[float], score: float, eta: int, *, presorted: bool = False) -> bool:
    """Ray Tune's quantile rule (see the module docstring); `recorded` excludes `score`.

    With `presorted`, `recorded` is already ascending and NaN-free (a rung keeps it so).
    """
    values = recorded if presorted else sorted(v for v in recorded if not math.isnan(v))
    if not values:
        return True  # nanpercentile of nothing is NaN; comparisons with NaN are False
    cutoff = linear_percentile(values, 100.0 * (1.0 - 1.0 / eta))
    return not score < cutoff  # NaN score: the comparison is False, so it continues


def rank_continues(recorded: list[float], score: float, eta: int) -> bool:
    """Syne Tune's rank rule (see the module docstring); `recorded` excludes `score`."""
    if not recorded:
        return True
    new = _nan_worst(score)
    better = sum(1 for v in recorded if _nan_worst(v) > new)
    # better / (n + 1) > 1 / eta, kept in integers
    return not better * eta > len(recorded) + 1


@dataclass
class Rung:
    """The results recorded at one milestone of one bracket, and which were promoted."""

    milestone: int
    recorded: dict[int, float] = field(default_factory=dict)  # trial id -> score
    promoted: set[int] = field(default_factory=set)
    ascending: list[float] = field(default_factory=list)  # the non-NaN scores, sorted (for the ray rule)

    def record(self, trial_id: int, score: float) -> None:
        self.recorded[trial_id] = score
        if not math.isnan(score):
            bisect.insort(self.ascending, score)

    def top(self, eta: int) -> list[int]:
        """The ``floor(n / eta)`` best trials (NaN worst; ties: earlier trial id first)."""
        ranked = sorted(self.recorded, key=lambda t: (-_nan_worst(self.recorded[t]), t))
        return ranked[: len(ranked) // eta]


class AshaBracket:
    """One ladder of rungs of ASHA; knows nothing about jobs, devices or trial states."""

    def __init__(self, s: int, min_epochs: int, max_epochs: int, eta: int, rule: str = "ray"):
        if rule not in RULES:
            raise ValueError(f"rule={rule!r}: allowed: {', '.join(RULES)}")
        self.s = s
        self.eta = eta
        self.max_epochs = max_epochs
        self.rule = rule
        self.rungs = [Rung(m) for m in geometric_rungs(min_epochs, max_epochs, eta, s)]
        self.milestones: list[int] = [r.milestone for r in self.rungs]  # fixed; read on every result
        self._level: dict[int, int] = {}  # trial id -> index of the highest rung it is recorded at

    def next_stop(self, epoch: int) -> int:
        """The first milestone after `epoch`, or max_epochs: where a promotion-variant job ends."""
        return next((m for m in self.milestones if m > epoch), self.max_epochs)

    def judge(self, trial_id: int, epoch: int, score: float) -> tuple[int, bool] | None:
        """Record a result at the highest rung `epoch` passed, if the trial is not there yet.

        Returns (rung index, continues?) or None when no new rung was passed. The score is
        recorded whatever the verdict (as Ray does), so later trials compare against it.
        """
        passed = sum(1 for m in self.milestones if m <= epoch) - 1
        if passed < 0 or passed <= self._level.get(trial_id, -1):
            return None
        rung = self.rungs[passed]
        if self.rule == "ray":
            keep = ray_continues(rung.ascending, score, self.eta, presorted=True)
        else:
            keep = rank_continues(list(rung.recorded.values()), score, self.eta)
        rung.record(trial_id, score)
        self._level[trial_id] = passed
        return passed, keep

    def promotable(self, is_paused: dict[int, bool]) -> tuple[int, int] | None:
        """(rung index, trial id) of the best promotable trial at the highest rung, or None."""
        for k in reversed(range(len(self.rungs))):
            rung = self.rungs[k]
            for t in rung.top(self.eta):
                if t not in rung.promoted and is_paused.get(t, False) and self._level.get(t) == k:
                    return k, t
        return None


@dataclass
class AshaConfig(LadderConfig):
    """conf/scheduler/asha.yaml (the values and what each means)."""

    variant: str  # stopping | promotion
    rule: str  # stopping variant only: ray | rank
    brackets: int
    bracket_assignment: str  # softmax (Ray/Syne Tune) | round_robin

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.variant in VARIANTS, f"variant={self.variant}: allowed: {', '.join(VARIANTS)}")
        require(self.rule in RULES, f"rule={self.rule}: allowed: {', '.join(RULES)}")
        most = len(geometric_rungs(self.min_epochs, self.max_epochs, self.eta)) + 1
        require(1 <= self.brackets <= most, f"brackets={self.brackets}: must be between 1 and {most} (bracket s starts at min_epochs*eta^s < max_epochs, the last one has no rungs)")
        require(self.bracket_assignment in ASSIGNMENTS, f"bracket_assignment={self.bracket_assignment}: allowed: {', '.join(ASSIGNMENTS)}")


class Asha(Scheduler):
    """ASHA, stopping or promotion variant (see the module docstring).

    Bracket assignment with ``brackets > 1``: ``softmax`` is Ray's and Syne Tune's rule
    (bracket b drawn with probability proportional to ``exp(#rungs_b)``, so the most
    aggressive bracket is favoured), drawn from the scheduler's Generator instead of the
    global ``np.random`` they use; ``round_robin`` gives trial i bracket ``i % brackets``.
    """

    name = "asha"

    def __init__(self, cfg: AshaConfig, searcher: Searcher, rng: np.random.Generator):
        super().__init__(searcher, max_epochs=cfg.max_epochs, mode=cfg.mode, max_retries=cfg.max_retries)
        self.cfg = cfg
        self.rng = rng
        self.brackets = [AshaBracket(s, cfg.min_epochs, cfg.max_epochs, cfg.eta, cfg.rule) for s in range(cfg.brackets)]

    @property
    def milestones(self) -> list[int]:
        return sorted({m for b in self.brackets for m in b.milestones})

    def _assign_bracket(self, trial_index: int) -> int:
        if len(self.brackets) == 1:
            return 0
        if self.cfg.bracket_assignment == "round_robin":
            return trial_index % len(self.brackets)
        sizes = np.array([len(b.rungs) for b in self.brackets], dtype=float)
        p = np.exp(sizes - sizes.max())
        return int(self.rng.choice(len(self.brackets), p=p / p.sum()))

    def _next_job(self) -> Ask:
        if self.cfg.variant == "promotion":
            job = self._promote()
            if job is not None:
                return job
        if len(self.trials) < self.cfg.n_trials:
            b = self._assign_bracket(len(self.trials))
            bracket = self.brackets[b]
            first = bracket.milestones[0] if bracket.milestones else self.max_epochs
            trial = self._new_trial(self.searcher.suggest(first), bracket=b)
            until = first if self.cfg.variant == "promotion" else self.max_epochs
            return Job(trial.id, trial.config, 0, until, resume=False)
        return WAIT if self._has_live_trials() else FINISHED

    def _promote(self) -> Job | None:
        """Resume the best promotable trial at the highest rung (any bracket), or None."""
        paused = {t.id: t.status is TrialStatus.PAUSED for t in self.trials.values()}
        best: tuple[int, int, int, int] | None = None  # (milestone, bracket, rung, trial)
        for b, bracket in enumerate(self.brackets):
            found = bracket.promotable(paused)
            if found is not None:
                k, t = found
                m = bracket.rungs[k].milestone
                if best is None or m > best[0]:
                    best = (m, b, k, t)
        if best is None:
            return None
        _, b, k, t = best
        bracket = self.brackets[b]
        bracket.rungs[k].promoted.add(t)
        trial = self.trials[t]
        start = self._resume_start(trial, self.cfg.promotion)
        return Job(t, trial.config, start, bracket.next_stop(trial.last_epoch), resume=True)

    def _decide(self, trial: Trial, epoch: int, score: float) -> Decision:
        bracket = self.brackets[trial.bracket]
        if epoch >= self.max_epochs:
            self.searcher.observe(trial.config, epoch, score)
            return Decision.STOP
        verdict = bracket.judge(trial.id, epoch, score)
        if verdict is not None:
            self.searcher.observe(trial.config, bracket.rungs[verdict[0]].milestone, score)
        if self.cfg.variant == "promotion":
            return Decision.PAUSE if epoch >= trial.until_epoch else Decision.CONTINUE
        if verdict is not None and not verdict[1]:
            return Decision.STOP
        return Decision.CONTINUE
