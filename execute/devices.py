"""Worker slots: which warm worker process runs each rank of a placed trial.

A device is a GPU (by CUDA index) or a CPU "slot" (a share of the machine's cores, run with
gloo). Which devices a trial gets is not decided here: the dispatch core places it
(`sim/dispatch.py` with `sim/cluster.DevicePool`, the executor's devices being a one-node
cluster). Each device has `slots_per_device` warm workers (m for the smallest share 1/m in
the allocation, else 1), so a trial sharing a device runs in its own process beside the
others; this module only picks a free one on each placed device.
"""

from __future__ import annotations

import os
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


# A warm worker is a whole torch process with its own thread pool; past a few per core they
# only take turns on the cores (and `nasalloc run devices.count=999` on 2 cores started
# hundreds of them and hung for minutes). 4 per core admits k = 1/4 on one slot per core.
MAX_WORKERS_PER_CORE = 4


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def process_rss_bytes() -> int:
    """This process's resident memory: the executor, once it has imported the training
    function, is what one warm worker is (Python + torch + that function's imports)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak, in KiB on Linux


def available_memory_bytes() -> int:
    """Memory available for new processes (MemAvailable: free plus reclaimable caches)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_capacity(what: str, kind: str, n_devices: int, slots_per_device: int, *, cores: int, worker_bytes: int,
                   available_bytes: int) -> None:
    """UserError (one line naming the limit) if this machine cannot hold the warm workers:
    n_devices x slots_per_device processes. CPU slots: at most `MAX_WORKERS_PER_CORE` per
    core. Any kind: their memory at `worker_bytes` each within `available_bytes`. `what`
    names the setting in the message (e.g. ``devices.count=999``)."""
    from nasalloc.sim.errors import UserError

    workers = n_devices * slots_per_device
    shared = f" ({n_devices} devices x {slots_per_device} trials sharing each)" if slots_per_device > 1 else ""
    if kind == "cpu" and workers > MAX_WORKERS_PER_CORE * cores:
        raise UserError(f"{what}: {workers} worker processes{shared} on {cores} cores; at most "
                        f"{MAX_WORKERS_PER_CORE * cores} ({MAX_WORKERS_PER_CORE} per core)")
    if workers * worker_bytes > available_bytes:
        gib = 2**30
        raise UserError(f"{what}: {workers} worker processes{shared} need about {workers * worker_bytes / gib:.1f} GiB "
                        f"({worker_bytes / gib:.2f} GiB each, as measured here), {available_bytes / gib:.1f} GiB "
                        f"available; at most {available_bytes // worker_bytes}")
