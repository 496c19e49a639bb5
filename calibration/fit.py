"""Fit the simulator's step-time model (sim/speedup.py) and two baselines to measured step times.

The model (parameters in `nasalloc.sim.speedup.StepTimeModel`, equation repeated here):

    T_step(k) = (T_c^g + T_net(k)^g)^(1/g) * (1 + cv * z_k),   T_c = t_compute_s * b(k)/b
    T_net(k)  = 2(k-1)/k * M / B + 2(k-1) * alpha    (B, alpha intra- or inter-node)

Fitting is least squares on log(mean step time) per k (every k counts the same, and a 1 ms
and a 1 s step are judged by relative error), over log-parameters inside explicit bounds.

What the data can identify is decided before fitting, not left to the optimizer: each distinct
k in 2..gpus_per_node determines one intra-node parameter, each k beyond one node one
inter-node parameter, in the order bandwidth, latency, then the overlap exponent g. With
k = 1, 2 only, B_intra is fitted and alpha_intra and g are pinned; from a single node the
inter-node pair is pinned. A pinned parameter takes the user's value (e.g. measured with
nccl-tests) or the stated default in `PRIORS`, and is listed as assumed. The straggler cv is
measured from the spread of single-rank step times (it is what makes the slowest of k ranks
slower); M (gradient bytes) is counted from the model's parameters.

Baselines, fitted the same way: Amdahl, S(k) = 1 / ((1-p) + p/k), and linear scaling with an
efficiency, S(k) = 1 + e(k-1), where S(k) is throughput relative to one device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from nasalloc.sim.speedup import StepTimeModel, expected_max_normal

# ----------------------------------------------------------------------------- predict


def _z(k: np.ndarray) -> np.ndarray:
    """E[max of k standard normals], elementwise (cached per distinct k)."""
    flat = k.ravel().astype(int)
    table = {int(u): expected_max_normal(int(u)) for u in np.unique(flat)}
    return np.array([table[int(x)] for x in flat], dtype=float).reshape(k.shape)


def predict_step_time(p: StepTimeModel, k: ArrayLike, gpus_per_node: int, batch_fraction: ArrayLike = 1.0) -> np.ndarray:
    """T_step(k) for an array of k >= 1; elementwise equal to `StepTimeModel.step_time`."""
    k = np.asarray(k, dtype=float)
    return _predict(p, k, np.broadcast_to(np.asarray(batch_fraction, dtype=float), k.shape), gpus_per_node, _z(k))


def _predict(p: StepTimeModel, k: np.ndarray, bf: np.ndarray, gpus_per_node: int, z: np.ndarray) -> np.ndarray:
    """`predict_step_time` with the straggler factors z_k precomputed (the fit's inner loop)."""
    t_c = p.t_compute_s * bf
    intra = k <= gpus_per_node
    bandwidth = np.where(intra, p.intra_bandwidth_Bps, p.inter_bandwidth_Bps)
    latency = np.where(intra, p.intra_latency_s, p.inter_latency_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_net = np.where(k > 1, 2.0 * (k - 1) / k * p.grad_bytes / bandwidth + 2.0 * (k - 1) * latency, 0.0)
        top = np.maximum(t_c, t_net)  # scale before the power so g = 10 cannot overflow
        t = top * ((t_c / top) ** p.gamma + (t_net / top) ** p.gamma) ** (1.0 / p.gamma)
    return t * (1.0 + p.straggler_cv * z)


def speedup(step_time: ArrayLike, k: ArrayLike, batch_fraction: ArrayLike, t1: float) -> np.ndarray:
    """Throughput at k relative to one device: samples/s = k * b(k) / T_step(k)."""
    k = np.asarray(k, dtype=float)
    return k * np.asarray(batch_fraction, dtype=float) * t1 / np.asarray(step_time, dtype=float)


def predict_amdahl(t1: float, p: float, k: ArrayLike, batch_fraction: ArrayLike = 1.0) -> np.ndarray:
    """Step time when throughput follows Amdahl: S(k) = 1 / ((1 - p) + p / k)."""
    k = np.asarray(k, dtype=float)
    return t1 * k * np.asarray(batch_fraction, dtype=float) * ((1.0 - p) + p / k)


def predict_linear(t1: float, e: float, k: ArrayLike, batch_fraction: ArrayLike = 1.0) -> np.ndarray:
    """Step time when throughput grows linearly: S(k) = 1 + e (k - 1), e = 1 is ideal."""
    k = np.asarray(k, dtype=float)
    return t1 * k * np.asarray(batch_fraction, dtype=float) / (1.0 + e * (k - 1.0))


# ----------------------------------------------------------------------------- priors


@dataclass(frozen=True)
class Prior:
    """Where a parameter starts, where it may go, and its value when the data cannot say."""

    default: float  # the pinned value when unidentifiable (nan: always fitted)
    lower: float
    upper: float
    why: str  # where the default comes from (written next to the value in the profile)


_COMMON = {
    "t_compute_s": Prior(math.nan, 1e-7, 1e4, "always fitted from k = 1"),
    "gamma": Prior(1.0, 1.0, 10.0, "g = 1 (compute and all-reduce add up, no overlap): the pessimistic end of "
                   "Pollux's range [1, 10], and the value Pollux's fit regularises towards"),
}
PRIORS: dict[str, dict[str, Prior]] = {
    # gloo over loopback on one machine; "inter-node" = another machine over TCP.
    "cpu": {
        **_COMMON,
        "intra_bandwidth_Bps": Prior(2e9, 1e5, 1e13, "order of gloo's loopback/shared-memory ring throughput"),
        "intra_latency_s": Prior(3e-5, 1e-9, 1.0, "order of one loopback TCP round trip (gloo ring hop)"),
        "inter_bandwidth_Bps": Prior(1.0e9, 1e5, 1e13, "10 GbE at ~80% of 1.25 GB/s line rate"),
        "inter_latency_s": Prior(5e-5, 1e-9, 1.0, "order of one TCP round trip on a data-centre LAN"),
    },
    # NCCL between GPUs.
    "cuda": {
        **_COMMON,
        "intra_bandwidth_Bps": Prior(1.0e11, 1e5, 1e13, "NVLink3 ring bus bandwidth, order of 100 GB/s"),
        "intra_latency_s": Prior(5e-6, 1e-9, 1.0, "order of NCCL's per-hop small-message latency over NVLink"),
        "inter_bandwidth_Bps": Prior(2.0e10, 1e5, 1e13, "one HDR200 InfiniBand port per GPU (25 GB/s line rate, "
                                     "JUWELS Booster: apps.fz-juelich.de/jsc/hps/juwels/booster-overview.html) at ~80%"),
        "inter_latency_s": Prior(1e-5, 1e-9, 1.0, "order of one InfiniBand hop through NCCL"),
    },
}
DEFAULT_GRAD_BYTES = 1e8  # used only when the model size is unknown; only M/B enters T_step
INTRA_ORDER = ("intra_bandwidth_Bps", "intra_latency_s", "gamma")
INTER_ORDER = ("inter_bandwidth_Bps", "inter_latency_s", "gamma")
FITTABLE = ("t_compute_s", "gamma", "intra_bandwidth_Bps", "intra_latency_s", "inter_bandwidth_Bps", "inter_latency_s")
_LOG = {"t_compute_s", "intra_bandwidth_Bps", "intra_latency_s", "inter_bandwidth_Bps", "inter_latency_s"}


@dataclass(frozen=True)
class FitSettings:
    """What the fit needs besides the samples.

    gpus_per_node  where intra- turns into inter-node communication
    grad_bytes     M, bytes all-reduced per step (None: unknown, pinned to DEFAULT_GRAD_BYTES;
                   only M/B enters T_step, so the fit is unaffected, but a user-given
                   bandwidth then means less)
    backend        "cpu" (gloo) or "cuda" (nccl): selects `PRIORS`
    given          user-pinned values, e.g. {"inter_bandwidth_Bps": 2.2e10} from nccl-tests,
                   or {"straggler_cv": 0.0}
    """

    gpus_per_node: int = 1
    grad_bytes: float | None = None
    backend: str = "cpu"
    given: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.backend not in PRIORS:
            raise ValueError(f"backend={self.backend!r}: allowed: {', '.join(PRIORS)}")
        allowed = set(FITTABLE) - {"t_compute_s"} | {"straggler_cv"}
        unknown = sorted(set(self.given) - allowed)
        if unknown:
            raise ValueError(f"{unknown[0]}: cannot be given; allowed: {', '.join(sorted(allowed))}")


@dataclass(frozen=True)
class Assumption:
    """A parameter not determined by this data: its value and why that value."""

    value: float
    source: str  # "default" or "user"
    reason: str


def plan_parameters(ks: Sequence[int], settings: FitSettings) -> tuple[list[str], dict[str, Assumption]]:
    """Decide which step-time parameters the measured k can identify; pin the rest.

    Each distinct k in 2..gpus_per_node frees one intra-node parameter and each k beyond a
    node one inter-node parameter, in the order bandwidth, latency, overlap exponent g; g
    (shared) is freed by whichever side has a point left. A parameter the user gives is
    pinned to their value and does not use up a point.
    """
    priors = PRIORS[settings.backend]
    distinct = sorted(set(int(k) for k in ks))
    if 1 not in distinct:
        raise ValueError("step times at k = 1 are needed (they fix the compute time t_compute_s)")
    free = ["t_compute_s"]
    pinned: dict[str, Assumption] = {}
    budget = {"intra": sum(1 for k in distinct if 1 < k <= settings.gpus_per_node),
              "inter": sum(1 for k in distinct if k > settings.gpus_per_node)}
    for side, order in (("intra", INTRA_ORDER), ("inter", INTER_ORDER)):
        for name in order:
            if name in free:
                continue
            if name in settings.given:
                pinned[name] = Assumption(float(settings.given[name]), "user", "given by the user")
            elif budget[side] > 0:
                pinned.pop(name, None)
                free.append(name)
                budget[side] -= 1
            elif name not in pinned:
                pinned[name] = Assumption(priors[name].default, "default", _why_pinned(name, side, distinct, settings) + "; "
                                          + priors[name].why)
    return free, pinned


def _why_pinned(name: str, side: str, ks: list[int], s: FitSettings) -> str:
    measured = ", ".join(str(k) for k in ks)
    if side == "inter":
        return f"no k > gpus_per_node={s.gpus_per_node} measured (k = {measured})"
    n = sum(1 for k in ks if 1 < k <= s.gpus_per_node)
    if n == 0:
        return f"no k in 2..{s.gpus_per_node} measured"
    return (f"k = {measured} determine only {n} intra-node communication parameter{'s' if n > 1 else ''} "
            f"(the rest trade off against {'it' if n == 1 else 'them'})")


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class StepData:
    """Per-k means of step-time samples, the fit target (one entry per distinct k >= 1)."""

    k: np.ndarray
    mean_s: np.ndarray
    batch_fraction: np.ndarray

    @classmethod
    def from_samples(cls, samples: Mapping[int, np.ndarray], batch_fraction: Mapping[int, float]) -> StepData:
        ks = sorted(samples)
        return cls(np.array(ks, dtype=float), np.array([np.mean(samples[k]) for k in ks]),
                   np.array([batch_fraction.get(k, 1.0) for k in ks]))

    def without(self, k: int) -> StepData:
        keep = self.k != k
        return StepData(self.k[keep], self.mean_s[keep], self.batch_fraction[keep])


def robust_cv(samples: np.ndarray) -> float:
    """Coefficient of variation of single-rank step times, from the median absolute deviation
    (1.4826 MAD estimates sigma for a normal), so a few OS hiccups do not pose as stragglers."""
    x = np.asarray(samples, dtype=float)
    if len(x) < 3:
        return 0.0
    med = float(np.median(x))
    return float(1.4826 * np.median(np.abs(x - med)) / med) if med > 0 else 0.0


# ----------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class StepFit:
    """The fitted step-time model and how it was obtained."""

    model: StepTimeModel
    fitted: tuple[str, ...]  # parameters the optimizer determined
    measured: dict[str, float]  # determined directly from the samples (straggler_cv, grad_bytes)
    assumed: dict[str, Assumption]  # pinned: user-given or default
    success: bool  # scipy's result.success (True when there was nothing to optimise)
    message: str
    at_bounds: tuple[str, ...]  # fitted parameters that ended on a bound (data outside the model)
    rms_log_residual: float  # root-mean-square of log(pred/measured) over k

    def predict(self, k: ArrayLike, gpus_per_node: int, batch_fraction: ArrayLike = 1.0) -> np.ndarray:
        return predict_step_time(self.model, k, gpus_per_node, batch_fraction)


def _encode(name: str, value: float) -> float:
    return math.log(value) if name in _LOG else value


def _decode(name: str, value: float) -> float:
    return math.exp(value) if name in _LOG else value


def _best_least_squares(residuals: Callable[[np.ndarray], np.ndarray], starts: list[np.ndarray],
                        lower: np.ndarray, upper: np.ndarray) -> optimize.OptimizeResult:
    """scipy least_squares from several starts (g and B trade off; one start can stall)."""
    best = None
    for x0 in starts:
        x0 = np.clip(x0, lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
        res = optimize.least_squares(residuals, x0, bounds=(lower, upper), method="trf", x_scale="jac",
                                     xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=1000)
        if best is None or (res.success, -res.cost) > (best.success, -best.cost):
            best = res
    assert best is not None
    return best


def fit_step_time(data: StepData, settings: FitSettings, *, straggler_cv: float = 0.0,
                  start: StepTimeModel | None = None) -> StepFit:
    """Least-squares fit of T_step to the per-k means; see the module docstring.

    `straggler_cv` is the measured cv (or the user's; `settings.given` wins). `start` seeds the
    optimizer (the bootstrap starts from the point estimate).
    """
    priors = PRIORS[settings.backend]
    free, pinned = plan_parameters(data.k.astype(int).tolist(), settings)
    measured: dict[str, float] = {}
    cv = float(settings.given.get("straggler_cv", straggler_cv))
    if "straggler_cv" in settings.given:
        pinned["straggler_cv"] = Assumption(cv, "user", "given by the user")
    else:
        measured["straggler_cv"] = cv
    if settings.grad_bytes is None:
        grad_bytes = DEFAULT_GRAD_BYTES
        pinned["grad_bytes"] = Assumption(grad_bytes, "default", "model size unknown; only M/B enters the step time, "
                                          "so fitted bandwidths are per this M")
    else:
        grad_bytes = float(settings.grad_bytes)
        measured["grad_bytes"] = grad_bytes
    base = {name: a.value for name, a in pinned.items() if name in FITTABLE}
    model0 = StepTimeModel(t_compute_s=1.0, gamma=base.get("gamma", 1.0), grad_bytes=grad_bytes, straggler_cv=cv,
                           **{n: v for n, v in base.items() if n != "gamma"})
    gpn = settings.gpus_per_node

    def build(x: np.ndarray) -> StepTimeModel:
        return dataclasses.replace(model0, **{n: _decode(n, float(v)) for n, v in zip(free, x)})

    z, log_mean = _z(data.k), np.log(data.mean_s)

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(_predict(build(x), data.k, data.batch_fraction, gpn, z)) - log_mean

    lower = np.array([_encode(n, priors[n].lower) for n in free])
    upper = np.array([_encode(n, priors[n].upper) for n in free])
    starts = _starts(free, data, model0, gpn, priors, start)
    res = _best_least_squares(residuals, starts, lower, upper)
    model = build(res.x)
    model, pinned = _no_cheaper_outside(model, pinned)
    at_bounds = tuple(n for n, x, lo, hi in zip(free, res.x, lower, upper)
                      if not n.endswith("latency_s") and n != "gamma" and (x - lo < 1e-6 * (hi - lo) or hi - x < 1e-6 * (hi - lo)))
    rms = float(np.sqrt(np.mean(residuals(res.x) ** 2)))
    return StepFit(model=model, fitted=tuple(free), measured=measured, assumed=pinned, success=bool(res.success),
                   message=str(res.message), at_bounds=at_bounds, rms_log_residual=rms)


def _no_cheaper_outside(model: StepTimeModel, pinned: dict[str, Assumption]) -> tuple[StepTimeModel, dict[str, Assumption]]:
    """A default-pinned inter-node term never beats the fitted intra-node one.

    Leaving the node never makes communication cheaper; a generic default (10 GbE) can be
    faster than what a slow machine's own ring measured, and extrapolating with it would
    make k beyond one node look better than k inside it.
    """
    pinned = dict(pinned)
    for name, worse in (("inter_bandwidth_Bps", min), ("inter_latency_s", max)):
        intra = name.replace("inter", "intra")
        a = pinned.get(name)
        if a is None or a.source != "default":
            continue
        value = worse(getattr(model, name), getattr(model, intra))
        if value != getattr(model, name):
            model = dataclasses.replace(model, **{name: value})
            pinned[name] = Assumption(value, "default", a.reason.split(";")[0] + f"; set to the fitted {intra} "
                                      "(the default would make leaving the node cheaper than staying)")
    return model, pinned


def _starts(free: list[str], data: StepData, model0: StepTimeModel, gpn: int, priors: Mapping[str, Prior],
            start: StepTimeModel | None) -> list[np.ndarray]:
    """Starting points: the given model, else data-driven guesses crossed with g in {1, 4}."""
    if start is not None:
        return [np.array([_encode(n, getattr(start, n)) for n in free])]
    i1 = int(np.argmin(data.k))
    z1 = 1.0 + model0.straggler_cv * _z(np.array([1.0]))[0]
    t_c = data.mean_s[i1] / data.batch_fraction[i1] / z1
    guess: dict[str, float] = {"t_compute_s": t_c}
    for side, is_side in (("intra", lambda k: 1 < k <= gpn), ("inter", lambda k: k > gpn)):
        idx = [i for i, k in enumerate(data.k) if is_side(k)]
        if not idx:
            continue
        i = idx[0]
        k = data.k[i]
        extra = max(data.mean_s[i] / (1.0 + model0.straggler_cv * _z(np.array([k]))[0]) - t_c * data.batch_fraction[i],
                    0.05 * t_c)
        guess[f"{side}_bandwidth_Bps"] = 2.0 * (k - 1) / k * model0.grad_bytes / extra
        guess[f"{side}_latency_s"] = min(extra / (20.0 * (k - 1)), priors[f"{side}_latency_s"].upper / 2)
    starts = []
    for g in (1.0, 4.0):
        for scale in (1.0, 10.0):
            x = []
            for n in free:
                if n == "gamma":
                    x.append(g)
                else:
                    v = guess.get(n, priors[n].default)
                    x.append(_encode(n, v * (scale if n.endswith("bandwidth_Bps") else 1.0)))
            starts.append(np.array(x))
    return starts


def bootstrap_step_fits(samples: Mapping[int, np.ndarray], batch_fraction: Mapping[int, float], settings: FitSettings,
                        point: StepFit, n: int, rng: np.random.Generator) -> list[StepTimeModel]:
    """Refit on `n` resamples (with replacement, within each k) of the raw step times.

    Only fits that succeed are kept. Resampling within k treats steps as independent; bursty
    noise makes the band somewhat too narrow, so it is a lower bound on the uncertainty.
    """
    out: list[StepTimeModel] = []
    cv_measured = "straggler_cv" in point.measured
    for _ in range(n):
        resampled = {k: rng.choice(v, size=len(v), replace=True) for k, v in samples.items()}
        cv = robust_cv(resampled[1]) if cv_measured else point.model.straggler_cv
        fit = fit_step_time(StepData.from_samples(resampled, batch_fraction), settings, straggler_cv=cv,
                            start=point.model)
        if fit.success:
            out.append(fit.model)
    return out


# ----------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class BaselineFit:
    """A one-shape-parameter baseline: T1 and p (Amdahl) or e (linear)."""

    name: str  # "amdahl" | "linear"
    t1_s: float
    shape: float
    success: bool

    def predict(self, k: ArrayLike, batch_fraction: ArrayLike = 1.0) -> np.ndarray:
        f = predict_amdahl if self.name == "amdahl" else predict_linear
        return f(self.t1_s, self.shape, k, batch_fraction)


def baselines_cannot_fit(data: StepData) -> str | None:
    """Why neither baseline can describe these step times (None: they can).

    Both keep throughput at or above one device's (Amdahl's p and linear's e are >= 0, so
    S(k) >= 1): a measured speed-up below 1 (k ranks slower than one device) is outside
    both, and their fit then ends on the no-scaling bound, a flat line through neither the
    k = 1 nor the k > 1 points. Said instead of drawn."""
    i1 = int(np.argmin(data.k))
    s = data.k * data.batch_fraction * (data.mean_s[i1] / data.batch_fraction[i1]) / data.mean_s / data.k[i1]
    below = [(int(k), float(x)) for k, x in zip(data.k, s) if k > data.k[i1] and x < 1.0]
    if not below:
        return None
    return ("Amdahl and linear scaling cannot fit: speed-up below 1 at "
            + ", ".join(f"k={k} ({x:.2f})" for k, x in below) + "; both keep it >= 1")


def fit_baseline(name: str, data: StepData) -> BaselineFit:
    """Fit T1 and the shape parameter (p in [0, 1], or e in (0, 1]) on log step time."""
    f = predict_amdahl if name == "amdahl" else predict_linear
    if name not in ("amdahl", "linear"):
        raise ValueError(f"baseline {name!r}: allowed: amdahl, linear")
    i1 = int(np.argmin(data.k))
    t1 = data.mean_s[i1] / data.batch_fraction[i1]
    if len(data.k) == 1:
        return BaselineFit(name, float(t1), 1.0, True)

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log(f(math.exp(x[0]), x[1], data.k, data.batch_fraction)) - np.log(data.mean_s)

    lower = np.array([math.log(1e-7), 0.0 if name == "amdahl" else 1e-6])
    upper = np.array([math.log(1e4), 1.0])
    res = _best_least_squares(residuals, [np.array([math.log(t1), s]) for s in (0.5, 0.95)], lower, upper)
    return BaselineFit(name, float(math.exp(res.x[0])), float(res.x[1]), bool(res.success))


# ----------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ModelScore:
    """How well one model describes the measured step times."""

    name: str  # "pollux" (the simulator's model), "amdahl", "linear"
    in_sample_rel_error: float  # mean |pred/measured - 1| over k, fitted on all k
    heldout_rel_error: float | None  # leave-one-k-out mean |pred/measured - 1| (>= 3 distinct k)


def compare_models(data: StepData, settings: FitSettings, straggler_cv: float) -> tuple[list[ModelScore], str, str]:
    """Score the three models; -> (scores, best name, basis of the choice).

    With at least three distinct k each k > 1 is held out in turn (fit on the rest, predict
    it), so a model with more freedom cannot win by fitting noise. With fewer points every
    model has as many parameters as points and fits exactly: the basis says so.
    """
    def fitters(d: StepData) -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
        pollux = fit_step_time(d, settings, straggler_cv=straggler_cv)
        amdahl, linear = fit_baseline("amdahl", d), fit_baseline("linear", d)
        return {
            "pollux": lambda k, bf: pollux.predict(k, settings.gpus_per_node, bf),
            "amdahl": amdahl.predict,
            "linear": linear.predict,
        }

    full = fitters(data)
    rel = {n: float(np.mean(np.abs(f(data.k, data.batch_fraction) / data.mean_s - 1.0))) for n, f in full.items()}
    held: dict[str, float | None] = {n: None for n in full}
    if len(data.k) >= 3:
        errors: dict[str, list[float]] = {n: [] for n in full}
        for k in data.k[data.k > 1]:
            train = data.without(int(k))
            i = int(np.flatnonzero(data.k == k)[0])
            for n, f in fitters(train).items():
                pred = float(f(data.k[i:i + 1], data.batch_fraction[i:i + 1])[0])
                errors[n].append(abs(pred / data.mean_s[i] - 1.0))
        held = {n: float(np.mean(e)) for n, e in errors.items()}
    scores = [ModelScore(n, rel[n], held[n]) for n in full]
    if len(data.k) >= 3:
        best = min(scores, key=lambda s: s.heldout_rel_error or 0.0).name
        basis = f"leave-one-k-out error over k = {', '.join(str(int(k)) for k in data.k[data.k > 1])}"
    else:
        best = min(scores, key=lambda s: (round(s.in_sample_rel_error, 4), s.name != "pollux")).name
        exact = [s.name for s in scores if s.in_sample_rel_error < 1e-3]
        basis = (f"in-sample error only ({len(data.k)} distinct k; "
                 + (f"{', '.join(exact)} fit{'s' if len(exact) == 1 else ''} them exactly" if exact else "no model fits exactly")
                 + "): measure at least three k to tell the models apart")
    return scores, best, basis


# ----------------------------------------------------------------------------- overheads


@dataclass(frozen=True)
class LineFit:
    """cost(k) = base + per_doubling * log2(k), plus across_nodes for a job spanning nodes:
    how start-up, resume and the end of a job grow with k.

    Every term is a duration, so every term is >= 0 and the fit is least squares inside
    those bounds. A measured cost near 0 less its parts comes out below 0 from noise alone
    (a k = 1 pause less the decision and the save: -2.3 ms on a busy machine); the bounded
    fit writes 0 for it, which the profile accepts, and `held` keeps what the fit would have
    said without the bound, so the report can say the bound was hit rather than hide it.
    """

    base: float
    per_doubling: float
    slope_assumed: bool  # one k measured: the slope cannot be told, so it is 0 by assumption
    across_nodes: float | None = None  # None: no job across nodes, or none inside one, measured
    held: Mapping[str, float] = field(default_factory=dict)  # term -> its value without the bound (< 0)

    def at(self, k: float, gpus_per_node: int) -> float:
        """The cost of a job on k devices (k > gpus_per_node spans nodes)."""
        across = (self.across_nodes or 0.0) if k > gpus_per_node else 0.0
        return self.base + self.per_doubling * math.log2(max(1.0, k)) + across


def fit_startup(startup_s: Mapping[int, Sequence[float]], slope: float | None = None) -> LineFit:
    """startup(k) = startup_s + startup_per_doubling_s * log2(k), least squares with both
    terms >= 0 (`LineFit`). From one k the slope cannot be told: it is `slope` where an
    earlier fit gave one (validate keeps the profile's), else 0 by assumption, and the level
    is the mean less slope * log2(k), at least 0; no samples at all give (0, slope or 0)."""
    ks = [k for k, v in startup_s.items() if len(v)]
    if not ks:
        return LineFit(0.0, slope or 0.0, slope is None)
    x = np.concatenate([np.full(len(startup_s[k]), math.log2(k)) for k in ks])
    y = np.concatenate([np.asarray(startup_s[k], dtype=float) for k in ks])
    if len(set(ks)) < 2:
        level = float(np.mean(y if slope is None else y - slope * x))
        return LineFit(max(0.0, level), slope or 0.0, slope is None, held={"base": level} if level < 0 else {})
    design = np.column_stack([np.ones_like(x), x])
    res = optimize.lsq_linear(design, y, bounds=([0.0, 0.0], [np.inf, np.inf]), method="bvls")  # exact active set
    free = np.linalg.lstsq(design, y, rcond=None)[0]
    held = {term: float(value) for term, value, active in zip(("base", "per_doubling"), free, res.active_mask)
            if value < 0 and active != 0}
    return LineFit(float(res.x[0]), float(res.x[1]), False, held=held)


def fit_startup_across_nodes(startup_s: Mapping[int, Sequence[float]], gpus_per_node: int,
                             slope: float | None = None, across: float | None = None) -> LineFit:
    """startup(k) = startup_s + startup_per_doubling_s * log2(k), plus startup_inter_node_s
    for k > gpus_per_node: the line is fitted to the jobs inside one node (`fit_startup`), the
    jobs across nodes give the step above it (their mean excess over the line, at least 0).
    A job across nodes pays a rendezvous and process group over the network, a step at the
    node boundary; fitted as one log2 k line, it pulled the line to 0 s at k = 1 on the Ray
    test cluster (7, 9 and 83 ms at k = 1, 2, 4 on nodes of 2).
    `slope`: the slope kept from an earlier fit where one k inside a node cannot tell it
    (`fit_startup`). `across`: the step kept from an earlier fit where the jobs measured lie
    on one side of the node boundary only; it is taken out of the jobs across nodes before
    the line is fitted to them, and is the fit's `across_nodes`. Without it (calibration)
    `across_nodes` is None there and the line is fitted over all (`fit_startup`)."""
    inside = {k: v for k, v in startup_s.items() if k <= gpus_per_node and len(v)}
    spanning = {k: v for k, v in startup_s.items() if k > gpus_per_node and len(v)}
    if not inside or not spanning:
        if across is None:
            return fit_startup(startup_s, slope)
        line = fit_startup({**inside, **{k: [x - across for x in v] for k, v in spanning.items()}}, slope)
        return dataclasses.replace(line, across_nodes=across)
    line = fit_startup(inside, slope)
    excess = float(np.mean([x - line.at(k, gpus_per_node) for k, v in spanning.items() for x in v]))
    held = {**line.held, **({"across_nodes": excess} if excess < 0 else {})}
    return dataclasses.replace(line, across_nodes=max(0.0, excess), held=held)


def fit_resume(resume_s: Mapping[int, Sequence[float]], gpus_per_node: int, across: float | None,
               slope: float | None = None) -> LineFit:
    """resume(k) = resume_s + resume_per_doubling_s * log2(k), fitted to resumed jobs' costs as
    start-up is (`fit_startup`; `slope` as there), less the start-up's step `across` for jobs
    across nodes: the simulator adds that step to resume(k) itself (`Profile.resume_time`),
    so left in, a job across nodes would pay it twice."""
    step = across or 0.0
    return fit_startup({k: [x - (step if k > gpus_per_node else 0.0) for x in v] for k, v in resume_s.items()}, slope)
