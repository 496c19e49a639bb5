"""The training API: what a user's training function sees, and the only thing it must call.

A training function is ``train(config: dict, ctx: TrainingContext) -> None`` named as
``"module:function"`` (a module in the folder `nasalloc` runs in imports too). The executor
runs it on every rank of a trial's process group (the group is already initialised: gloo on
CPU slots, nccl on GPUs, torchrun's environment variables set, so existing DDP code works
unchanged). A job trains epochs ``start_epoch + 1`` to ``until_epoch``, where the scheduler
decides next. This example is also the README's (tests/test_user_guide.py keeps them one)::

    from nasalloc.execute.api import Decision, TrainingContext


    def train(config: dict, ctx: TrainingContext) -> None:
        model = build(config).to(ctx.device)            # config: a sample of train.space, plus train.params
        opt = make_optimizer(model, config)
        if (state := ctx.load_checkpoint()) is not None:  # what was saved at ctx.start_epoch (None at 0)
            model.load_state_dict(state["model"]); opt.load_state_dict(state["opt"])
        net = DDP(model) if ctx.world_size > 1 else model  # the process group is already initialised
        for epoch in range(ctx.start_epoch + 1, ctx.until_epoch + 1):  # this job's epochs
            for batch in shard(data, ctx.rank, ctx.world_size):
                opt.zero_grad(); loss_fn(net, batch).backward(); opt.step()
                ctx.step()                              # once per optimizer step (calibration times these)
            decision = ctx.report(epoch, val_acc, state=lambda: {"model": model.state_dict(), "opt": opt.state_dict()},
                                  test_metric=test_acc)
            if decision is not Decision.CONTINUE:       # PAUSE (checkpointed, resumed later) or STOP
                return

`report` is a collective in effect: every rank calls it once per epoch and gets the same
answer, decided by the scheduler from rank 0's metric. Rank 0's `state` is written as the
trial's checkpoint whenever the answer is PAUSE (so the trial can resume later, possibly on a
different number of devices) and every `checkpoint_every` epochs otherwise (so a failed trial
retries from there). Passing a callable defers building the state dict to when it is needed.

Calibration drives the same API: `step` lets it time optimizer steps, and it may end a run
early by raising `StopTraining` from there; the worker treats that as a normal end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from nasalloc.sim.schedulers.base import Decision

__all__ = ["Decision", "StopTraining", "TrainingContext", "TrainFn", "checkpoint_path", "latest_checkpoint"]

TrainFn = Callable[[dict[str, Any], "TrainingContext"], None]


class StopTraining(Exception):
    """Raised (by the executor or calibration, from `step`/`report`) to end training normally."""


class _Link(Protocol):
    """How a context talks to whoever drives it (the worker's connection to the executor)."""

    def report(self, epoch: int, metric: float | None, extra: dict[str, Any]) -> tuple[Decision, bool]: ...

    def checkpointed(self, epoch: int) -> None: ...


def checkpoint_path(checkpoint_dir: Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"epoch_{epoch:05d}.pt"


def latest_checkpoint(checkpoint_dir: Path, at_most: int | None = None) -> int:
    """Highest epoch with a complete checkpoint file (<= at_most), 0 if none."""
    best = 0
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return 0
    for p in d.glob("epoch_*.pt"):
        try:
            e = int(p.stem.split("_", 1)[1])
        except ValueError:
            continue
        if (at_most is None or e <= at_most) and e > best:
            best = e
    return best


class TrainingContext:
    """One rank's view of the job it runs: who it is, where to resume, how to report."""

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        local_rank: int,
        device: Any,
        trial: int,
        config: dict[str, Any],
        start_epoch: int,
        until_epoch: int,
        checkpoint_dir: Path,
        link: _Link,
        checkpoint_every: int = 1,
        record_steps: bool = False,
        max_steps: int | None = None,
    ):
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.device = device
        self.trial = trial
        self.config = config
        self.start_epoch = start_epoch
        self.until_epoch = until_epoch
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_every = checkpoint_every
        self._link = link
        self._record = record_steps
        self._max_steps = max_steps
        self.step_times: list[float] = []  # perf_counter() at each step (when recording)
        self.steps = 0
        self.last_decision: Decision | None = None

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state saved at `start_epoch` (loaded with weights_only=True), or None at 0."""
        if self.start_epoch <= 0:
            return None
        path = checkpoint_path(self.checkpoint_dir, self.start_epoch)
        if not path.is_file():
            return None
        import torch

        return torch.load(path, map_location="cpu", weights_only=True)

    def report(self, epoch: int, metric: float, state: dict | Callable[[], dict] | None = None, **extra: Any) -> Decision:
        """Tell the scheduler `metric` after `epoch` epochs; every rank gets the same decision."""
        decision, save = self._link.report(epoch, float(metric) if self.rank == 0 else None, extra if self.rank == 0 else {})
        self.last_decision = decision
        if save and self.rank == 0 and state is not None:
            self._save(epoch, state() if callable(state) else state)
            self._link.checkpointed(epoch)
        return decision

    def step(self) -> None:
        """Call once per optimizer step (cheap); calibration times steps and may stop here."""
        self.steps += 1
        if self._record:
            self.step_times.append(time.perf_counter())
        if self._max_steps is not None and self.steps >= self._max_steps:
            raise StopTraining(f"reached max_steps={self._max_steps}")

    def _save(self, epoch: int, state: dict[str, Any]) -> None:
        """Atomic write (temp + rename); older checkpoints of this trial are removed after."""
        import torch

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        final = checkpoint_path(self.checkpoint_dir, epoch)
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        torch.save(state, tmp)
        os.replace(tmp, final)
        for p in self.checkpoint_dir.glob("epoch_*.pt"):
            if p != final:
                try:
                    if int(p.stem.split("_", 1)[1]) < epoch:
                        p.unlink()
                except (ValueError, OSError):
                    pass
