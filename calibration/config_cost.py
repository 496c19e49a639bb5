"""Fit the profile's `config_cost` block (sim/profile.py) from per-configuration step times.

Calibration times `configs` configurations sampled from the search space at k = 1
(`Measurements.configs`). Their step times differ (a width changes the model's compute); the
simulator multiplies each trial's epoch time by

    config_factor(c) = exp(sum_j slope_j * (u_j(c) - center_j)) / norm

with u_j the unit coordinate of numeric parameter j (`sim/space.py` Domain.to_unit). The fit:
least squares of log(mean step time) on the centered unit coordinates, with a small ridge
penalty on the slopes (8 points and a few parameters stay stable; a parameter that does not
move the step time gets a slope near 0), centered at the sample's mean coordinates, and
`norm` = the sample's mean of exp(slope . (u - center)), so the mean factor over the sample
is exactly 1: t_compute_s is the sample's mean step time (`Measurements.config_scale`).
Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasalloc.sim.space import SearchSpace

RIDGE = 0.05  # penalty = RIDGE x the mean per-parameter sum of squares of the centered coordinates
MIN_CONFIGS = 3


@dataclass(frozen=True)
class ConfigCostFit:
    """The fitted block (None when skipped, with `reason`) and how well it fits."""

    block: dict[str, Any] | None
    reason: str = ""
    n: int = 0
    rms_log_residual: float = 0.0
    rms_log_spread: float = 0.0  # rms of log step time about its mean (what a constant leaves)
    factors: list[float] = field(default_factory=list)  # fitted factor of each sampled configuration

    def report(self) -> dict[str, Any]:
        """The profile's `fit.config_cost` entry."""
        if self.block is None:
            return {"skipped": self.reason}
        return {"model": "epoch time x exp(sum_j slope_j*(u_j - center_j))/norm; u_j = unit coordinate of parameter j",
                "method": f"ridge least squares of log(k=1 step time) on centered unit coordinates (ridge {RIDGE:g} "
                          "x mean sum of squares per parameter); norm: mean factor over the sample = 1",
                "n": self.n, "rms_log_residual": float(f"{self.rms_log_residual:.4g}"),
                "rms_log_spread": float(f"{self.rms_log_spread:.4g}"),
                "factor_range": [float(f"{min(self.factors):.4g}"), float(f"{max(self.factors):.4g}")]}


def _g(x: float) -> float:
    return float(f"{x:.6g}")


def fit_config_cost(configs: Sequence[Mapping[str, Any]], space: Mapping[str, Any] | None,
                    ridge: float = RIDGE) -> ConfigCostFit:
    """`configs`: [{config: {...}, mean_step_s: ...}, ...]; `space`: the search space they were
    sampled from (the `space:` mapping of sim/space.py)."""
    n = len(configs)
    if n < MIN_CONFIGS:
        return ConfigCostFit(None, f"{n} configuration{'s' if n != 1 else ''} timed (needs >= {MIN_CONFIGS})", n=n)
    if not space:
        return ConfigCostFit(None, "no search space given", n=n)
    domains = [d for d in SearchSpace.from_config(space, "workload.space").domains if not d.is_categorical]
    if not domains:
        return ConfigCostFit(None, "no numeric parameters in the search space", n=n)
    u = np.array([[d.to_unit(c["config"][d.name]) for d in domains] for c in configs], dtype=float)
    y = np.log(np.array([c["mean_step_s"] for c in configs], dtype=float))
    center = u.mean(axis=0)
    x = u - center
    xtx = x.T @ x
    lam = ridge * float(np.trace(xtx)) / len(domains)
    slope = np.linalg.solve(xtx + max(lam, 1e-12) * np.eye(len(domains)), x.T @ (y - y.mean()))
    slopes = [_g(s) for s in slope]
    centers = [_g(c) for c in center]
    # norm from the rounded numbers the profile stores, so the stored block has mean factor 1
    expo = np.array([[s * (ui - c) for s, ui, c in zip(slopes, row, centers)] for row in u]).sum(axis=1)
    norm = _g(float(np.mean(np.exp(expo))))
    resid = y - y.mean() - x @ slope
    params = {}
    for d, s, c in zip(domains, slopes, centers):
        low, high = (int(d.low), int(d.high)) if d.type == "int" else (float(d.low), float(d.high))
        params[d.name] = {"type": d.type, "low": low, "high": high, "log": bool(d.log), "slope": s, "center": c}
    return ConfigCostFit({"params": params, "norm": norm}, n=n,
                         rms_log_residual=float(math.sqrt(np.mean(resid ** 2))),
                         rms_log_spread=float(math.sqrt(np.mean((y - y.mean()) ** 2))),
                         factors=[float(v) for v in np.exp(expo) / norm])


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
    return (f"config cost: epoch time x exp(slope . (u - center)) / {block['norm']:.3f}, fitted on {report.get('n', '?')} "
            f"configurations (slope per unit range: {terms}); factors {lo:.2f}-{hi:.2f} over the sample, rms log "
            f"residual {report.get('rms_log_residual', float('nan')):.3f} (spread {report.get('rms_log_spread', float('nan')):.3f})")
