"""Worker slots: which warm worker process runs each rank of a placed trial.

A device is a GPU (by CUDA index) or a CPU "slot" (a share of the machine's cores, run with
gloo). Which devices a trial gets is not decided here: the dispatch core places it
(`sim/dispatch.py` with `sim/cluster.DevicePool`, the executor's devices being a one-node
cluster). Each device has `slots_per_device` warm workers (m for the smallest share 1/m in
the allocation, else 1), so a trial sharing a device runs in its own process beside the
others; this module only picks a free one on each placed device.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Slot:
    """One warm worker's place: device id (GPU index / CPU slot) and share index on it."""

    device: int
    share: int = 0


class SlotMap:
    """Free worker slots per device; `take` for a placement, `give_back` when it ends."""

    def __init__(self, device_ids: list[int], slots_per_device: int = 1):
        if not device_ids:
            raise ValueError("a device pool needs at least one device")
        self.device_ids = list(device_ids)
        self.slots_per_device = int(slots_per_device)
        self._free: dict[int, set[int]] = {d: set(range(self.slots_per_device)) for d in self.device_ids}

    def all_slots(self) -> list[Slot]:
        return [Slot(d, s) for d in self.device_ids for s in range(self.slots_per_device)]

    def take(self, devices: tuple[int, ...] | list[int]) -> list[Slot]:
        """One free worker on each of `devices` (device ids), lowest share index first."""
        slots = []
        for d in devices:
            free = self._free[d]
            if not free:
                raise RuntimeError(f"device {d} has no free worker slot (placement and slots disagree)")
            share = min(free)
            free.discard(share)
            slots.append(Slot(d, share))
        return slots

    def give_back(self, slots: list[Slot]) -> None:
        for s in slots:
            self._free[s.device].add(s.share)
