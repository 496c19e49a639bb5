"""Random search without early stopping: every trial trains to max_epochs.

The baseline that shows what early stopping buys; also the simplest case for closed-form
makespan checks in the simulator's tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from nasalloc.sim.schedulers.base import FINISHED, WAIT, Ask, Decision, Job, Scheduler, SchedulerConfig, Searcher, Trial


@dataclass
class RandomConfig(SchedulerConfig):
    """conf/scheduler/random.yaml: the settings every scheduler has, nothing more."""


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
