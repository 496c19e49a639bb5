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


def cuda_visible_device(device: int, inherited: str | None) -> str:
    """The CUDA_VISIBLE_DEVICES value for the worker of GPU `device` (an index, as in `devices.ids`).

    Each worker sees only its own GPU, so that inside it the GPU is always ``cuda:0``. The
    index counts GPUs visible to nasalloc, which are all of them unless the user or Slurm set
    CUDA_VISIBLE_DEVICES already: then `device` picks an entry of that list (an index, a UUID
    or a MIG id, passed on as written), so `devices.ids=[0]` under ``CUDA_VISIBLE_DEVICES=2,3``
    means physical GPU 2 and never a GPU the job was not given.
    """
    if inherited is None:
        return str(device)
    visible = [v.strip() for v in inherited.split(",") if v.strip()]
    if not 0 <= device < len(visible):
        raise ValueError(f"GPU {device}: CUDA_VISIBLE_DEVICES={inherited!r} makes {len(visible)} visible "
                         f"(allowed ids: 0..{len(visible) - 1})")
    return visible[device]


def rank_threads(configured: int | None, n_devices: int, cores: int) -> int:
    """Torch (and OpenMP) threads of one rank: `configured` if set, else cores / devices.

    One rule for CPU slots and GPUs, in calibration and in `nasalloc run` alike, so a step
    timed by calibration runs with the threads it later runs with. The count depends on the
    devices, not on how many trials share one: trials sharing a device share its cores
    (they take turns on the device), and a k = 1/4 run must not give its ranks a quarter of
    the threads that calibration's k = 1 measurement had.
    """
    return int(configured) if configured else max(1, cores // max(1, n_devices))


def device_name(kind: str, device: int = 0) -> str | None:
    """One device as a profile's provenance names it: the GPU's name, or "CPU slot (<CPU model>)";
    None for a GPU this machine cannot see (a run validated elsewhere)."""
    from nasalloc.sim.provenance import cpu_model

    if kind != "cuda":
        return f"CPU slot ({cpu_model()})"
    import torch

    if not torch.cuda.is_available() or device >= torch.cuda.device_count():
        return None
    return str(torch.cuda.get_device_name(device))
