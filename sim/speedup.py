"""Step- and epoch-time model: how long one epoch of one trial takes on k devices.

The model (Pollux's step-time form, with the communication term written as ring all-reduce):

    T_step(k) = (T_c(k)^g + T_net(k)^g)^(1/g) * (1 + cv * z_k)

    T_c(k)   compute time of one step for the per-device batch b(k):
             t_compute * b(k) / batch_per_device     (b(k) = batch_per_device under weak
             scaling, global_batch / k under strong scaling)
    T_net(k) ring all-reduce of the gradients (M bytes) over k ranks:
             0                                                   k = 1
             2(k-1)/k * M / B_intra + 2(k-1) * alpha_intra        k <= gpus_per_node
             2(k-1)/k * M / B_inter + 2(k-1) * alpha_inter        k  > gpus_per_node
    g        overlap exponent in [1, 10]: g = 1 adds compute and communication (no overlap),
             large g approaches max(T_c, T_net) (full overlap, as DDP's bucketed all-reduce).
    z_k      expected maximum of k standard normal variables (straggler term: a synchronous
             step waits for the slowest rank); cv is the step time's coefficient of variation.

    epoch(k) = steps(k) * T_step(k) + eval_s / (k if eval_scales else 1)     for k >= 1
    epoch(1/m) = epoch(1) * sharing(m)       m trials sharing one device, sharing(1) = 1

Everything here is pure and deterministic; fitting lives in `nasalloc.calibration`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
from scipy import integrate, special


_SQRT_2PI = np.sqrt(2 * np.pi)


@lru_cache(maxsize=None)
def expected_max_normal(k: int) -> float:
    """E[max of k iid N(0,1)] (0.564 for k=2, 1.029 for 4, 2.344 for 64)."""
    if k <= 1:
        return 0.0

    def integrand(x: float) -> float:
        # x k phi(x) Phi(x)^(k-1), phi and Phi as scipy.stats.norm computes them (same floats,
        # 20x faster without the distribution machinery: this ran once per k per process)
        a = np.array([x], dtype=float)
        return x * k * (np.exp(-a**2 / 2.0) / _SQRT_2PI)[0] * special.ndtr(a)[0] ** (k - 1)

    value, _ = integrate.quad(integrand, -12.0, 12.0, limit=200)
    return float(value)


@dataclass(frozen=True)
class StepTimeModel:
    """Parameters of T_step(k); see the module docstring for the equation."""

    t_compute_s: float  # T_c at k = 1 and batch_per_device, seconds per step
    gamma: float = 1.0  # g, overlap exponent in [1, 10]
    grad_bytes: float = 0.0  # M, bytes all-reduced per step
    intra_bandwidth_Bps: float = math.inf  # B_intra, bytes/s of the ring inside a node
    intra_latency_s: float = 0.0  # alpha_intra, seconds per ring hop inside a node
    inter_bandwidth_Bps: float = math.inf  # B_inter, bytes/s per rank between nodes
    inter_latency_s: float = 0.0  # alpha_inter, seconds per ring hop between nodes
    straggler_cv: float = 0.0  # cv, coefficient of variation of one rank's step time

    def network_time(self, k: int, gpus_per_node: int) -> float:
        if k <= 1:
            return 0.0
        if k <= gpus_per_node:
            bandwidth, latency = self.intra_bandwidth_Bps, self.intra_latency_s
        else:
            bandwidth, latency = self.inter_bandwidth_Bps, self.inter_latency_s
        return 2.0 * (k - 1) / k * self.grad_bytes / bandwidth + 2.0 * (k - 1) * latency

    def step_time(self, k: int, gpus_per_node: int, batch_fraction: float = 1.0) -> float:
        """Seconds per step on k >= 1 ranks; `batch_fraction` = b(k) / batch_per_device."""
        t_c = self.t_compute_s * batch_fraction
        t_net = self.network_time(k, gpus_per_node)
        g = self.gamma
        if t_net == 0.0:
            t = t_c
        else:  # scale before the power so g = 10 cannot overflow
            top = max(t_c, t_net)
            t = top * ((t_c / top) ** g + (t_net / top) ** g) ** (1.0 / g)
        return t * (1.0 + self.straggler_cv * expected_max_normal(int(k)))


@dataclass(frozen=True)
class EpochTimeModel:
    """Seconds per epoch of one trial at an allocation k (k >= 1 ranks, or 1/m of a device)."""

    step: StepTimeModel
    samples_per_epoch: int
    batch_per_device: int
    gpus_per_node: int
    scaling: str = "weak"  # weak: global batch = k * batch_per_device; strong: fixed global_batch
    global_batch: int | None = None  # strong scaling only
    eval_s: float = 0.0  # evaluation per epoch at k = 1
    eval_scales: bool = True  # evaluation is data-parallel too (divides by k)
    sharing: dict[int, float] = field(default_factory=lambda: {1: 1.0})  # m -> per-trial slow-down

    def global_batch_at(self, k: float) -> int:
        if k < 1 or self.scaling == "weak":
            return int(round(max(k, 1) * self.batch_per_device))
        return int(self.global_batch or self.batch_per_device)

    def steps_per_epoch(self, k: float) -> int:
        return math.ceil(self.samples_per_epoch / self.global_batch_at(k))

    def sharing_slowdown(self, m: int) -> float:
        """Per-trial slow-down with m trials on one device; linear interpolation between
        measured m, and beyond the largest measured m, proportional to m (the device is full)."""
        if m <= 1:
            return 1.0
        points = sorted({1: 1.0, **self.sharing}.items())
        ms = np.array([p[0] for p in points], dtype=float)
        fs = np.array([p[1] for p in points], dtype=float)
        if m <= ms[-1]:
            return float(np.interp(m, ms, fs))
        return float(fs[-1] * m / ms[-1])

    def epoch_time(self, k: float) -> float:
        if k < 1:
            m = int(round(1.0 / k))
            return self.epoch_time(1) * self.sharing_slowdown(m)
        ki = int(k)
        b_local = self.global_batch_at(ki) / ki
        step = self.step.step_time(ki, self.gpus_per_node, b_local / self.batch_per_device)
        evaluation = self.eval_s / ki if self.eval_scales else self.eval_s
        return self.steps_per_epoch(ki) * step + evaluation

    def speedup(self, k: float) -> float:
        """Throughput relative to one device (samples/s at k over samples/s at 1)."""
        per_sample_1 = self.epoch_time(1) / self.samples_per_epoch
        return per_sample_1 / (self.epoch_time(k) / self.samples_per_epoch)

    def with_step(self, step: StepTimeModel) -> EpochTimeModel:
        return replace(self, step=step)
