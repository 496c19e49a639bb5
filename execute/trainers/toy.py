"""A training function without learning: a known curve, a fixed epoch time, and faults on demand.

The metric after epoch e is ``curve(quality, e) = quality * (1 - exp(-e / 3))`` (``quality``
from the search space), so tests can check the scheduler's decisions against a known curve.
The metric is not recomputed from the epoch, though: each epoch adds its increment
``curve(e) - curve(e - 1)`` to a running value that lives in the checkpoint, as a model's
weights do. A trial resumed from the right checkpoint reports the curve; one whose
checkpoint was lost (loaded as None) or belongs to another epoch starts from the wrong
value, and every later metric of it is off the curve by what it missed
(curve(start) for a lost one), so a test comparing metrics with the curve proves the
checkpoints were used.
Every epoch all-reduces a tensor across ranks, so multi-rank groups exercise gloo/nccl.

Fault knobs: ``faults``, a list of ``{trial, epoch, rank, mode, once}`` (default: none):
    mode: exit (the rank process dies) | raise (train() raises) | hang (stops mid-epoch
          without reporting) | silent (same, named for "never reports": use epoch 1)
          | exit_in_save, hang_in_save (rank 0 dies or hangs while building the
          checkpoint of that epoch, after its report: only when the executor asks for a
          save, so no checkpoint of that epoch is written)
    trial: which trial (-1: every trial); epoch: at which epoch (1..); rank: which rank (0)
    once: true (default): only the first attempt faults (a marker file in the trial's
          checkpoint folder remembers), so the retry succeeds; the marker is written just
          before the fault, so a test can wait for it to know the fault is happening
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from nasalloc.execute.api import Decision, TrainingContext


def curve(quality: float, epoch: int) -> float:
    return float(quality) * (1.0 - math.exp(-epoch / 3.0))


SAVE_MODES = ("exit_in_save", "hang_in_save")


def profile_data(gpus_per_node: int, epoch_low: float, epoch_high: float, steps: int,
                 sharing: float = 1.0) -> dict[str, Any]:
    """This trainer's exact timing as a profile (for tests and benchmarks that compare the
    simulator with real runs): a trial's epoch takes its config's `epoch_s` (log-uniform in
    [epoch_low, epoch_high]) at k = 1 and epoch_s / k at k > 1 with ``scaling: strong``, and
    nothing else costs time (no start-up, checkpoint or decision cost); `sharing` is what the
    profile claims two trials on one device pay (the sleeping trainer itself pays nothing)."""
    return {
        "name": "toy_sleep",
        "workload": {"samples_per_epoch": steps * 8, "batch_per_device": 8, "scaling": "strong", "global_batch": 8},
        "step_time": {"t_compute_s": epoch_low / steps},
        "overheads": {"startup_s": 0.0, "eval_s": 0.0, "checkpoint_save_s": 0.0, "checkpoint_restore_s": 0.0,
                      "decision_latency_s": 0.0},
        "hardware": {"gpus_per_node": gpus_per_node},
        "sharing": {1: 1.0, 2: sharing},
        "config_cost": {"params": {"epoch_s": {"type": "float", "low": epoch_low, "high": epoch_high, "log": True,
                                               "slope": math.log(epoch_high / epoch_low), "center": 0.0}},
                        "norm": 1.0},
    }


def _maybe_fault(config: dict[str, Any], ctx: TrainingContext, epoch: int, saving: bool = False) -> None:
    """Fire the faults set for this trial, rank and epoch: those of a save when `saving`."""
    for i, f in enumerate(config.get("faults") or []):
        if int(f.get("epoch", 1)) != epoch or int(f.get("rank", 0)) != ctx.rank:
            continue
        if (f.get("mode", "exit") in SAVE_MODES) != saving:
            continue
        if int(f.get("trial", -1)) not in (-1, ctx.trial):
            continue
        marker = ctx.checkpoint_dir / f"faulted_{i}_rank{ctx.rank}"
        if f.get("once", True):
            if marker.exists():
                continue
            ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            marker.touch()
        mode = f.get("mode", "exit")
        if mode in ("exit", "exit_in_save"):
            os._exit(17)
        if mode == "raise":
            raise RuntimeError(f"injected fault at epoch {epoch}")
        while True:  # hang / silent / hang_in_save: never report (or save) again
            time.sleep(1)


def _state(config: dict[str, Any], ctx: TrainingContext, epoch: int, value: float) -> dict[str, Any]:
    """The checkpoint of `epoch`, built only when the executor saves one (and where the
    save faults fire)."""
    _maybe_fault(config, ctx, epoch, saving=True)
    return {"value": value, "epoch": epoch}


def train(config: dict[str, Any], ctx: TrainingContext) -> None:
    import torch
    import torch.distributed as dist

    epoch_s = float(config.get("epoch_s", 0.0))
    steps = max(1, int(config.get("steps_per_epoch", 4)))
    state = ctx.load_checkpoint()
    value = float(state["value"]) if state is not None else 0.0
    if state is not None and int(state["epoch"]) != ctx.start_epoch:
        raise RuntimeError(f"checkpoint holds epoch {state['epoch']}, expected {ctx.start_epoch}")
    for epoch in range(ctx.start_epoch + 1, ctx.until_epoch + 1):
        for _ in range(steps):
            if epoch_s > 0:
                time.sleep(epoch_s / steps / ctx.world_size if config.get("scaling") == "strong" else epoch_s / steps)
            ctx.step()
        _maybe_fault(config, ctx, epoch)
        t = torch.ones(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        assert int(t.item()) == ctx.world_size
        value += curve(config["quality"], epoch) - curve(config["quality"], epoch - 1)
        decision = ctx.report(epoch, value, state=lambda e=epoch, v=value: _state(config, ctx, e, v),
                              test_metric=value / 2, world=int(t.item()))
        if decision is not Decision.CONTINUE:
            return
