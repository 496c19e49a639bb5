"""Moving a trial off a shared device onto an idle one (k = 1/m), when the profile says it pays.

With k = 1/m, placement spreads trials over the devices (`cluster.DevicePool`), so a trial
starts alone whenever a device is free. But trials leave at different times: late in a search
two trials can share one device for hours while other devices idle (issue 18: two
full-budget HyperBand trials on one GPU for 8.5 h of an 8.9 h search on 64 GPUs). So at a
sharing trial's epoch boundary (the scheduler said CONTINUE), when the scheduler has no work
for the free devices, the dispatch core (`sim/dispatch.py`) may move it: checkpoint, then
resume on the device placement would give it now (the "reallocate" pause and resume of
per-rung moves). It moves when

    gain = window x (sharing(j) - sharing(j'))  >  cost = save + start-up(k) + restore
                                                    (save + resume(k) where the profile measured it)

- j: the trials holding its device now, itself included; j': those on the device it would
  move to, plus itself (1 on an idle device). The engine trains a trial at 1 / sharing(j) of
  its speed alone (the profile's sharing curve), so a second of training alone takes
  sharing(j) seconds there.
- window: the training (in seconds alone) it would still do beside a partner: its own
  expected remaining epochs, capped by the longest expected remaining epochs among the
  partners on its device (once they are gone it trains alone anyway); epochs times the
  profile's epoch time alone and each trial's configuration factor. Remaining epochs as the
  elastic policy estimates them (`elastic.epochs_left`: every epoch up to the next rung, then
  1/eta of those past each further rung), counted from the boundary each trial reaches next.
- cost: what the move adds to the moving trial's own time (decision time is paid either way).
  Its partners gain as well (one trial fewer beside them); the rule leaves that out, so a
  move always pays for the trial that makes it.
A target with as many trials as its own device (j' >= j) is no move: at k = 1/2 only an idle
device qualifies. The rule reads the profile and the pool only, never a clock, so both drivers
decide the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nasalloc.sim.elastic import epochs_left, survival
from nasalloc.sim.profile import Profile

if TYPE_CHECKING:
    from nasalloc.sim.dispatch import Dispatcher, Segment


class UnsharePolicy:
    """The move decision for trials sharing a device (module docstring); asked by the dispatch
    core at a sharing trial's epoch boundary, with the device placement would move it to."""

    def __init__(self, profile: Profile, milestones: list[int]):
        self.alone_s = profile.epoch_time(1)  # one epoch's training, in seconds alone on a device
        self.slowdown = profile.epoch.sharing_slowdown
        self.factor = profile.config_factor
        self.milestones = sorted(milestones)
        self.survive = survival(self.milestones)
        ov = profile.overheads
        if ov.resume_s is None:  # a resume costs start-up + restore
            self._restart = ov.checkpoint_save_s + ov.checkpoint_restore_s
            self._startup = profile.startup_time
        else:  # measured as such: resume(k) (sim/profile.py)
            self._restart = ov.checkpoint_save_s
            self._startup = profile.resume_time  # type: ignore[assignment]
        self._factors: dict[int, float] = {}

    def _config_factor(self, seg: Segment) -> float:
        f = self._factors.get(seg.trial)
        if f is None:
            f = self._factors[seg.trial] = self.factor(seg.config)
        return f

    def _left_s(self, seg: Segment, boundary: int) -> float:
        """Expected training still to do in this job from `boundary` on, in seconds alone."""
        left = epochs_left(self.milestones, self.survive, seg.until_epoch, boundary)
        return left * self.alone_s * self._config_factor(seg)

    def gain_and_cost(self, core: Dispatcher, seg: Segment, epoch: int, target: int) -> tuple[float, float]:
        """Seconds the move of `seg` (after `epoch`) to device `target` is expected to save the
        trial, and the seconds it costs it (module docstring)."""
        pool = core.pool
        device = seg.devices[0]
        u = pool.units(seg.k)
        j = round((pool.L - pool.dev_free[device]) / u)
        j_new = round((pool.L - pool.dev_free[target]) / u) + 1
        if j_new >= j:
            return 0.0, 0.0
        partners = max((0.0 if r.ending else self._left_s(r, r.last_epoch + 1)
                        for r in core.running.values() if r is not seg and r.k < 1 and r.devices[0] == device),
                       default=0.0)
        window = min(self._left_s(seg, epoch), partners)
        gain = window * (self.slowdown(j) - self.slowdown(j_new))
        return gain, self._restart + self._startup(seg.k)

    def pays(self, core: Dispatcher, seg: Segment, epoch: int, target: int) -> bool:
        gain, cost = self.gain_and_cost(core, seg, epoch, target)
        return gain > cost


__all__ = ["UnsharePolicy"]
