"""Fit the profile's `config_cost` block (sim/profile.py) from per-configuration epoch times.

Calibration times `configs` configurations sampled from the search space at k = 1
(`Measurements.configs`). Their step and evaluation times differ (a width changes the model's
compute); each one's epoch is steps_per_epoch x its mean step + its evaluation (the step
time alone where the evaluation was not timed, `fit_config_cost`). The simulator multiplies
each trial's epoch time by

    config_factor(c) = (floor + (1 - floor) * exp(sum_j slope_j * (u_j(c) - center_j))) / norm

with u_j the unit coordinate of numeric parameter j (`sim/space.py` Domain.to_unit). Two
candidate models of log(mean step time) are fitted, both centered at the sample's mean
coordinates and with the same small ridge penalty (8 points and a few
parameters stay stable; a parameter that does not move the step time gets a slope near 0):

- `log-linear` (floor 0): least squares of log step time on the centered unit coordinates.
- `floor + power`: log t = log a + log(floor + (1 - floor) * exp(slope . (u - center))),
  floor in [0, 0.95]. Real step times have a floor (fixed per-step overhead: Python, the
  optimizer, kernel launches) plus a part that grows with the model; a log-linear model
  cannot bend and over-predicts the small, fast configurations, which are often the ones a
  search keeps longest. Fitted with scipy least_squares from a few deterministic starts.
  The ridge penalty is on each parameter's range effect: the change of log step time from
  u_j = 0 to u_j = 1 with the other parameters at their centers. In the log-linear model that
  is slope_j itself, so at floor 0 the penalty is the log-linear fit's; unlike a penalty on
  the raw slopes it does not charge a floor for the steeper power part it needs (with the
  raw slopes penalised the floor fit collapses to 0 even on clean floor-shaped data), and
  unlike one on the slopes at the center it still charges the hockey sticks of a floor near
  its bound (which the leave-one-out folds of 8 noisy points otherwise produce).

Which parameters enter at all is chosen first (`select_parameters`): forward selection by
leave-one-out error of the log-linear fit, starting from the constant model; a parameter that
does not lower it by more than SELECT_GAIN is left out of the block (its slope would only fit
noise). When no parameter helps, no block is written and every trial gets the mean epoch time.

The floor model has one more parameter, so it always fits the sample at least as well; it is
chosen only when it also predicts held-out configurations better: leave-one-out rms log error
lower than the log-linear one's by more than LOO_TIE (ties and failures keep log-linear; with 8
noisy points a smaller difference is noise), and only with at least
MIN_CONFIGS_FLOOR configurations. `norm` = the sample's mean of the unnormalised factor, from
the rounded numbers the profile stores, so the mean factor over the sample is exactly 1:
t_compute_s is the sample's mean step time (`Measurements.config_scale`). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from nasalloc.sim.space import SearchSpace

RIDGE = 0.05  # penalty = RIDGE x the mean per-parameter sum of squares of the centered coordinates
MIN_CONFIGS = 3
MIN_CONFIGS_FLOOR = 5  # leave-one-out needs a few points left to fit slopes + floor + scale
MAX_FLOOR = 0.95
FLOOR_STARTS = (0.0, 0.3, 0.6)  # deterministic starting floors; slopes start at log-linear / (1 - floor)
LOO_TIE = 0.01  # relative: LOO errors closer than 1% are a tie (noise), and a tie keeps log-linear
SELECT_GAIN = 0.2  # relative: a parameter enters only if it lowers the LOO error by more than 20% (pure noise: 13 of 100 samples of 8 pick one; 5% picked 42)
LOG_LINEAR = "log-linear"
FLOOR_POWER = "floor + power"


@dataclass(frozen=True)
class ConfigCostFit:
    """The fitted block (None when skipped, with `reason`), which model was chosen and how
    well each candidate predicts held-out configurations."""

    block: dict[str, Any] | None
    reason: str = ""
    n: int = 0
    rms_log_residual: float = 0.0  # in-sample, of the chosen model
    rms_log_spread: float = 0.0  # rms of log step time about its mean (what a constant leaves)
    factors: list[float] = field(default_factory=list)  # fitted factor of each sampled configuration
    model: str = LOG_LINEAR
    floor: float = 0.0  # of the chosen model (0 for log-linear)
    candidate_floor: float | None = None  # the floor + power fit's floor on the whole sample, when tried
    loo: dict[str, float | str] = field(default_factory=dict)  # model -> LOO rms log error, or why not tried
    selection_path: list[str] = field(default_factory=list)  # forward selection of the parameters (select_parameters)
    fitted_to: str = "step"  # "epoch": k = 1 epoch times (steps x step + evaluation); "step": step times

    def report(self) -> dict[str, Any]:
        """The profile's `fit.config_cost` entry."""
        if self.block is None:
            return {"skipped": self.reason}
        loo = {name: (float(f"{v:.4g}") if isinstance(v, float) else v) for name, v in self.loo.items()}
        candidate = {} if self.candidate_floor is None else {"candidate_floor": float(f"{self.candidate_floor:.4g}")}
        return {"model": "epoch time x (floor + (1 - floor) x exp(sum_j slope_j*(u_j - center_j)))/norm; "
                         "u_j = unit coordinate of parameter j",
                "chosen": self.model, "floor": self.floor,
                "method": f"ridge least squares of log(k=1 {self.fitted_to} time) on centered unit coordinates (ridge {RIDGE:g} "
                          f"x mean sum of squares per parameter), {LOG_LINEAR} (floor 0) and {FLOOR_POWER} "
                          f"(floor in [0, {MAX_FLOOR:g}], scipy least_squares); norm: mean factor over the sample = 1",
                "selection": f"leave-one-out rms log error; {FLOOR_POWER} only if more than {LOO_TIE:.0%} lower "
                             f"than {LOG_LINEAR}'s and n >= {MIN_CONFIGS_FLOOR}",
                "loo_rms_log_error": loo, **candidate,
                "parameter_selection": self.selection_path,
                "n": self.n, "rms_log_residual": float(f"{self.rms_log_residual:.4g}"),
                "rms_log_spread": float(f"{self.rms_log_spread:.4g}"),
                "factor_range": [float(f"{min(self.factors):.4g}"), float(f"{max(self.factors):.4g}")]}


@dataclass(frozen=True)
class _Model:
    """log t = intercept + log(floor + (1 - floor) * exp(slope . (u - center)))."""

    intercept: float
    floor: float
    center: np.ndarray
    slope: np.ndarray

    def predict(self, u: np.ndarray) -> np.ndarray:
        """Predicted log step time of the rows of `u` (unit coordinates)."""
        return self.intercept + _log_mix(self.floor, (u - self.center) @ self.slope)

    def residual(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        """y - predicted, grouped as the log-linear fit always computed it (same float result)."""
        return (y - self.intercept) - _log_mix(self.floor, (u - self.center) @ self.slope)


def _log_mix(floor: float, z: np.ndarray) -> np.ndarray:
    """log(floor + (1 - floor) * exp(z)) without overflow for large z; exactly z at floor 0."""
    if floor <= 0.0:
        return np.asarray(z, dtype=float)
    return np.logaddexp(math.log(floor), math.log1p(-floor) + np.asarray(z, dtype=float))


def _g(x: float) -> float:
    return float(f"{x:.6g}")


def _ridge_lambda(x: np.ndarray, ridge: float) -> float:
    """The ridge penalty for centered coordinates `x`, scaled to their spread so `ridge` is unitless."""
    return max(ridge * float(np.trace(x.T @ x)) / x.shape[1], 1e-12)


def _fit_log_linear(u: np.ndarray, y: np.ndarray, ridge: float) -> _Model:
    """Ridge least squares of y on the centered coordinates (closed form)."""
    center = u.mean(axis=0)
    x = u - center
    lam = _ridge_lambda(x, ridge)
    slope = np.linalg.solve(x.T @ x + lam * np.eye(u.shape[1]), x.T @ (y - y.mean()))
    return _Model(float(y.mean()), 0.0, center, slope)


def _fit_floor(u: np.ndarray, y: np.ndarray, ridge: float) -> _Model | None:
    """The floor + power model by bounded least squares, best of a few deterministic starts;
    None if every start fails. The ridge term is the log-linear fit's, applied to the range
    effects of the parameters (module docstring)."""
    start = _fit_log_linear(u, y, ridge)
    center = start.center
    x = u - center
    root_lam = math.sqrt(_ridge_lambda(x, ridge))
    p = u.shape[1]

    def residuals(theta: np.ndarray) -> np.ndarray:
        floor, slope = float(theta[1]), theta[2:]
        pred = theta[0] + _log_mix(floor, x @ slope)
        effect = _log_mix(floor, slope * (1.0 - center)) - _log_mix(floor, -slope * center)
        return np.concatenate([pred - y, root_lam * effect])

    lower = np.r_[-np.inf, 0.0, np.full(p, -np.inf)]
    upper = np.r_[np.inf, MAX_FLOOR, np.full(p, np.inf)]
    best = None
    for floor0 in FLOOR_STARTS:
        slope0 = start.slope / (1.0 - floor0)  # same local log-slope at the center as the log-linear fit
        b0 = float(np.mean(y - _log_mix(floor0, x @ slope0)))
        try:
            result = optimize.least_squares(residuals, np.r_[b0, floor0, slope0], bounds=(lower, upper), method="trf")
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.all(np.isfinite(result.x)) and np.isfinite(result.cost) and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    return _Model(float(best.x[0]), float(np.clip(best.x[1], 0.0, MAX_FLOOR)), center, best.x[2:].copy())


def _loo_rms(u: np.ndarray, y: np.ndarray, fitter: Callable[[np.ndarray, np.ndarray], _Model | None]) -> float | None:
    """Leave-one-out rms error of log step time: fit on all but one, predict that one (None if a fit fails)."""
    errors = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = fitter(u[keep], y[keep])
        if model is None:
            return None
        pred = float(model.predict(u[i:i + 1])[0])
        if not math.isfinite(pred):
            return None
        errors.append(pred - y[i])
    return float(math.sqrt(np.mean(np.square(errors))))


def _loo_constant(y: np.ndarray) -> float:
    """Leave-one-out rms error of predicting each log step time by the mean of the others."""
    n = len(y)
    others = (y.sum() - y) / (n - 1)
    return float(math.sqrt(np.mean(np.square(others - y))))


def select_parameters(u: np.ndarray, y: np.ndarray, names: Sequence[str],
                      ridge: float = RIDGE) -> tuple[list[int], list[str]]:
    """Forward selection of the parameters that move the step time, by leave-one-out error of
    the log-linear fit: start from the constant model, add the parameter that lowers the LOO
    rms log error most, stop when the best addition lowers it by no more than LOO_TIE.

    -> (column indices chosen, in order; the path as text). Why: with ~8 noisy configurations a
    parameter that cannot change the step time (a learning rate) still gets a fitted slope,
    which then scales every trial's epoch time by noise; measured on two digits calibrations,
    fitting all three parameters gave LOO rms log errors of 0.25 and 0.24, width alone 0.15
    and 0.22."""
    chosen: list[int] = []
    best = _loo_constant(y)
    path = [f"constant {best:.3f}"]
    while len(chosen) < u.shape[1]:
        trials = []
        for j in range(u.shape[1]):
            if j in chosen:
                continue
            cols = [*chosen, j]
            err = _loo_rms(u[:, cols], y, lambda uu, yy: _fit_log_linear(uu, yy, ridge))
            if err is not None:
                trials.append((err, j))
        if not trials:
            break
        err, j = min(trials)
        if not err < best * (1.0 - SELECT_GAIN):
            break
        chosen.append(j)
        best = err
        path.append(f"+{names[j]} {err:.3f}")
    return chosen, path


def fit_config_cost(configs: Sequence[Mapping[str, Any]], space: Mapping[str, Any] | None,
                    ridge: float = RIDGE, try_floor: bool = True, steps_per_epoch: int | None = None) -> ConfigCostFit:
    """`configs`: [{config: {...}, mean_step_s: ..., eval_s: ...}, ...]; `space`: the search
    space they were sampled from (the `space:` mapping of sim/space.py). Fits both candidate
    models and keeps the one with the lower leave-one-out error (module docstring);
    `try_floor=False` fits the log-linear model only (to compare against, or to reproduce an
    older profile).

    With `steps_per_epoch` (at k = 1) and every configuration's `eval_s`, what is fitted is
    each configuration's epoch time, steps_per_epoch x mean step + eval_s, since the factor
    multiplies a whole epoch, evaluation included; evaluation can grow with the model much
    faster than a training step (the digits CNN's evaluation takes 3.4 ms at width
    4 and 38 ms at width 32, its step 0.81 and 1.48 ms, and a factor fitted to the steps made
    the wide configurations' epochs 14% too short, the narrow ones' 14% too long). Without
    them, the step time alone."""
    n = len(configs)
    if n < MIN_CONFIGS:
        return ConfigCostFit(None, f"{n} configuration{'s' if n != 1 else ''} timed (needs >= {MIN_CONFIGS})", n=n)
    if not space:
        return ConfigCostFit(None, "no search space given", n=n)
    domains = [d for d in SearchSpace.from_config(space, "train.space").domains if not d.is_categorical]
    if not domains:
        return ConfigCostFit(None, "no numeric parameters in the search space", n=n)
    u_all = np.array([[d.to_unit(c["config"][d.name]) for d in domains] for c in configs], dtype=float)
    steps = steps_per_epoch if steps_per_epoch and all(c.get("eval_s") is not None for c in configs) else None
    y = np.log(np.array([epoch_cost(c, steps) if steps else c["mean_step_s"] for c in configs], dtype=float))
    selected, path = select_parameters(u_all, y, [d.name for d in domains], ridge)
    if not selected:
        return ConfigCostFit(None, "no parameter predicts held-out configurations' step times better than their "
                                   f"mean (leave-one-out rms log error: {'; '.join(path)})", n=n)
    domains = [domains[j] for j in selected]
    u = u_all[:, selected]

    def log_linear(uu: np.ndarray, yy: np.ndarray) -> _Model:
        return _fit_log_linear(uu, yy, ridge)

    def floor_power(uu: np.ndarray, yy: np.ndarray) -> _Model | None:
        return _fit_floor(uu, yy, ridge)

    chosen, name = log_linear(u, y), LOG_LINEAR
    candidate_floor = None
    loo_linear = _loo_rms(u, y, log_linear)
    loo: dict[str, float | str] = {LOG_LINEAR: loo_linear if loo_linear is not None else "failed"}
    if not try_floor:
        loo[FLOOR_POWER] = "not tried: switched off"
    elif n < MIN_CONFIGS_FLOOR:
        loo[FLOOR_POWER] = f"not tried: {n} configurations (needs >= {MIN_CONFIGS_FLOOR})"
    else:
        floored = floor_power(u, y)
        candidate_floor = floored.floor if floored is not None else None
        loo_floor = _loo_rms(u, y, floor_power) if floored is not None else None
        loo[FLOOR_POWER] = loo_floor if loo_floor is not None else "not used: the fit failed"
        if floored is not None and loo_floor is not None and loo_linear is not None \
                and loo_floor < loo_linear * (1.0 - LOO_TIE):
            chosen, name = floored, FLOOR_POWER

    slopes = [_g(s) for s in chosen.slope]
    centers = [_g(c) for c in chosen.center]
    floor = _g(chosen.floor) if name == FLOOR_POWER else 0.0
    # norm from the rounded numbers the profile stores, so the stored block has mean factor 1
    expo = np.array([[s * (ui - c) for s, ui, c in zip(slopes, row, centers)] for row in u]).sum(axis=1)
    raw = np.exp(expo) if floor == 0.0 else floor + (1.0 - floor) * np.exp(expo)
    norm = _g(float(np.mean(raw)))
    resid = chosen.residual(u, y)
    params = {}
    for d, s, c in zip(domains, slopes, centers):
        low, high = (int(d.low), int(d.high)) if d.type == "int" else (float(d.low), float(d.high))
        params[d.name] = {"type": d.type, "low": low, "high": high, "log": bool(d.log), "slope": s, "center": c}
    block: dict[str, Any] = {"params": params, "norm": norm}
    if name == FLOOR_POWER:
        block["floor"] = floor
    block["applies_to"] = "compute"  # measured at k = 1: the configuration's compute, not the all-reduce
    return ConfigCostFit(block, n=n, selection_path=path, fitted_to="epoch" if steps else "step",
                         rms_log_residual=float(math.sqrt(np.mean(resid ** 2))),
                         rms_log_spread=float(math.sqrt(np.mean((y - y.mean()) ** 2))),
                         factors=[float(v) for v in raw / norm], model=name, floor=floor,
                         candidate_floor=candidate_floor, loo=loo)


def epoch_cost(config: Mapping[str, Any], steps_per_epoch: int) -> float:
    """A timed configuration's epoch at k = 1: its steps at the mean step time, then its evaluation."""
    return float(config["mean_step_s"]) * steps_per_epoch + float(config["eval_s"])


def describe(block: Mapping[str, Any] | None, report: Mapping[str, Any] | None) -> str | None:
    """One line for the calibrate report from the profile's `config_cost` block and its
    `fit.config_cost` entry (None when neither is there, e.g. an older profile)."""
    if block is None:
        if not report or "skipped" not in report:
            return None
        return f"config cost: not fitted ({report['skipped']}); every trial gets the same epoch time"
    terms = ", ".join(f"{name} {p['slope']:+.2f}" for name, p in block["params"].items())
    report = report or {}
    lo, hi = report.get("factor_range", [float("nan")] * 2)
    floor = float(block.get("floor", 0.0))
    shape = (f"(floor {floor:.2f} + {1.0 - floor:.2f} exp(slope . (u - center))) / {block['norm']:.3f}"
             if floor > 0.0 else f"exp(slope . (u - center)) / {block['norm']:.3f}")
    loo = report.get("loo_rms_log_error") or {}
    numbers = [f"{name} {value:.3f}" for name, value in loo.items() if isinstance(value, (int, float))]
    skipped = [f"{name} {value}" for name, value in loo.items() if isinstance(value, str)]
    chosen = ""
    if report.get("chosen") and numbers:
        chosen = f"; {report['chosen']} chosen by leave-one-out rms log error ({', '.join(numbers + skipped)})"
    return (f"config cost: epoch time x {shape}, fitted on {report.get('n', '?')} "
            f"configurations (slope per unit range: {terms}); factors {lo:.2f}-{hi:.2f} over the sample, rms log "
            f"residual {report.get('rms_log_residual', float('nan')):.3f} (spread {report.get('rms_log_spread', float('nan')):.3f})"
            f"{chosen}")
