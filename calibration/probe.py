"""The calibration's wrapper around a user's training function: what the launcher runs.

The executor's `Launcher` records each rank's `ctx.step()` timestamps; calibration needs a
few more facts that only the rank itself sees, so it runs `nasalloc.calibration.probe:train`,
which calls the user's function with a thin proxy of the real `TrainingContext`:

- `step()`: on a GPU, `torch.cuda.synchronize` first, so the timestamp marks the end of the
  step's kernels and not of their launch (CUDA is asynchronous); then the real `step()`,
  which records the timestamp and raises `StopTraining` at the launcher's `max_steps`.
- `step()` with ``until_report_after=N`` (the time-boxed fresh jobs): once the job has made
  N steps and reported at least once, the next step ends it (`StopTraining`), so a job whose
  time box ends inside its first epoch still measures one epoch boundary (evaluation, start-up,
  the step after the report) instead of ending without any; the launcher's `max_steps`
  stays the hard cap.
- `report()`: evaluation time = from the epoch's last step to `report` (the training function
  evaluates in between); on rank 0, for the first `checkpoints` epochs, the checkpoint
  `state` is built and written with `torch.save` (the executor's save) and read back as a
  resumed trial reads it: `torch.load` to the CPU, then every tensor copied to the rank's
  device, which is what the model's and optimizer's `load_state_dict` do (timed, synchronised
  on a GPU), then deleted. The figures travel to the launcher as the
  report's extra values (keys starting with `probe_`), with the step count at the report
  so the step interval that spans evaluation is left out of the step-time samples.
- gradient bytes: while the user's function runs, `DistributedDataParallel.__init__` is
  wrapped to sum the bytes of the trainable parameters it will all-reduce (M in the
  step-time model); rank 0 writes it to `probe_facts.json` in the run's checkpoint folder.
  Workloads that do not use DDP leave it unknown.

Nothing here changes what the training function computes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ENTRYPOINT = "nasalloc.calibration.probe:train"
OPTIONS_KEY = "_calibration_probe"  # config key carrying the wrapped entrypoint and options


def wrap_config(entrypoint: str, config: dict[str, Any], *, checkpoints: int,
                until_report_after: int | None = None) -> dict[str, Any]:
    """The config to launch `ENTRYPOINT` with, so that it runs `entrypoint` with `config`
    (`until_report_after`: see `step()` in the module docstring)."""
    options: dict[str, Any] = {"entrypoint": entrypoint, "checkpoints": int(checkpoints)}
    if until_report_after is not None:
        options["until_report_after"] = int(until_report_after)
    return {**config, OPTIONS_KEY: options}


class _ProbeContext:
    """Delegates to the real TrainingContext; adds synchronisation and timing (see module doc)."""

    def __init__(self, ctx: Any, config: dict[str, Any], checkpoints: int, grad_bytes: Callable[[], float],
                 until_report_after: int | None = None):
        self._ctx = ctx
        self._until_report_after = until_report_after
        self._reported = False
        self.config = config
        self._checkpoints_left = checkpoints if ctx.rank == 0 else 0
        self._grad_bytes = grad_bytes
        self._cuda = getattr(ctx.device, "type", "cpu") == "cuda"
        self._last_step: float | None = None

    def __getattr__(self, name: str) -> Any:  # rank, world_size, device, trial, start_epoch, ...
        return getattr(self._ctx, name)

    def _sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize(self._ctx.device)

    def step(self) -> None:
        self._sync()
        self._last_step = time.perf_counter()
        self._ctx.step()  # records the stamp; StopTraining at the launcher's max_steps
        if self._until_report_after is not None and self._reported and self._ctx.steps >= self._until_report_after:
            from nasalloc.execute.api import StopTraining

            raise StopTraining(f"time box of {self._until_report_after} steps done and an epoch ended")

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self._ctx.load_checkpoint()

    def report(self, epoch: int, metric: float, state: Any = None, **extra: Any) -> Any:
        self._sync()
        now = time.perf_counter()
        probe: dict[str, float] = {"probe_steps": float(self._ctx.steps)}
        if self._last_step is not None:
            probe["probe_eval_s"] = now - self._last_step
        if self._checkpoints_left > 0 and state is not None:
            self._checkpoints_left -= 1
            probe.update(_time_checkpoint(state, Path(self._ctx.checkpoint_dir), self._ctx.device))
        bytes_ = self._grad_bytes()
        if bytes_ > 0:
            probe["probe_grad_bytes"] = bytes_
        self._reported = True
        return self._ctx.report(epoch, metric, state=state, **extra, **probe)


def _time_checkpoint(state: Any, folder: Path, device: Any) -> dict[str, float]:
    """Build the state and torch.save it; restore it as a resumed trial does; seconds each.

    A resumed trial loads its checkpoint to the CPU (`TrainingContext.load_checkpoint`) and
    `load_state_dict` copies every tensor onto the model's device; on a GPU that copy is a
    good part of the restore, so it is timed here too (copies to `device`, then a sync), on
    fresh tensors, leaving the training state itself untouched.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"probe_{os.getpid()}.pt"
    t0 = time.perf_counter()
    torch.save(state() if callable(state) else state, path)
    t1 = time.perf_counter()
    on_device = _to_device(torch.load(path, map_location="cpu", weights_only=True), device)
    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)
    t2 = time.perf_counter()
    del on_device
    size = path.stat().st_size
    path.unlink(missing_ok=True)
    return {"probe_checkpoint_save_s": t1 - t0, "probe_checkpoint_restore_s": t2 - t1, "probe_checkpoint_bytes": float(size)}


def _to_device(obj: Any, device: Any) -> Any:
    """`obj` (a loaded state: nested dicts, lists, tuples) with every tensor copied to `device`."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


FACTS_FILE = "probe_facts.json"  # in the run's checkpoint_dir: facts known before any report


def read_facts(checkpoint_dir: Path) -> dict[str, float]:
    """What rank 0 wrote to FACTS_FILE during a run ({} if nothing)."""
    try:
        return {k: float(v) for k, v in json.loads((Path(checkpoint_dir) / FACTS_FILE).read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return {}


@contextlib.contextmanager
def _count_ddp_bytes(ctx: Any) -> Iterator[Callable[[], float]]:
    """Sum trainable-parameter bytes of every DDP model created inside the block.

    Rank 0 also writes the sum to FACTS_FILE at once, so it is known even when the run ends
    (at the launcher's max_steps) before any epoch ends and reports.
    """
    from torch.nn.parallel import DistributedDataParallel

    total = [0.0]
    original = DistributedDataParallel.__init__

    def counting_init(self: Any, module: Any, *args: Any, **kwargs: Any) -> None:
        total[0] += float(sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad))
        if ctx.rank == 0:
            folder = Path(ctx.checkpoint_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / FACTS_FILE).write_text(json.dumps({"grad_bytes": total[0]}))
        original(self, module, *args, **kwargs)

    DistributedDataParallel.__init__ = counting_init  # type: ignore[method-assign]
    try:
        yield lambda: total[0]
    finally:
        DistributedDataParallel.__init__ = original  # type: ignore[method-assign]


def train(config: dict[str, Any], ctx: Any) -> None:
    """Run the wrapped entrypoint named in `config[OPTIONS_KEY]` with the probe context."""
    from nasalloc.execute.worker import resolve_entrypoint

    options = dict(config[OPTIONS_KEY])
    user_config = {k: v for k, v in config.items() if k != OPTIONS_KEY}
    fn = resolve_entrypoint(options["entrypoint"])
    with _count_ddp_bytes(ctx) as grad_bytes:
        until = options.get("until_report_after")
        fn(user_config, _ProbeContext(ctx, user_config, int(options["checkpoints"]), grad_bytes,
                                      None if until is None else int(until)))
