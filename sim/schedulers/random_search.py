"""Random search without early stopping: every trial trains to max_epochs.

The baseline that shows what early stopping buys; also the simplest case for closed-form
makespan checks in the simulator's tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasalloc.sim.config import require
from nasalloc.sim.schedulers.base import FINISHED, WAIT, Ask, Decision, Job, Scheduler, Searcher, Trial


@dataclass
class RandomConfig:
    name: str = "random"
    n_trials: int = 32
    max_epochs: int = 27
    mode: str = "max"
    max_retries: int = 1
    promotion: str = "continue"  # no promotions here; kept so every scheduler config has it

    def __post_init__(self) -> None:
        require(self.n_trials >= 1, f"n_trials={self.n_trials}: must be >= 1")
        require(self.max_epochs >= 1, f"max_epochs={self.max_epochs}: must be >= 1")
        require(self.mode in ("max", "min"), f"mode={self.mode}: allowed: max, min")
        require(self.max_retries >= 0, f"max_retries={self.max_retries}: must be >= 0")
        require(self.promotion in ("continue", "rerun"), f"promotion={self.promotion}: allowed: continue, rerun")


class RandomSearch(Scheduler):
    name = "random"

    def __init__(self, cfg: RandomConfig, searcher: Searcher):
        super().__init__(searcher, max_epochs=cfg.max_epochs, mode=cfg.mode, max_retries=cfg.max_retries)
        self.cfg = cfg

    def _next_job(self) -> Ask:
        if len(self.trials) < self.cfg.n_trials:
            trial = self._new_trial(self.searcher.suggest(self.max_epochs))
            return Job(trial.id, trial.config, 0, self.max_epochs, resume=False)
        return WAIT if self._has_live_trials() else FINISHED

    def _decide(self, trial: Trial, epoch: int, score: float) -> Decision:
        return Decision.STOP if epoch >= self.max_epochs else Decision.CONTINUE
