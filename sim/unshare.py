"""Moving a trial off a shared device onto an idle one (k = 1/m), when the profile says it pays.

With k = 1/m, placement spreads trials over the devices (`cluster.DevicePool`), so a trial
starts alone whenever a device is free. But trials leave at different times: late in a search
two trials can share one device for hours while other devices idle (seen in a search: two
full-budget HyperBand trials on one GPU for 8.5 h of an 8.9 h search on 64 GPUs). So at a
sharing trial's epoch boundary (the scheduler said CONTINUE), when the scheduler has no work
for the free devices, the dispatch core (`sim/dispatch.py`) may move it: checkpoint, then
resume on the device placement would give it now (the "reallocate" pause and resume of
per-rung moves). It moves when

    gain = window x (sharing(j) - sharing(j'))  >  cost = save + release(k) + start-up(k) + restore
                                                    (resume(k) in place of the last two where the
                                                    profile measured it: `Profile.move_cost`)

- j: the trials holding its device now, itself included; j': those on the device it would
  move to, plus itself (1 on an idle device). The engine trains a trial at 1 / sharing(j) of
  its speed alone (the profile's sharing curve), so a second of training alone takes
  sharing(j) seconds there.
- window: the training (in seconds alone) it would still do beside a partner: its own
  expected remaining epochs, capped by the longest expected remaining epochs among the
  partners on its device (once they are gone it trains alone anyway); epochs times the
  trial's epoch alone on a device (`Profile.trial_epoch_time`, with the engine's factor).
  Remaining epochs as the elastic policy estimates them (`elastic.epochs_left`: every epoch
  up to the next rung, then 1/eta of those past each further rung), counted from the
  boundary each trial reaches next.
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
from nasalloc.sim.profile import Profile, TrialFactors

if TYPE_CHECKING:
    from nasalloc.sim.dispatch import Dispatcher, Segment


class UnsharePolicy:
    """The move decision for trials sharing a device (module docstring); asked by the dispatch
    core at a sharing trial's epoch boundary, with the device placement would move it to."""

    def __init__(self, profile: Profile, milestones: list[int], factors: TrialFactors | None = None):
        self.profile = profile
        self.slowdown = profile.epoch.sharing_slowdown
        self.milestones = sorted(milestones)
        self.survive = survival(self.milestones)
        self.factors = factors or TrialFactors(profile)  # the engine's, so both use one factor per trial

    def epoch_time(self, seg: Segment, sharers: int) -> float:
        """Seconds per epoch of `seg`'s trial with `sharers` trials on its device, as the engine
        charges it (`Profile.trial_epoch_time`)."""
        return self.profile.trial_epoch_time(float(seg.k), self.factors(seg.trial, seg.config), sharers)

    def move_cost(self, seg: Segment) -> float:
        """What the move adds to `seg`'s time: its job at k ends and resumes at k elsewhere
        (`Profile.move_cost`)."""
        return self.profile.move_cost(float(seg.k), float(seg.k))

    def _left_s(self, seg: Segment, boundary: int) -> float:
        """Expected training still to do in this job from `boundary` on, in seconds alone."""
        left = epochs_left(self.milestones, self.survive, seg.until_epoch, boundary)
        return left * self.epoch_time(seg, 1)

    def gain_and_cost(self, core: Dispatcher, seg: Segment, epoch: int, target: int) -> tuple[float, float]:
        """Seconds the move of `seg` (after `epoch`) to device `target` is expected to save the
        trial, and the seconds it costs it (module docstring)."""
        pool = core.pool
        device = seg.devices[0]
        j = pool.sharers(device, seg.k)
        j_new = pool.sharers(target, seg.k, joining=True)
        if j_new >= j:
            return 0.0, 0.0
        partners = max((0.0 if r.ending else self._left_s(r, r.last_epoch + 1)
                        for r in core.running.values() if r is not seg and r.k < 1 and r.devices[0] == device),
                       default=0.0)
        window = min(self._left_s(seg, epoch), partners)
        gain = window * (self.slowdown(j) - self.slowdown(j_new))
        return gain, self.move_cost(seg)

    def pays(self, core: Dispatcher, seg: Segment, epoch: int, target: int) -> bool:
        gain, cost = self.gain_and_cost(core, seg, epoch, target)
        return gain > cost


__all__ = ["UnsharePolicy"]
