"""Elastic allocation: hand devices that would otherwise idle to the trials still running.

Every fixed allocation trades one loss for another: a small k trains most efficiently but
leaves the cluster idle in the search's tail (and while a synchronous rung waits), a large k
keeps the cluster busy but pays scaling losses on every epoch. The elastic policy
(``gpus_per_trial=elastic``) has both, and because it is a plug-in of the dispatch core
(`sim/dispatch.py`), the policy the simulator predicts is the policy the executor runs.

- **Start.** Every job starts at the most efficient k in [elastic.min, elastic.max]: the one
  with the highest throughput per device in the profile (`efficiency`): usually 1, or 1/m
  where m trials sharing a device get more done than one alone.
- **Grow.** At a running trial's epoch boundary (the scheduler said CONTINUE), when the
  scheduler has no work for the free devices (it answers WAIT or FINISHED and nothing waits),
  the trial may move to a larger k: checkpoint, then resume on more devices, paying the save,
  the end of the job and the start-up at the new k and the restore (`Profile.move_cost`).
  Who grows and by how much is chosen by expected gain: for every running trial, the epochs
  left until its next scheduler decision (its next rung, or its job's end) times the time
  saved per epoch at the larger k, less the cost of the move. The free devices are shared
  out greedily by gain per extra device among all running trials (those between boundaries
  included, so one trial does not take devices another would use better); the trial at its
  boundary takes its share now, the others at theirs. Nothing moves when the model predicts
  no gain.
- **No shrinking.** A grown trial keeps its devices until its job ends (its next PAUSE or STOP)
  and its next job starts at the efficient k again. Shrinking a trial when new work arrives
  would pay a second move (save, start-up, restore) to start work the scheduler only hands out
  at rung decisions — and the grown trial reaches its own decision sooner for having grown.
  New work that arrives meanwhile waits first in first out, as every job does.

The policy reads the profile only, and prices epochs and moves as the engine charges them, by
the same functions: a trial's epoch at k with its configuration factor
(`Profile.trial_epoch_time`, the sharing curve for trials at 1/m of a device) and the move
(`Profile.move_cost`: save, release(k), then resume(k') or start-up(k') and restore, with
the inter-node step where k' spans nodes). It never looks at a clock, so it decides the same
in both drivers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nasalloc.sim.cluster import ELASTIC, Allocation, ClusterSpec, allowed_allocations, exact_k, parse_allocation
from nasalloc.sim.config import required
from nasalloc.sim.errors import UserError
from nasalloc.sim.profile import Profile, TrialFactors

if TYPE_CHECKING:
    from nasalloc.sim.dispatch import Dispatcher, Segment


def survival(milestones: list[int]) -> float:
    """The share of trials a rung lets through, 1/eta, read off the rung spacing."""
    ms = sorted(milestones)
    return 1.0 / (ms[1] / ms[0] if len(ms) > 1 else 3.0)


def epochs_left(milestones: list[int], survive: float, until: int, boundary: int) -> float:
    """Epochs a trial is expected to train from `boundary` on in a job that runs to `until`:
    all of them up to its next rung, and past each further rung with the chance `survive`
    (1/eta) of surviving it (a job that ends at its next rung, as HyperBand's do, counts only
    the first part). `milestones` ascending."""
    rungs = [m for m in milestones if boundary < m < until] + [until]
    left, weight, at = 0.0, 1.0, boundary
    for m in rungs:
        left += weight * (m - at)
        weight *= survive
        at = m
    return left


def efficiency(profile: Profile, k: float) -> float:
    """Throughput per device at k relative to one trial alone on one device: speed-up(k) / k
    for k >= 1; for k = 1/m, m trials each at 1 / sharing(m) of their alone speed."""
    if k < 1:
        m = round(1 / k)
        return m / profile.epoch.sharing_slowdown(m)
    return profile.epoch_time(1) / profile.epoch_time(k) / k


def elastic_allocation(cluster: ClusterSpec, profile: Profile, low: Any, high: Any, key: str = "elastic") -> Allocation:
    """The elastic policy's allocation: it starts at the most efficient allowed k in [low, high]
    (the smallest of equally efficient ones) and may grow to every allowed k above it up to
    `high` (None: the whole cluster). UserError names the bad bound."""
    profile = profile.with_node_size(cluster.node_size)
    lo = parse_allocation(low, cluster, key=f"{key}.min").schedule[0]
    hi = exact_k(cluster.gpus) if high is None else parse_allocation(high, cluster, key=f"{key}.max").schedule[0]
    if lo > hi:
        raise UserError(f"{key}.min={low} is above {key}.max={high}; allowed: min <= max")
    ks = [exact_k(k) for k in allowed_allocations(cluster, min_k=float(lo)) if lo <= exact_k(k) <= hi]
    if lo < 1 and lo not in ks:  # 1/3 and other 1/m that the power-of-two enumeration leaves out
        ks.insert(0, lo)
    best = max(ks, key=lambda k: (round(efficiency(profile, float(k)), 12), -k))
    # growth goes to whole devices (a share growing to a larger share would still share)
    return Allocation((best,), grow=tuple(k for k in ks if k > best and k >= 1) or (best,))


def resolve_allocation(value: Any, cluster: ClusterSpec, profile: Profile | None, elastic: Any,
                       key: str = "gpus_per_trial") -> Allocation:
    """`gpus_per_trial` as an Allocation: `parse_allocation`, or for ``elastic`` the policy's
    allocation with bounds from the `elastic` settings node (min, max); it decides with the
    profile, so it needs one."""
    if not (isinstance(value, str) and value.strip() == ELASTIC):
        return parse_allocation(value, cluster, key=key)
    if profile is None:
        raise UserError(f"{key}=elastic: needs profile=NAME|PATH (the policy decides with its epoch times)")
    return elastic_allocation(cluster, profile, required(elastic, "min", "elastic."), required(elastic, "max", "elastic."))


class ElasticPolicy:
    """The growth decision of the dispatch core under ``gpus_per_trial=elastic`` (module
    docstring). `grow_to` is asked at a running trial's epoch boundary."""

    def __init__(self, allocation: Allocation, profile: Profile, milestones: list[int],
                 factors: TrialFactors | None = None):
        self.targets = [float(k) for k in allocation.grow if k > allocation.schedule[0]]
        self.profile = profile
        self.milestones = sorted(milestones)
        self.survive = survival(self.milestones)
        self.factors = factors or TrialFactors(profile)  # the engine's, so both use one factor per trial
        self._epochs: dict[tuple[int, float, int], float] = {}  # (trial, k, sharers) -> seconds per epoch
        self._moves: dict[tuple[float, float], float] = {}  # (k_from, k_to) -> seconds

    # ----- the model: the profile's (`Profile.trial_epoch_time`, `Profile.move_cost`) -------
    def epoch_time(self, seg: Segment, k: float, sharers: int = 0) -> float:
        """Seconds per epoch of `seg`'s trial at k, as the engine charges it; a share trains at
        the speed the sharing curve gives for `sharers` trials on its device (0: the device full)."""
        key = (seg.trial, float(k), sharers)
        t = self._epochs.get(key)
        if t is None:
            t = self._epochs[key] = self.profile.trial_epoch_time(float(k), self.factors(seg.trial, seg.config), sharers)
        return t

    def move_cost(self, k_from: float, k_to: float) -> float:
        """What a move from k_from to k_to adds to the trial's time (`Profile.move_cost`)."""
        key = (float(k_from), float(k_to))
        cost = self._moves.get(key)
        if cost is None:
            cost = self._moves[key] = self.profile.move_cost(*key)
        return cost

    def _epochs_left(self, seg: Segment, boundary: int) -> float:
        return epochs_left(self.milestones, self.survive, seg.until_epoch, boundary)

    # ----- the decision ---------------------------------------------------------------------
    def grow_to(self, core: Dispatcher, seg: Segment, epoch: int) -> float | None:
        """The k `seg` should move to after `epoch` (None: stay). The core has checked that the
        scheduler has no work for the free devices."""
        pool = core.pool
        idle = pool.free_units
        if idle <= 0 or not self.targets:
            return None
        planned: dict[int, float] = {}
        cands = []
        for r in core.running.values():
            if r.ending or r.k >= self.targets[-1]:
                continue
            boundary = epoch if r is seg else r.last_epoch + 1
            left = self._epochs_left(r, boundary)
            if left <= 0:
                continue
            sharers = pool.sharers(r.devices[0], r.k) if r.k < 1 else 0
            cands.append((r, left, self.epoch_time(r, r.k, sharers)))
            planned[r.trial] = r.k
        while True:
            best = None  # (gain per extra unit, gain, trial, k)
            for r, left, t_now in cands:
                k_from = planned[r.trial]
                t_from = t_now if k_from == r.k else self.epoch_time(r, k_from)
                for k in self.targets:
                    if k <= k_from:
                        continue
                    extra = pool.units(k) - pool.units(k_from)
                    if extra > idle:
                        break
                    gain = left * (t_from - self.epoch_time(r, k)) - (self.move_cost(r.k, k) if k_from == r.k else 0.0)
                    if gain > 0 and (best is None or gain / extra > best[0]):
                        best = (gain / extra, gain, r.trial, k, extra)
            if best is None:
                break
            _, _, trial, k, extra = best
            planned[trial] = k
            idle -= extra
        k = planned.get(seg.trial, seg.k)
        t_now = next((t for r, _, t in cands if r is seg), 0.0)
        left = next((n for r, n, _ in cands if r is seg), 0.0)
        while k > seg.k and pool.move_target(seg.devices, seg.k, k) is None:  # placement may be fragmented
            smaller = [x for x in self.targets if seg.k < x < k]
            k = smaller[-1] if smaller else seg.k
            if k > seg.k and left * (t_now - self.epoch_time(seg, k)) <= self.move_cost(seg.k, k):
                k = seg.k  # the smaller move that fits does not pay
        return k if k > seg.k else None


__all__ = ["ElasticPolicy", "efficiency", "elastic_allocation", "epochs_left", "resolve_allocation", "survival"]
