"""What one calibration measured, as raw samples: the input of every fit and of the report.

Both producers fill the same record, so fitting, reporting and the profile never care where
the numbers came from: `profiling.profile_training` (real DDP runs) and
`import_csv.read_timings` (timings the user already has).

Raw samples are kept (not only means): the bootstrap resamples them, and the profile's
`measured:` block stores them verbatim so a later fit (or a person) can redo the analysis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OVERHEADS = ("startup_s", "eval_s", "checkpoint_save_s", "checkpoint_restore_s", "decision_latency_s")  # measured costs


def _rounded(values: Any, digits: int = 6) -> list[float]:
    """Floats with `digits` significant digits: enough for timings, small in YAML."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values, dtype=float).ravel()]


@dataclass
class Measurements:
    """Raw timings of one training function on one machine.

    step_samples[k]       seconds per optimizer step on k ranks (k >= 1), warm-up dropped;
                          for k > 1 the slowest rank's view is what a synchronous step costs,
                          so rank 0's intervals are used (every rank waits in the all-reduce).
    batch_fraction[k]     per-rank batch at k over batch_per_device (1 under weak scaling).
    share_samples[m]      seconds per step of one of m trials sharing one device (m >= 2).
    share_reference[m]    seconds per step of one trial alone on that device, measured just
                          before the m-trial run (so load on the machine drifts less between
                          the two; without it the k = 1 samples are the reference).
    startup_s[k]          seconds a fresh job on k ranks takes from dispatch to its first
                          report, less one epoch of the same job (one value per job): the
                          start-up a search's trace shows (see calibration/profiling.py).
    resume_s[k]           seconds a job on k ranks resumed from a paused job's checkpoint, in a
                          fresh process group, takes from dispatch to its first report, less
                          one epoch of the same job: what a resume costs in a search's trace
                          (restart, restore, the slower first epoch after it).
    pause_s[k]            seconds from a job's report that is answered PAUSE (save the
                          checkpoint) to the launcher hearing that the job ended: a pause as
                          the executor pays it (decision round trip, save, the end of the job).
    eval_s, checkpoint_save_s, checkpoint_restore_s: per-epoch evaluation and per-checkpoint
                          costs at k = 1, one value per observation (with sampled
                          configurations, eval_s holds one steady mean per configuration).
    configs               configurations sampled from the search space and timed at k = 1:
                          [{config, mean_step_s, steps, eval_s, startup_s}, ...] (empty: none).
    reference_config      the sampled configuration the step samples were measured at.
    config_scale          mean step over the sampled configurations (their short runs) / the
                          reference configuration's precise k = 1 mean; the fit scales the
                          compute part of every k's step samples by it (`scaled_step_samples`),
                          so the k = 1 level is the configurations' mean and each k > 1 keeps the
                          communication measured; the raw samples are kept.
    decision_latency_s    the rest of an epoch boundary at k = 1 (report, scheduler answer,
                          next epoch's data set-up): boundary interval - eval - one step.
    steps_per_epoch[k]    optimizer steps in one epoch at k, as observed (profiling only).
    hardware              device and node facts (device name, count, gpus_per_node, backend).
    source                "profiling" or "csv:PATH".
    assumed               quantity -> one line saying why it was not measured and what the
                          profile states instead; the profile lists each under `assumed:` and
                          calibration prints each as a warning (`assumptions`).
    """

    step_samples: dict[int, np.ndarray]
    batch_fraction: dict[int, float] = field(default_factory=dict)
    share_samples: dict[int, np.ndarray] = field(default_factory=dict)
    share_reference: dict[int, np.ndarray] = field(default_factory=dict)
    startup_s: dict[int, list[float]] = field(default_factory=dict)
    resume_s: dict[int, list[float]] = field(default_factory=dict)
    pause_s: dict[int, list[float]] = field(default_factory=dict)
    eval_s: list[float] = field(default_factory=list)
    checkpoint_save_s: list[float] = field(default_factory=list)
    checkpoint_restore_s: list[float] = field(default_factory=list)
    decision_latency_s: list[float] = field(default_factory=list)
    steps_per_epoch: dict[int, int] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    source: str = "profiling"
    notes: list[str] = field(default_factory=list)
    configs: list[dict[str, Any]] = field(default_factory=list)
    reference_config: dict[str, Any] | None = None
    config_scale: float = 1.0
    assumed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.step_samples = {int(k): np.asarray(v, dtype=float) for k, v in sorted(self.step_samples.items())}
        self.share_samples = {int(m): np.asarray(v, dtype=float) for m, v in sorted(self.share_samples.items())}
        self.share_reference = {int(m): np.asarray(v, dtype=float) for m, v in sorted(self.share_reference.items())}
        for k in self.step_samples:
            self.batch_fraction.setdefault(k, 1.0)

    @property
    def ks(self) -> list[int]:
        return sorted(self.step_samples)

    def scaled_step_samples(self) -> dict[int, np.ndarray]:
        """Step samples of the search's typical configuration: each k's raw samples plus
        (config_scale - 1) x its compute.

        Configurations differ in compute (a width changes the model's arithmetic); the
        all-reduce of a k > 1 step is the reference configuration's as measured. A step at k
        holds the compute of its per-rank batch, t_c x b(k)/b (the step-time model's T_c),
        and t_c is the reference's k = 1 mean step (k = 1 has no communication), so only that
        share moves. Multiplying whole steps instead scaled the communication too: on the
        2-core build machine a k = 2 digits step is four fifths all-reduce, and a scale of 1.18
        made every k = 2 epoch 14% too slow."""
        if self.config_scale == 1.0 or 1 not in self.step_samples or not len(self.step_samples[1]):
            return dict(self.step_samples)
        shift = (self.config_scale - 1.0) * float(np.mean(self.step_samples[1]))
        return {k: v + shift * self.batch_fraction.get(k, 1.0) for k, v in self.step_samples.items()}

    def config_summary(self) -> dict[str, Any] | None:
        """Per-configuration k = 1 step times and their spread (None: no configurations sampled)."""
        if not self.configs:
            return None
        means = np.array([c["mean_step_s"] for c in self.configs], dtype=float)
        return {
            "n": len(means),
            "mean_step_s": float(f"{np.mean(means):.6g}"),
            "min_step_s": float(f"{np.min(means):.6g}"),
            "max_step_s": float(f"{np.max(means):.6g}"),
            "cv": float(f"{np.std(means, ddof=1) / np.mean(means) if len(means) > 1 else 0.0:.4g}"),
            "reference_config": self.reference_config,
            "scale": float(f"{self.config_scale:.6g}"),
        }

    def mean_step(self, k: int) -> float:
        """Mean seconds per step: epoch time is a sum of steps, so the mean (not the median,
        which understates a long tail) is what predicts it."""
        return float(np.mean(self.step_samples[k]))

    def sharing_slowdown(self) -> dict[int, float]:
        """m -> per-trial slow-down when m trials share one device (1 for m = 1), as measured:
        a ratio just below 1 is noise around a device that sharing hardly slows, which the
        profile writes as 1, its bound (calibration/report.py records that it did)."""
        if 1 not in self.step_samples:
            return {}
        out = {1: 1.0}
        for m, v in self.share_samples.items():
            ref = self.share_reference.get(m)
            alone = float(np.mean(ref)) if ref is not None and len(ref) else self.mean_step(1)
            if len(v):
                out[m] = float(np.mean(v)) / alone
        return out

    def assumptions(self) -> dict[str, str]:
        """Every per-epoch or start-up cost without a sample (the profile writes 0 for it) and
        everything in `assumed`, each with its one-line reason: what the profile lists under
        `assumed:` rather than claiming it measured."""
        why = "not in the timings" if self.source.startswith("csv:") else "no run showed it"
        seen = {key: bool(getattr(self, key)) for key in OVERHEADS}
        seen["checkpoint_restore_s"] |= bool(self.resume_s)  # a resumed job's extra start-up is the restore
        seen["release_s"] = bool(self.pause_s)  # the end of a job: a measured pause less its parts
        out = {key: f"{key}: not measured ({why}); the profile assumes 0 s" for key, ok in seen.items() if not ok}
        return {**out, **self.assumed}

    def to_dict(self) -> dict[str, Any]:
        """The profile's `measured:` block: every raw sample, plus per-k summaries to read."""
        summary = {
            int(k): {
                "n": int(len(v)),
                "mean_s": float(f"{np.mean(v):.6g}"),
                "median_s": float(f"{np.median(v):.6g}"),
                "std_s": float(f"{np.std(v, ddof=1) if len(v) > 1 else 0.0:.6g}"),
                "batch_fraction": float(self.batch_fraction.get(k, 1.0)),
            }
            for k, v in self.step_samples.items()
        }
        out: dict[str, Any] = {
            "source": self.source,
            "step_time_summary": summary,
            "step_time_samples_s": {int(k): _rounded(v) for k, v in self.step_samples.items()},
        }
        if self.share_samples:
            out["sharing_step_time_samples_s"] = {int(m): _rounded(v) for m, v in self.share_samples.items()}
        if self.share_reference:
            out["sharing_reference_step_time_samples_s"] = {int(m): _rounded(v) for m, v in self.share_reference.items()}
        for key in ("startup_s", "resume_s", "pause_s"):
            per_k = getattr(self, key)
            if per_k:
                out[key] = {int(k): _rounded(v) for k, v in per_k.items()}
        for key in ("eval_s", "checkpoint_save_s", "checkpoint_restore_s", "decision_latency_s"):
            values = getattr(self, key)
            if values:
                out[key] = _rounded(values)
        if self.steps_per_epoch:
            out["steps_per_epoch"] = {int(k): int(v) for k, v in self.steps_per_epoch.items()}
        if self.configs:
            out["configs"] = {
                **(self.config_summary() or {}),
                "sampled": [{"config": dict(c["config"]), "mean_step_s": float(f"{c['mean_step_s']:.6g}"),
                             "steps": int(c["steps"]),
                             **{key: float(f"{c[key]:.6g}") for key in ("eval_s", "startup_s") if c.get(key) is not None}}
                            for c in self.configs],
            }
        if self.notes:
            out["notes"] = list(self.notes)
        if self.assumptions():
            out["not_measured"] = dict(self.assumptions())
        return out
