"""Everything fitted from one set of `Measurements`: the step-time model with its bootstrap,
the baselines and their comparison, and the overheads. Pure: no I/O, no printing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nasalloc.calibration.fit import (
    BaselineFit,
    FitSettings,
    LineFit,
    ModelScore,
    StepData,
    StepFit,
    baselines_cannot_fit,
    bootstrap_step_fits,
    compare_models,
    fit_baseline,
    fit_startup_across_nodes,
    fit_step_time,
    predict_step_time,
    robust_cv,
)
from nasalloc.calibration.measurements import Measurements
from nasalloc.sim.speedup import StepTimeModel


@dataclass(frozen=True)
class Analysis:
    settings: FitSettings
    data: StepData
    step: StepFit
    step_samples: list[StepTimeModel]  # bootstrap refits (successful ones)
    bootstrap_requested: int
    amdahl: BaselineFit
    linear: BaselineFit
    scores: list[ModelScore]
    best: str
    basis: str
    startup: LineFit  # start-up(k), with its step for jobs across nodes where both sides were measured
    baselines_note: str | None = None  # why Amdahl and linear cannot fit these step times (None: they do)

    def speedup(self, model: StepTimeModel, k: np.ndarray, batch_fraction: np.ndarray) -> np.ndarray:
        """Throughput at k relative to one device under `model`: k b(k) T(1) / T(k)."""
        t = predict_step_time(model, k, self.settings.gpus_per_node, batch_fraction)
        return k * batch_fraction * model.t_compute_s / t

    def speedup_band(self, k: np.ndarray, batch_fraction: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise `level` band of the fitted speedup over the bootstrap refits."""
        if not self.step_samples:
            s = self.speedup(self.step.model, k, batch_fraction)
            return s, s
        curves = np.array([self.speedup(m, k, batch_fraction) for m in self.step_samples])
        lo, hi = np.percentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return lo, hi


def analyse(m: Measurements, settings: FitSettings, *, bootstrap: int, rng: np.random.Generator) -> Analysis:
    """Fit the step-time model (cv measured from k = 1), bootstrap it, fit baselines and start-up.

    The step samples' compute is scaled to the mean over sampled configurations first
    (`Measurements.scaled_step_samples`), so t_compute_s describes the search's typical
    configuration; the communication and the straggler cv are those measured."""
    steps = m.scaled_step_samples()  # the search's typical configuration (config_scale = 1 without sampling)
    data = StepData.from_samples(steps, m.batch_fraction)
    cv = robust_cv(m.step_samples[1])  # the relative spread of the steps as measured
    step = fit_step_time(data, settings, straggler_cv=cv)
    samples = bootstrap_step_fits(steps, m.batch_fraction, settings, step, bootstrap, rng) if bootstrap > 0 else []
    scores, best, basis = compare_models(data, settings, step.model.straggler_cv)
    return Analysis(settings=settings, data=data, step=step, step_samples=samples, bootstrap_requested=bootstrap,
                    amdahl=fit_baseline("amdahl", data), linear=fit_baseline("linear", data), scores=scores, best=best,
                    basis=basis, startup=fit_startup_across_nodes(m.startup_s, settings.gpus_per_node),
                    baselines_note=baselines_cannot_fit(data))
