"""Learning curves: what metric a simulated trial reports after each epoch.

Two workloads, both picklable specs whose `run()` gives a fresh per-simulation state:

`SyntheticWorkload` — a parametric family over the search space in the workload config.
    For a configuration with unit vector u (categoricals: index / (choices - 1)):
        z_q, z_t, z_e    three smooth random functions of u (16 random Fourier features each,
                         drawn from the workload seed only), roughly standard normal
        A(u)  = worst_final + (best_final - worst_final) * Phi(z_q)          final asymptote
        A0(u) = worst_final + (best_final - worst_final) * Phi(r z_q + sqrt(1 - r^2) z_e)
                                                     early asymptote, r = rank_fidelity
        tau(u)= epochs_scale * exp(rate_spread * z_t)                         rate
        m(p)  = initial + (A(p) - initial) * F(p / tau),   A(p) = A + (A0 - A) * exp(-p / epochs_scale)
                F(x) = 1 - (1 + x)^-alpha (shape: power) or 1 - exp(-x) (shape: exp)
        metric(epoch) = clip(m(p) + noise * e1),  test = clip(m(p) - test_gap + test_noise * e2)
    Early on a configuration heads for A0, later for A: with rank_fidelity = 1 they are the
    same and early ranks are final ranks (up to noise and rate); lower values let
    configurations that look good early end badly and the reverse — the knob early stopping
    is sensitive to (the Spearman correlation of epoch-1 and final metric falls monotonically
    with it). Every value stays between initial and the best/worst asymptotes.
    Noise e1, e2 is drawn per configuration from (workload seed, hash of u): the same
    configuration gets the same curve whatever the allocation, the timing or its trial id,
    so allocations are compared on the same search.
    Progress p is epochs, or with the batch-size effect (`b_noise` set) the sum over trained
    epochs of 1 / g(k_e), g(k) = (1 + B(k)/b_noise) / (1 + B(1)/b_noise), B(k) the global
    batch at that epoch's allocation (from the profile) — epochs-to-accuracy grow by g(k)
    (McCandlish et al. 2018, the critical batch size; the MLPerf ResNet-50 reference convergence
    points, mlcommons/logging training_1.1.0 rcps_resnet.json, fit b_noise ~ 4.6e4).
    Under per-rung schedules each epoch contributes at its own k.

`ReplayWorkload` — recorded curves (a `trace.jsonl` of `nasalloc run`, a CSV with
    config_id, epoch, metric[, test_metric], a Ray Tune experiment folder or Syne Tune
    results; `sim/records.py` reads them): simulated trial i replays recorded curve
    i mod n (CSV curves in order of first appearance, Ray Tune and Syne Tune trials in the
    order they were created). An epoch that was not recorded gets the last recorded value
    before it (a trial stopped early in the real run and continued in the simulation "stays
    where it was"); such results and the wrapped trials are counted in `stats()` and reach
    summary.json. When the records hold epoch times (and `workload.timings` is true) the
    workload also carries them, and the engine takes each epoch's time from them
    (`epoch_times`, `sim/timings.py`); otherwise every epoch's time is the profile's.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from nasalloc.sim.cluster import exact_k
from nasalloc.sim.config import require, required, to_typed
from nasalloc.sim.errors import UserError
from nasalloc.sim.profile import Profile
from nasalloc.sim.records import Curve, Recording, read_recording
from nasalloc.sim.space import Config, SearchSpace
from nasalloc.sim.timings import EpochTimes, RecordedTimes

_N_FEATURES = 16


@dataclass(frozen=True)
class MetricSpec:
    """The metric the scheduler optimises: its direction and the range it lives in
    (`workload.metric` in conf/workload/*.yaml, the one place its defaults are written)."""

    name: str
    mode: str  # max | min
    low: float
    high: float

    def __post_init__(self) -> None:
        require(self.mode in ("max", "min"), f"mode={self.mode}: allowed: max, min")
        require(self.low < self.high, f"low={self.low}: must be below high={self.high}")

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass
class SyntheticConfig:
    """`conf/workload/synthetic.yaml` without `metric` and `space` (see module docstring).

    No field has a default: that file is the one place the values are written."""

    name: str
    seed: int
    shape: str
    initial: float
    worst_final: float
    best_final: float
    epochs_scale: float
    alpha: float
    rank_fidelity: float
    rate_spread: float
    landscape_frequency: float
    noise: float
    test_gap: float
    test_noise: float
    b_noise: float | None

    def __post_init__(self) -> None:
        require(self.shape in ("power", "exp"), f"shape={self.shape}: allowed: power, exp")
        require(self.epochs_scale > 0, f"epochs_scale={self.epochs_scale}: must be > 0")
        require(self.alpha > 0, f"alpha={self.alpha}: must be > 0")
        require(0.0 <= self.rank_fidelity <= 1.0, f"rank_fidelity={self.rank_fidelity}: must lie in [0, 1]")
        require(self.rate_spread >= 0, f"rate_spread={self.rate_spread}: must be >= 0")
        require(self.landscape_frequency >= 0, f"landscape_frequency={self.landscape_frequency}: must be >= 0")
        require(self.noise >= 0 and self.test_noise >= 0, f"noise={self.noise}: noise levels must be >= 0")
        require(self.b_noise is None or self.b_noise > 0, f"b_noise={self.b_noise}: must be > 0 or null (no batch-size effect)")


BatchAt = Callable[[float], float]  # allocation k -> global batch


class WorkloadRun:
    """Per-simulation state of a workload: `result` for each epoch a trial finishes."""

    def result(self, trial: int, config: Config, epoch: int, k: float) -> tuple[float, float | None]:
        raise NotImplementedError

    def stats(self) -> dict[str, Any]:
        return {}

    def epoch_times(self, profile: Profile) -> EpochTimes | None:
        """Recorded epoch times scaled by `profile` (`sim/timings.py`); None: the curves carry
        no times and every epoch's time is the profile's (only a replay overrides this)."""
        return None


def _unit_vector(space: SearchSpace, config: Mapping[str, Any]) -> list[float]:
    """The configuration in [0, 1]^d (a categorical's index scaled to [0, 1])."""
    u = []
    for d in space.domains:
        x = d.to_unit(config[d.name])
        if d.is_categorical:
            x = x / max(len(d.choices) - 1, 1)
        u.append(float(x))
    return u


@dataclass(frozen=True)
class SyntheticWorkload:
    """The parametric family (module docstring); picklable, cheap to build."""

    cfg: SyntheticConfig
    metric: MetricSpec
    space: SearchSpace

    def __post_init__(self) -> None:
        c = self.cfg
        for key in ("initial", "worst_final", "best_final"):
            value = getattr(c, key)
            if not self.metric.contains(value):
                raise UserError(f"workload.{key}={value}: outside the metric's range [{self.metric.low}, {self.metric.high}]")
        better = (c.best_final >= c.worst_final) if self.metric.mode == "max" else (c.best_final <= c.worst_final)
        if not better:
            raise UserError(f"workload.best_final={c.best_final}: must be better than worst_final={c.worst_final} for mode={self.metric.mode}")

    def landscape(self) -> Any:
        return self.landscape_for(self.cfg, len(self.space.domains))

    @staticmethod
    def landscape_for(cfg: SyntheticConfig, d: int) -> tuple[tuple[tuple[tuple[float, ...], float], ...], ...]:
        """Random Fourier features from the workload seed only: 3 functions x 16 (w, phase).

        Kept as Python floats and evaluated with `math` (not numpy's SIMD kernels, which
        differ in the last bits between CPUs) so a trace is the same on any machine.
        """
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        f = cfg.landscape_frequency * 2.0 * math.pi
        w = rng.normal(0.0, f, size=(3, _N_FEATURES, d)).tolist()
        phase = rng.uniform(0.0, 2 * math.pi, size=(3, _N_FEATURES)).tolist()
        return tuple(tuple((tuple(w[j][i]), phase[j][i]) for i in range(_N_FEATURES)) for j in range(3))

    def curve_params(self, config: Mapping[str, Any]) -> tuple[float, float, float]:
        """(final asymptote A, rate tau in epochs, early asymptote A0) of a configuration."""
        return _curve_params(self.cfg, self.landscape(), _unit_vector(self.space, config))

    def run(self, max_epochs: int, batch_at: BatchAt | None = None) -> WorkloadRun:
        return _SyntheticRun(self, max_epochs, batch_at)


@functools.lru_cache(maxsize=4)
def _landscape(cfg_key: tuple) -> Any:
    fields, d = cfg_key
    cfg = SyntheticConfig(*fields)
    return SyntheticWorkload.landscape_for(cfg, d)


@functools.lru_cache(maxsize=1 << 16)
def _config_curve(cfg_key: tuple, u: tuple[float, ...]) -> tuple[float, float, float, bytes]:
    """(A, tau, E, noise key) of a configuration: a pure function, memoised per process so a
    sweep over allocations (the same configurations again and again) computes it once."""
    fields, _d = cfg_key
    cfg = SyntheticConfig(*fields)
    asymptote, tau, early = _curve_params(cfg, _landscape(cfg_key), u)
    text = ",".join(repr(round(x, 12)) for x in u).encode()
    key = hashlib.blake2b(text, digest_size=32, key=int(cfg.seed).to_bytes(8, "little", signed=True)).digest()
    return asymptote, tau, early, key


def _curve_params(c: SyntheticConfig, features: Any, u: Any) -> tuple[float, float, float]:
    norm = math.sqrt(2.0 / _N_FEATURES)
    cos, mul = math.cos, operator.mul
    zq, zt, ze = [norm * sum([cos(sum(map(mul, w, u)) + ph) for w, ph in fn]) for fn in features]
    r = c.rank_fidelity
    span = c.best_final - c.worst_final
    asymptote = c.worst_final + span * 0.5 * (1.0 + math.erf(zq / math.sqrt(2.0)))
    z_early = r * zq + math.sqrt(max(1.0 - r * r, 0.0)) * ze
    early = c.worst_final + span * 0.5 * (1.0 + math.erf(z_early / math.sqrt(2.0)))
    tau = c.epochs_scale * math.exp(c.rate_spread * zt)
    return asymptote, tau, early


class _SyntheticRun(WorkloadRun):
    def __init__(self, wl: SyntheticWorkload, max_epochs: int, batch_at: BatchAt | None):
        self.wl = wl
        self.c = wl.cfg
        self.lo, self.hi = wl.metric.low, wl.metric.high
        self.max_epochs = max_epochs
        self.cfg_key = (dataclasses.astuple(self.c), len(wl.space.domains))
        self.trials: dict[int, tuple[float, float, float, bytes]] = {}
        self.progress: dict[int, list[float]] = {}
        self.batch_at = batch_at if self.c.b_noise is not None else None
        self._g: dict[float, float] = {}

    def _trial(self, trial: int, config: Config) -> tuple[float, float, float, bytes]:
        rec = self.trials.get(trial)
        if rec is None:
            u = tuple(_unit_vector(self.wl.space, config))
            rec = _config_curve(self.cfg_key, u)
            self.trials[trial] = rec
        return rec

    @staticmethod
    @functools.lru_cache(maxsize=1 << 18)
    def _noise(key: bytes, epoch: int) -> tuple[float, float]:
        """Two standard normals for (configuration, epoch): Box-Muller on a keyed hash, so the
        noise needs no generator per trial and does not depend on the order of results.
        Memoised per process: a sweep replays the same configurations' epochs at every
        allocation (the hash and the transcendental functions were 5% of a simulation)."""
        h = hashlib.blake2b(epoch.to_bytes(4, "little"), digest_size=16, key=key).digest()
        u1 = (int.from_bytes(h[:8], "little") + 1) / 18446744073709551617.0  # (0, 1]
        u2 = int.from_bytes(h[8:], "little") / 18446744073709551616.0
        r = math.sqrt(-2.0 * math.log(u1))
        return r * math.cos(2.0 * math.pi * u2), r * math.sin(2.0 * math.pi * u2)

    def _slowdown(self, k: float) -> float:
        g = self._g.get(k)
        if g is None:
            bn = float(self.c.b_noise)  # type: ignore[arg-type]
            b1, bk = float(self.batch_at(1.0)), float(self.batch_at(k))  # type: ignore[misc]
            g = (1.0 + bk / bn) / (1.0 + b1 / bn)
            self._g[k] = g
        return g

    def _progress(self, trial: int, epoch: int, k: float) -> float:
        cum = self.progress.setdefault(trial, [0.0])
        if len(cum) > epoch:  # retrained from an earlier checkpoint or from scratch
            del cum[epoch:]
        step = 1.0 / self._slowdown(k)
        while len(cum) <= epoch:
            cum.append(cum[-1] + step)
        return cum[epoch]

    def result(self, trial: int, config: Config, epoch: int, k: float) -> tuple[float, float | None]:
        asymptote, tau, early, key = self._trial(trial, config)
        c = self.c
        p = float(epoch) if self.batch_at is None else self._progress(trial, epoch, k)
        x = p / tau
        frac = 1.0 - (1.0 + x) ** (-c.alpha) if c.shape == "power" else 1.0 - math.exp(-x)
        if early != asymptote:
            asymptote += (early - asymptote) * math.exp(-p / c.epochs_scale)
        mean = c.initial + (asymptote - c.initial) * frac
        e1, e2 = self._noise(key, epoch)
        metric = min(max(mean + c.noise * e1, self.lo), self.hi)
        sign = 1.0 if self.wl.metric.mode == "max" else -1.0
        test = min(max(mean - sign * c.test_gap + c.test_noise * e2, self.lo), self.hi)
        return metric, test


@dataclass(frozen=True)
class ReplayWorkload:
    """Recorded curves, and their epoch times when replayed (loaded by `load_recording` at
    the entry point; no file I/O here). `times` None: every epoch's time is the profile's,
    and `times_note` says why (the records hold none, or `workload.timings=false`)."""

    curves: tuple[Curve, ...]
    metric: MetricSpec
    space: SearchSpace
    source: str = ""
    times: RecordedTimes | None = None
    times_note: str = ""

    def __post_init__(self) -> None:
        if not self.curves:
            raise UserError(f"{self.source or 'replay'}: no recorded results to replay")
        if self.times is not None and len(self.times.epochs) != len(self.curves):
            raise ValueError("recorded times must cover the recorded curves one to one")

    def run(self, max_epochs: int, batch_at: BatchAt | None = None) -> WorkloadRun:
        return _ReplayRun(self)

    def epoch_times(self, profile: Profile) -> EpochTimes | None:
        """The recorded epoch times scaled by `profile` (None: the profile's own times)."""
        return None if self.times is None else self.times.for_profile(profile)


class _ReplayRun(WorkloadRun):
    def __init__(self, wl: ReplayWorkload):
        self.wl = wl
        self.times_note = wl.times_note
        self.curves = wl.curves
        self.sorted = [sorted(c) for c in wl.curves]
        self.beyond = 0
        self.missing = 0
        self.wrapped: set[int] = set()

    def result(self, trial: int, config: Config, epoch: int, k: float) -> tuple[float, float | None]:
        n = len(self.curves)
        if trial >= n:
            self.wrapped.add(trial)
        i = trial % n
        curve = self.curves[i]
        value = curve.get(epoch)
        if value is not None:
            return value
        epochs = self.sorted[i]
        if epoch > epochs[-1]:
            self.beyond += 1
            return curve[epochs[-1]]
        self.missing += 1
        before = [e for e in epochs if e < epoch]
        return curve[before[-1] if before else epochs[0]]

    def stats(self) -> dict[str, Any]:
        return {
            "replay_recorded_trials": len(self.curves),
            "replay_results_beyond_recorded": self.beyond,
            "replay_results_missing_epoch": self.missing,
            "replay_trials_wrapped": len(self.wrapped),
            "replay_policy": "hold the last recorded value; trial i replays recorded curve i mod n",
            **({"epoch_times": self.times_note} if self.times_note else {}),
        }

    def epoch_times(self, profile: Profile) -> EpochTimes | None:
        return self.wl.epoch_times(profile)


Workload = SyntheticWorkload | ReplayWorkload


# ----- loading from config and files (entry point only) -----------------------------------

def _metric_spec(node: Any, key: str) -> MetricSpec:
    return to_typed(MetricSpec, node, key)


def load_recording(path: str | Path, metric: MetricSpec, recorded_k: Fraction,
                   key: str = "workload.path") -> Recording:
    """The recorded search at `path` (`records.read_recording`) with its curves checked against
    the metric: epochs counted from 1, values inside the metric's range. UserError naming the
    file otherwise."""
    rec = read_recording(path, metric.name, recorded_k, key)
    if not rec.curves:
        raise UserError(f"{rec.path}: no result events/rows to replay")
    for trial, curve in zip(rec.trial_ids, rec.curves):
        for epoch, (m, _t) in curve.items():
            if epoch < 1:
                raise UserError(f"{rec.path}: trial {trial} epoch {epoch}: epochs are counted from 1")
            if not (math.isnan(m) or metric.contains(m)):
                raise UserError(f"{rec.path}: trial {trial}: metric {m} at epoch {epoch} outside "
                                f"workload.metric's range [{metric.low}, {metric.high}]")
    return rec


def _recorded_k(value: Any, key: str) -> Fraction:
    """`workload.recorded_k`: devices per trial (a whole number, or 1/m as "1/2" or 0.5)."""
    try:
        k = float(Fraction(str(value).strip())) if not isinstance(value, bool) else math.nan
    except (ValueError, ZeroDivisionError):
        k = math.nan
    if not math.isfinite(k) or k <= 0 or abs(float(exact_k(k)) - k) > 1e-9:
        raise UserError(f"{key}={value!r}: devices per trial the records ran at: a whole number or 1/m (e.g. 1, 4, \"1/2\")")
    return exact_k(k)


def workload_from_config(node: Any, key: str = "workload") -> Workload:
    """Build a workload from its config group node; UserError on bad values or files."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, Mapping):
        raise UserError(f"{key}: expected a mapping with name: synthetic|replay")
    node = dict(node)
    name = node.get("name")
    metric = _metric_spec(node.pop("metric", None), f"{key}.metric")
    space = SearchSpace.from_config(node.pop("space", None), f"{key}.space")
    if name == "synthetic":
        return SyntheticWorkload(to_typed(SyntheticConfig, node, key), metric, space)
    if name == "replay":
        unknown = sorted(set(node) - {"name", "path", "timings", "recorded_k"})
        if unknown:
            raise UserError(f"{key}.{unknown[0]}: unknown setting; allowed: name, path, timings, recorded_k, metric, space")
        timings = required(node, "timings", f"{key}.")
        if not isinstance(timings, bool):
            raise UserError(f"{key}.timings={timings!r}: must be true (replay recorded epoch times) or false (the profile's)")
        recorded_k = _recorded_k(required(node, "recorded_k", f"{key}."), f"{key}.recorded_k")
        path = node.get("path")
        if not path:
            raise UserError(f"{key}.path: required (a trace.jsonl from `nasalloc run`, a CSV config_id,epoch,metric[,test_metric], "
                            f"a Ray Tune experiment folder or Syne Tune results.csv.zip)")
        rec = load_recording(path, metric, recorded_k, f"{key}.path")
        times, note = rec.times, ""
        if times is None:
            note = f"profile (the {rec.kind} holds no epoch times)"
        elif not timings:
            times, note = None, f"profile ({key}.timings=false; the {rec.kind} holds epoch times)"
        return ReplayWorkload(rec.curves, metric, space, source=str(path), times=times, times_note=note)
    raise UserError(f"{key}.name={name!r}: unknown workload; allowed: synthetic, replay")


__all__ = ["MetricSpec", "SyntheticConfig", "SyntheticWorkload", "ReplayWorkload", "Workload", "WorkloadRun",
           "load_recording", "workload_from_config"]
