"""Synchronous HyperBand (Li et al., JMLR 2018, Algorithm 1).

How the pieces fit, from the outside in:

- A *HyperBand iteration* is one pass over the brackets s = s_max, s_max-1, ..., 0. The
  search repeats iterations until ``n_trials`` trials have been started (the last bracket
  is cut short to what is left of the budget).
- A *bracket* s is one run of synchronous successive halving: it starts ``n`` trials at a
  small budget ``r_0`` and in each *round* i keeps the best ``n_{i+1}`` of the ``n_i``
  trials of round i, training them on to the next budget ``r_{i+1} = eta * r_i``. Bracket
  s_max stops most aggressively (many trials, tiny first budget); bracket 0 is plain
  random search at the full budget.
- A *trial* lives in one bracket; at the end of each round it waits PAUSED until every
  trial of that round has reported (or been dropped after failures). Then the winners are
  resumed (``ask`` hands them out, best first) and the losers are stopped.

Units and sizes. With R = max_epochs / min_epochs and s_max = the largest s with
``min_epochs * eta**s <= max_epochs`` (integers, no float log), round i of bracket s trains
up to ``r_i = floor(max_epochs / eta**(s - i))`` epochs — the paper's ``R * eta**(i - s)``
in units of min_epochs, anchored at the full budget as in the paper; for exact powers
(27 = 1 * 3**3) the budgets are the familiar 1, 3, 9, 27. The bracket sizes follow
``bracket_sizes``:

``algorithm`` (default): Algorithm 1, ``n = ceil((s_max + 1) / (s + 1) * eta**s)``; for
    R=81, eta=3 that is 81, 34, 15, 8, 5.
``table``: Table 1 of the paper, the authors' sample code and HpBandSter, which floor
    ``(s_max + 1) / (s + 1)`` first: 81, 27, 9, 6, 5. (Ray Tune uses Algorithm 1.)

Round sizes follow ``keep``: ``floor`` (default, the paper: ``n_{i+1} = floor(n_i / eta)``)
or ``ceil`` (Ray Tune's and Syne Tune's synchronous HyperBand). Algorithm 1 is the default
because it is the algorithm the paper analyses; Table 1's numbers are only an
illustration. With ``floor`` at least one trial always survives (n >= eta**s).

Stopping losers. A loser is normally already PAUSED when its round completes; it is marked
STOPPED and reported once through `Scheduler.drain_stopped`. The one trial whose result
completes the round is answered STOP directly if it lost, PAUSE if it won (and is then
resumed by the next ``ask``). A dropped trial counts as reported for its round; if fewer
trials than planned are left, the round keeps ``min(n_{i+1}, survivors)``.

``overlap_brackets: true`` (default) is HpBandSter's behaviour: when no trial of the running
brackets can be started or resumed, the next bracket is opened on the idle worker, so
several brackets run at once — what a search on a shared cluster does, and what this tool
must measure. ``false`` is the paper's sequential behaviour: the next bracket starts only
when the previous one has finished, and ``ask`` answers WAIT while a round waits (on many
GPUs that leaves most of them idle; the simulator shows by how much).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nasalloc.sim.config import require
from nasalloc.sim.schedulers.base import FINISHED, WAIT, Ask, Decision, Job, LadderConfig, Scheduler, Searcher, Trial, TrialStatus

BRACKET_SIZES = ("algorithm", "table")
KEEP = ("floor", "ceil")


def s_max_for(min_epochs: int, max_epochs: int, eta: int) -> int:
    """The largest s with ``min_epochs * eta**s <= max_epochs``."""
    s = 0
    while min_epochs * eta ** (s + 1) <= max_epochs:
        s += 1
    return s


def kept(n: int, eta: int, keep: str) -> int:
    """How many of `n` trials go on to the next round (at least one)."""
    k = n // eta if keep == "floor" else -(-n // eta)
    return max(1, k)


@dataclass(frozen=True)
class BracketPlan:
    """Bracket s of one HyperBand iteration: round sizes n_i and budgets r_i (epochs)."""

    s: int
    sizes: tuple[int, ...]
    budgets: tuple[int, ...]


def round_sizes(n: int, rounds: int, eta: int, keep: str) -> tuple[int, ...]:
    sizes = [n]
    for _ in range(rounds - 1):
        sizes.append(kept(sizes[-1], eta, keep))
    return tuple(sizes)


def hyperband_plan(min_epochs: int, max_epochs: int, eta: int, bracket_sizes: str = "algorithm", keep: str = "floor") -> list[BracketPlan]:
    """The brackets of one HyperBand iteration, s = s_max first (see the module docstring)."""
    s_max = s_max_for(min_epochs, max_epochs, eta)
    plans = []
    for s in range(s_max, -1, -1):
        if bracket_sizes == "algorithm":
            n = -(-(s_max + 1) * eta**s // (s + 1))  # ceil, in integers
        else:
            n = ((s_max + 1) // (s + 1)) * eta**s
        budgets = tuple(max_epochs // eta ** (s - i) for i in range(s + 1))
        plans.append(BracketPlan(s, round_sizes(n, s + 1, eta, keep), budgets))
    return plans


@dataclass
class RoundOutcome:
    """What a completed round decided: who goes on (best first) and who stops."""

    winners: list[int] = field(default_factory=list)
    losers: list[int] = field(default_factory=list)


class SyncBracket:
    """Runtime state of one bracket of synchronous successive halving.

    Pure bookkeeping by trial id: the scheduler owns trial states and jobs. Round 0 fills
    up as trials are added; a round completes when all its trials have reported at the
    round's budget or been dropped.
    """

    def __init__(self, index: int, s: int, n: int, budgets: tuple[int, ...], eta: int, keep: str = "floor"):
        if n < 1:
            raise ValueError(f"bracket {index}: needs at least one trial, got {n}")
        self.index = index
        self.s = s
        self.eta = eta
        self.keep = keep
        self.budgets = budgets
        self.sizes = round_sizes(n, len(budgets), eta, keep)
        self.round = 0
        self.members: list[int] = []
        self.scores: dict[int, float] = {}  # results at the current round's budget
        self.dropped: set[int] = set()
        self.to_resume: list[int] = []  # winners waiting for a job, best first
        self.finished = False

    @property
    def budget(self) -> int:
        return self.budgets[self.round]

    @property
    def is_last_round(self) -> bool:
        return self.round == len(self.budgets) - 1

    def needs_trials(self) -> bool:
        return self.round == 0 and len(self.members) < self.sizes[0]

    def add(self, trial_id: int) -> None:
        if not self.needs_trials():
            raise AssertionError(f"bracket {self.index} is full")
        self.members.append(trial_id)

    def report(self, trial_id: int, score: float) -> RoundOutcome | None:
        """A member's result at the round's budget; the outcome if that completed the round."""
        if trial_id not in self.members or trial_id in self.scores:
            raise AssertionError(f"bracket {self.index}: unexpected result of trial {trial_id} in round {self.round}")
        self.scores[trial_id] = score
        return self._maybe_advance()

    def drop(self, trial_id: int) -> RoundOutcome | None:
        """A member failed for good: it no longer holds the round up and cannot win it.

        (A trial that already reported can still be dropped when its job crashed after the
        PAUSE answer; its score is withdrawn so it is never chosen to go on.)
        """
        if trial_id in self.members:
            self.scores.pop(trial_id, None)
            self.dropped.add(trial_id)
        if trial_id in self.to_resume:
            self.to_resume.remove(trial_id)
        return self._maybe_advance()

    def _maybe_advance(self) -> RoundOutcome | None:
        if self.finished or self.needs_trials():
            return None
        if any(t not in self.scores and t not in self.dropped for t in self.members):
            return None
        ranked = sorted(self.scores, key=lambda t: (-_nan_worst(self.scores[t]), t))
        if self.is_last_round or not ranked:
            self.finished = True
            return RoundOutcome()
        k = min(self.sizes[self.round + 1], len(ranked))
        outcome = RoundOutcome(winners=ranked[:k], losers=ranked[k:])
        self.round += 1
        self.members = list(outcome.winners)
        self.scores = {}
        self.dropped = set()
        self.to_resume = list(outcome.winners)
        return outcome


def _nan_worst(score: float) -> float:
    return float("-inf") if score != score else score


@dataclass
class HyperBandConfig(LadderConfig):
    """conf/scheduler/hyperband.yaml (the values and what each means)."""

    bracket_sizes: str  # algorithm (Algorithm 1) | table (Table 1)
    keep: str  # floor (paper) | ceil (Ray, Syne Tune)
    overlap_brackets: bool  # open the next bracket on idle workers (HpBandSter); False: the paper

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.bracket_sizes in BRACKET_SIZES, f"bracket_sizes={self.bracket_sizes}: allowed: {', '.join(BRACKET_SIZES)}")
        require(self.keep in KEEP, f"keep={self.keep}: allowed: {', '.join(KEEP)}")


class HyperBand(Scheduler):
    """Synchronous HyperBand; the searcher decides what to try (random here, KDE for BOHB)."""

    name = "hyperband"

    def __init__(self, cfg: HyperBandConfig, searcher: Searcher):
        super().__init__(searcher, max_epochs=cfg.max_epochs, mode=cfg.mode, max_retries=cfg.max_retries)
        self.cfg = cfg
        self.plan = hyperband_plan(cfg.min_epochs, cfg.max_epochs, cfg.eta, cfg.bracket_sizes, cfg.keep)
        self.brackets: list[SyncBracket] = []

    @property
    def milestones(self) -> list[int]:
        return sorted({r for p in self.plan for r in p.budgets if r < self.max_epochs})

    # ----- asking -------------------------------------------------------------------------
    def _next_job(self) -> Ask:
        for bracket in self.brackets:  # oldest first: finish what was started
            if bracket.to_resume:
                return self._resume(bracket, bracket.to_resume.pop(0))
        if self.brackets and self.brackets[-1].needs_trials():
            return self._start(self.brackets[-1])
        if len(self.trials) < self.cfg.n_trials and (self.cfg.overlap_brackets or all(b.finished for b in self.brackets)):
            plan = self.plan[len(self.brackets) % len(self.plan)]
            n = min(plan.sizes[0], self.cfg.n_trials - len(self.trials))
            bracket = SyncBracket(len(self.brackets), plan.s, n, plan.budgets, self.cfg.eta, self.cfg.keep)
            self.brackets.append(bracket)
            return self._start(bracket)
        return WAIT if self._has_live_trials() else FINISHED

    def _start(self, bracket: SyncBracket) -> Job:
        trial = self._new_trial(self.searcher.suggest(bracket.budget), bracket=bracket.index)
        bracket.add(trial.id)
        return Job(trial.id, trial.config, 0, bracket.budget, resume=False)

    def _resume(self, bracket: SyncBracket, trial_id: int) -> Job:
        trial = self.trials[trial_id]
        return Job(trial.id, trial.config, self._resume_start(trial, self.cfg.promotion), bracket.budget, resume=True)

    # ----- results ------------------------------------------------------------------------
    def _decide(self, trial: Trial, epoch: int, score: float) -> Decision:
        bracket = self.brackets[trial.bracket]
        if epoch < trial.until_epoch:
            return Decision.CONTINUE
        self.searcher.observe(trial.config, epoch, score)
        outcome = bracket.report(trial.id, score)
        if epoch >= self.max_epochs:
            return Decision.STOP
        lost = outcome is not None and trial.id in outcome.losers
        self._apply(outcome, reporting=trial.id)
        return Decision.STOP if lost else Decision.PAUSE

    def _on_dropped(self, trial: Trial) -> None:
        self._apply(self.brackets[trial.bracket].drop(trial.id), reporting=None)

    def _apply(self, outcome: RoundOutcome | None, reporting: int | None) -> None:
        """Stop the paused losers of a completed round (the reporting trial gets STOP itself)."""
        if outcome is None:
            return
        for t in outcome.losers:
            if t != reporting and self.trials[t].status is TrialStatus.PAUSED:
                self._stop_paused(self.trials[t])
