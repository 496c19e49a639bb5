"""Which device slots a trial gets: the executor's bookkeeping of one machine's devices.

A device is a GPU (by CUDA index) or a CPU "slot" (a share of the machine's cores, run with
gloo). An allocation of k devices per trial is either

- an integer k >= 1: the trial gets k whole devices, one rank per device; or
- 1/m for an integer m >= 2 (0.5, 0.25, ...): m trials share one device, one rank each.

A per-rung schedule ``[1, 2]`` gives a different k per rung (see `rung_index`). The pool
never oversubscribes a device: the shares held on it add up to at most 1. Each device has
`slots_per_device` worker slots (m for the smallest share in the schedule), so a sharing
trial runs in its own warm worker process beside the others on that device.

This module only validates single-machine allocations; `sim/cluster.py` (the simulator's
cluster model) owns the multi-node rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nasalloc.sim.cluster import ClusterSpec, parse_allocation, spreads_fractions
from nasalloc.sim.errors import UserError


@dataclass(frozen=True, order=True)
class Slot:
    """One warm worker's place: device id (GPU index / CPU slot) and share index on it."""

    device: int
    share: int = 0


def parse_share(value: Any, n_devices: int, key: str = "gpus_per_trial") -> Fraction:
    """One allocation entry -> an exact fraction; UserError names the key and what is allowed.

    The rules are the simulator's (`sim.cluster`) for one node of `n_devices`, so what
    `nasalloc simulate` accepts for a machine, `nasalloc run` accepts too ("1/4" included).
    """
    try:
        x = float(Fraction(str(value).strip())) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        x = None
    if x is not None and x > n_devices:
        raise UserError(f"{key}={value!r}: more devices per trial than the {n_devices} present")
    machine = ClusterSpec(name="this machine", gpus=n_devices, gpus_per_node=n_devices)
    (k,) = parse_allocation(value, machine, key=key).schedule
    return Fraction(int(k)) if k >= 1 else Fraction(1, round(1 / k))


@dataclass(frozen=True)
class Allocation:
    """Devices per trial, constant or one entry per rung (the last entry covers later rungs)."""

    shares: tuple[Fraction, ...]

    @classmethod
    def parse(cls, value: Any, n_devices: int, key: str = "gpus_per_trial") -> Allocation:
        if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
            items = list(value)
            if not items:
                raise UserError(f"{key}=[]: give at least one entry")
            return cls(tuple(parse_share(v, n_devices, f"{key}[{i}]") for i, v in enumerate(items)))
        return cls((parse_share(value, n_devices, key),))

    @property
    def per_rung(self) -> bool:
        return len(self.shares) > 1

    def for_rung(self, rung: int) -> Fraction:
        return self.shares[min(rung, len(self.shares) - 1)]

    @property
    def spreads_fractions(self) -> bool:
        """Placement of k < 1 (`sim.cluster.spreads_fractions`, the simulator's rule)."""
        return spreads_fractions(float(s) for s in self.shares)

    @property
    def slots_per_device(self) -> int:
        """Worker slots each device needs: m for the smallest share 1/m, else 1."""
        return max((s.denominator for s in self.shares if s < 1), default=1)

    def describe(self) -> Any:
        """JSON-friendly form for summary.json (a number or a list of numbers)."""
        vals = [int(s) if s >= 1 else float(s) for s in self.shares]
        return vals[0] if len(vals) == 1 else vals


class DevicePool:
    """Free/held bookkeeping of device shares; acquisition is all-or-nothing."""

    def __init__(self, device_ids: list[int], slots_per_device: int = 1, spread: bool = True):
        if not device_ids:
            raise ValueError("a device pool needs at least one device")
        self.spread = spread  # k < 1: least-loaded device (True) or best fit (sim.cluster.spreads_fractions)
        self.device_ids = list(device_ids)
        self.slots_per_device = int(slots_per_device)
        self._load: dict[int, Fraction] = {d: Fraction(0) for d in self.device_ids}
        self._free_slots: dict[int, set[int]] = {d: set(range(self.slots_per_device)) for d in self.device_ids}
        self._held: dict[tuple[Slot, ...], Fraction] = {}

    def all_slots(self) -> list[Slot]:
        return [Slot(d, s) for d in self.device_ids for s in range(self.slots_per_device)]

    def can_acquire(self, share: Fraction) -> bool:
        return self._choose(share) is not None

    def _choose(self, share: Fraction) -> list[Slot] | None:
        if share >= 1:
            free = [d for d in self.device_ids if self._load[d] == 0 and 0 in self._free_slots[d]]
            return [Slot(d, 0) for d in free[: int(share)]] if len(free) >= share else None
        # The simulator's placement rule (sim/cluster.py): spread sharing trials over the
        # least-loaded device, or best fit (most loaded that still has room) when the
        # schedule also has whole-device rungs; lowest id on ties.
        fits = [d for d in self.device_ids if self._load[d] + share <= 1 and self._free_slots[d]]
        if not fits:
            return None
        d = min(fits, key=lambda x: (self._load[x] if self.spread else -self._load[x], x))
        return [Slot(d, min(self._free_slots[d]))]

    def acquire(self, share: Fraction) -> list[Slot] | None:
        """Hold `share` (k devices or 1/m of one); None (and nothing held) if it does not fit."""
        slots = self._choose(share)
        if slots is None:
            return None
        per_device = Fraction(1) if share >= 1 else share
        for s in slots:
            self._load[s.device] += per_device
            self._free_slots[s.device].discard(s.share)
        self._held[tuple(slots)] = per_device
        return slots

    def release(self, slots: list[Slot]) -> None:
        per_device = self._held.pop(tuple(slots))
        for s in slots:
            self._load[s.device] -= per_device
            self._free_slots[s.device].add(s.share)

    @property
    def busy_devices(self) -> int:
        return sum(1 for d in self.device_ids if self._load[d] > 0)

    @property
    def idle(self) -> bool:
        return not self._held
