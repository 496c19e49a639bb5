"""The cluster, the allocations it allows, and where a trial's devices are placed.

Allocation k (``gpus_per_trial``) is either
- ``1/m`` (m = 2, 3, 4, ...): up to m trials share one device; the trial reserves 1/m of it
  (as a fractional GPU in Ray) and trains at the speed the profile's sharing curve gives for
  the number of trials training on that device at the moment (alone: full speed; see
  `sim/engine.py`);
- a whole number k <= gpus_per_node that divides gpus_per_node: k devices inside one node
  (so a node packs whole trials and no device is stranded);
- a multiple of gpus_per_node that divides N: k / gpus_per_node whole nodes.

A per-rung schedule ``[1, 2, 4, 8]`` (RASDA) gives the allocation of rung i: epochs up to the
first milestone at schedule[0], the next rung at schedule[1], ... (the last entry covers the
rest); see `Allocation.k_at`.

Placement (`DevicePool`) and fragmentation. Capacity is counted in integer "units", L per
device, where L is the least common multiple of the m of every fractional k in use, so
fractions never meet floating-point rounding.
- k < 1, when every k in use is a fraction: spread: the device with the most free capacity
  that holds k (lowest id on ties), so a sharing trial runs alone whenever a device is free
  (it then runs at full speed: the engine's sharing slow-down follows the device's current
  occupancy). The executor runs this same placement (`sim/dispatch.py`).
- k < 1, when the schedule mixes fractions with whole devices (``[1/2, 2]``): best fit: the
  device with the least free capacity that still holds k (partly used devices fill up
  first, whole devices stay whole for the later rungs), lowest id on ties.
- 1 <= k <= gpus_per_node: k fully free devices of one node, best fit over nodes (the node
  with the fewest fully free devices that suffices), lowest device ids inside it.
- k > gpus_per_node: the lowest-numbered k / gpus_per_node fully free nodes.
With mixed sizes (a per-rung schedule) a request can find enough free devices in total but no
placement; it then waits, first in first out (the engine asks the scheduler for nothing new
while a request waits, so big requests cannot starve). Nothing is preempted or moved to
defragment: a waiting request is served when releases open a placement. Best fit keeps whole
nodes free for the large requests as long as possible.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nasalloc.sim.config import require
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_allocation


@dataclass(frozen=True)
class ClusterSpec:
    """N devices in nodes of `gpus_per_node` (N a multiple of it, or N <= gpus_per_node).

    No defaults: a cluster is one of conf/cluster/*.yaml or built from what a run had."""

    name: str
    gpus: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        require(self.gpus >= 1, f"gpus={self.gpus}: must be >= 1")
        require(self.gpus_per_node >= 1, f"gpus_per_node={self.gpus_per_node}: must be >= 1")
        require(
            self.gpus <= self.gpus_per_node or self.gpus % self.gpus_per_node == 0,
            f"gpus={self.gpus}: must be a multiple of gpus_per_node={self.gpus_per_node} (whole nodes)",
        )

    @property
    def node_size(self) -> int:
        """Devices per node as placement sees it (a cluster smaller than a node is one node)."""
        return min(self.gpus, self.gpus_per_node)

    @property
    def nodes(self) -> int:
        return self.gpus // self.node_size


def _fraction(k: float) -> Fraction:
    return Fraction(k).limit_denominator(1024)


def is_allowed(cluster: ClusterSpec, k: float) -> bool:
    """Whether allocation k is allowed on this cluster (see the module docstring)."""
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not math.isfinite(k) or k <= 0:
        return False
    if k < 1:
        f = _fraction(k)
        return f.numerator == 1 and abs(float(f) - k) < 1e-9
    if k != int(k):
        return False
    k = int(k)
    gpn = cluster.node_size
    if k <= gpn:
        return gpn % k == 0
    return k % gpn == 0 and cluster.gpus % k == 0


def allowed_allocations(cluster: ClusterSpec, min_k: float) -> list[float]:
    """Every static allocation from `min_k` up to the whole cluster, ascending.

    Fractions are enumerated as 1/2, 1/4, 1/8, ... (powers of two, the sizes sharing curves
    are measured at); `is_allowed` also accepts other 1/m such as 1/3. Whole numbers are
    returned as int, fractions as float.
    """
    out: list[float] = []
    m = 2
    while 1.0 / m >= min_k:
        out.append(1.0 / m)
        m *= 2
    out.reverse()
    out += [k for k in range(1, cluster.gpus + 1) if k >= min_k and is_allowed(cluster, k)]
    return out


def _allowed_text(cluster: ClusterSpec) -> str:
    whole = [k for k in allowed_allocations(cluster, 1) if k >= 1]
    return "1/m for m trials per device (0.5, 0.25, ...) or " + ", ".join(str(int(k)) for k in whole)


def exact_k(k: Any) -> Fraction:
    """An allocation value as an exact fraction (whole numbers, or 1/m), whatever its type.

    Floats such as 0.25 or 1/3 come from YAML and the simulator's arithmetic; comparing and
    adding them exactly (placement units, pool capacity) needs the fraction they stand for.
    """
    if isinstance(k, Fraction):
        return k
    if isinstance(k, int):
        return Fraction(k)
    f = Fraction(float(k)).limit_denominator(1024)
    return Fraction(int(f)) if f >= 1 else Fraction(1, round(1 / f))


ELASTIC = "elastic"


@dataclass(frozen=True)
class Allocation:
    """Devices per trial: a static k, one k per rung (epochs after the i-th milestone), or
    elastic: every job starts at ``schedule[0]`` and a running trial may move to any k in
    `grow` while devices would otherwise idle (`sim/elastic.py`).

    The one allocation type of simulator, executor, calibration and validation: entries are
    exact fractions (k >= 1 whole, or 1/m), so placement never meets rounding. Build it with
    `parse_allocation` (checks it against a cluster), `sim.elastic.elastic_allocation`, or
    directly from numbers.
    """

    schedule: tuple[Fraction, ...]
    grow: tuple[Fraction, ...] = ()  # elastic only: the larger k a running trial may move to, ascending

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", tuple(exact_k(k) for k in self.schedule))
        object.__setattr__(self, "grow", tuple(sorted(exact_k(k) for k in self.grow)))

    @property
    def is_elastic(self) -> bool:
        return bool(self.grow)

    @property
    def is_static(self) -> bool:
        return len(self.schedule) == 1 and not self.grow

    @property
    def per_rung(self) -> bool:
        return len(self.schedule) > 1

    def k_at(self, rung: int) -> Fraction:
        return self.schedule[min(rung, len(self.schedule) - 1)]

    def k_of_epochs(self, milestones: Iterable[int], max_epochs: int) -> list[float]:
        """The allocation of epochs 0 .. max_epochs + 1 (epoch e trains at the k of rung
        `rung_index(milestones, e)`; epoch 0 as epoch 1), as float(Fraction): the same float
        for the same fraction, a cheap key for per-k tables in the simulator's hot path."""
        floats = [float(k) for k in self.schedule]
        ms = sorted(milestones)
        out, rung = [], 0
        for e in range(max_epochs + 2):
            while rung < len(ms) and ms[rung] < max(e, 1):
                rung += 1
            out.append(floats[min(rung, len(floats) - 1)])
        return out

    @functools.cached_property
    def ks(self) -> tuple[Fraction, ...]:
        """Every distinct k the allocation uses, ascending."""
        return tuple(sorted(set(self.schedule) | set(self.grow)))

    @property
    def slots_per_device(self) -> int:
        """Trials one device may hold at once: m for the smallest share 1/m, else 1 (the
        executor keeps that many warm workers per device)."""
        return max((k.denominator for k in self.ks if k < 1), default=1)

    @property
    def spreads_fractions(self) -> bool:
        """Placement of k < 1 (`spreads_fractions`)."""
        return spreads_fractions(self.ks)

    @property
    def label(self) -> Any:
        """JSON-friendly: the number for a static k (int, or float for 1/m), else the list;
        "elastic" for the elastic policy."""
        if self.is_elastic:
            return ELASTIC
        vals = [int(k) if k >= 1 else float(k) for k in self.schedule]
        return vals[0] if self.is_static else vals

    def __str__(self) -> str:
        if self.is_elastic:
            return ELASTIC
        return format_allocation(self.schedule[0] if self.is_static else self.schedule)


def _parse_one(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    if isinstance(value, (int, float, Fraction)):
        return float(value)
    raise ValueError


def parse_allocation(value: Any, cluster: ClusterSpec, key: str = "gpus_per_trial") -> Allocation:
    """A k (number or "1/4") or a per-rung list, checked against the cluster; UserError if bad."""
    if isinstance(value, Allocation):
        value = list(value.schedule)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise UserError(f"{key}=[]: give a number of devices per trial or a per-rung list such as [1,2,4]")
    ks: list[Fraction] = []
    for item in items:
        try:
            k = _parse_one(item)
        except (ValueError, ZeroDivisionError):
            raise UserError(f"{key}={value}: not a number; allowed on {cluster.gpus} GPUs "
                            f"({cluster.gpus_per_node} per node): {_allowed_text(cluster)}") from None
        shown = f"{item}:" if len(items) == 1 else f"{list(items)}: {item} is"
        if math.isfinite(k) and k > cluster.gpus:
            raise UserError(f"{key}={shown} not allowed: more devices per trial than the {cluster.gpus} of {cluster.name}; "
                            f"allowed: {_allowed_text(cluster)}")
        if not is_allowed(cluster, k):
            raise UserError(f"{key}={shown} not allowed on {cluster.gpus} GPUs ({cluster.gpus_per_node} per node); "
                            f"allowed: {_allowed_text(cluster)}; or a per-rung list of these")
        ks.append(exact_k(k))
    return Allocation(tuple(ks))


def machine(n_devices: int) -> ClusterSpec:
    """The executor's devices as the one-node cluster placement sees."""
    return ClusterSpec(name="this machine", gpus=n_devices, gpus_per_node=n_devices)


def spreads_fractions(ks: Iterable[Any]) -> bool:
    """Placement rule for k < 1 shared by the simulator and the executor: spread sharing
    trials over devices (True) unless the allocation also uses whole devices, where best fit
    keeps whole devices free for those rungs (module docstring)."""
    ks = list(ks)
    return not any(k >= 1 for k in ks)


class DevicePool:
    """Free capacity of every device, and placement (best fit, see the module docstring).

    `place(k)` returns the device ids (or None when no placement exists now) and commits;
    `release(devices, k)` gives them back. `free_units` is the total free capacity, an O(1)
    lower bound check before a placement is tried.
    """

    def __init__(self, cluster: ClusterSpec, ks: tuple[float, ...]):
        self.spread = spreads_fractions(ks)
        self.n = cluster.gpus
        self.gpn = cluster.node_size
        self.n_nodes = cluster.nodes
        denominators = [round(1.0 / k) for k in ks if k < 1]
        self.L = math.lcm(*denominators) if denominators else 1
        self.dev_free = [self.L] * self.n
        self.node_whole = [self.gpn] * self.n_nodes  # fully free devices per node
        self.free_units = self.n * self.L

    def units(self, k: float) -> int:
        return round(k * self.L) if k < 1 else int(k) * self.L

    def place(self, k: float) -> tuple[int, ...] | None:
        L = self.L
        if k < 1:
            u = round(k * L)
            if self.free_units < u:
                return None
            best, best_free = -1, L + 1
            if self.spread:  # most free capacity first, lowest id on ties
                for d, f in enumerate(self.dev_free):
                    if f >= u and (best < 0 or f > best_free):
                        best, best_free = d, f
                        if f == L:
                            break
            else:  # best fit: least free capacity that holds u
                for d, f in enumerate(self.dev_free):
                    if u <= f < best_free:
                        best, best_free = d, f
                        if f == u:
                            break
            if best < 0:
                return None
            if best_free == L:
                self.node_whole[best // self.gpn] -= 1
            self.dev_free[best] = best_free - u
            self.free_units -= u
            return (best,)
        k = int(k)
        if self.free_units < k * L:
            return None
        gpn = self.gpn
        if k <= gpn:
            node, node_free = -1, gpn + 1
            for i, w in enumerate(self.node_whole):
                if k <= w < node_free:
                    node, node_free = i, w
                    if w == k:
                        break
            if node < 0:
                return None
            base = node * gpn
            devs = [d for d in range(base, base + gpn) if self.dev_free[d] == L][:k]
            self.node_whole[node] -= k
        else:
            need = k // gpn
            nodes = [i for i, w in enumerate(self.node_whole) if w == gpn][:need]
            if len(nodes) < need:
                return None
            devs = [d for i in nodes for d in range(i * gpn, (i + 1) * gpn)]
            for i in nodes:
                self.node_whole[i] = 0
        for d in devs:
            self.dev_free[d] = 0
        self.free_units -= k * L
        return tuple(devs)

    def occupy(self, devices: tuple[int, ...], k: float) -> None:
        """Hold exactly `devices` for k (the inverse of `release`)."""
        L = self.L
        if k < 1:
            d, u = devices[0], round(k * L)
            if self.dev_free[d] == L:
                self.node_whole[d // self.gpn] -= 1
            self.dev_free[d] -= u
            self.free_units -= u
            return
        for d in devices:
            self.dev_free[d] = 0
            self.node_whole[d // self.gpn] -= 1
        self.free_units -= len(devices) * L

    def move_target(self, devices: tuple[int, ...], k_old: float, k_new: float) -> tuple[int, ...] | None:
        """Where a trial holding `devices` at k_old would be placed at k_new once it lets them
        go (None: nowhere now); nothing changes."""
        self.release(devices, k_old)
        placed = self.place(k_new)
        if placed is not None:
            self.release(placed, k_new)
        self.occupy(devices, k_old)
        return placed

    def sharers(self, device: int, k: float, joining: bool = False) -> int:
        """Trials of share k that fit in what is held on `device` (its trials, when all hold k),
        at least 1; with `joining`, one more: those there once a trial of share k moves in."""
        held = round((self.L - self.dev_free[device]) / self.units(k))
        return held + 1 if joining else max(1, held)

    @property
    def busy_devices(self) -> int:
        """Devices holding at least a share of some trial."""
        return sum(1 for f in self.dev_free if f < self.L)

    def release(self, devices: tuple[int, ...], k: float) -> None:
        L = self.L
        if k < 1:
            d = devices[0]
            self.dev_free[d] += round(k * L)
            self.free_units += round(k * L)
            if self.dev_free[d] == L:
                self.node_whole[d // self.gpn] += 1
            return
        for d in devices:
            self.dev_free[d] = L
            self.node_whole[d // self.gpn] += 1
        self.free_units += len(devices) * L
