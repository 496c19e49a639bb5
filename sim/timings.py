"""Measured epoch times: the per-(trial, epoch) timing source of a replayed search.

A search that really ran recorded how long each epoch of each trial took, and every trial has
its own architecture and so its own epoch time. When the replayed records hold such times
(`sim/records.py` reads them), the simulator takes each epoch's time from them instead of the
profile's `epoch_time(k) x config_factor`:

    seconds(trial, epoch, k) = recorded(trial, epoch) x epoch_time(k) / epoch_time(k_recorded)

The recorded time belongs to the k the trial ran at (`RecordedEpoch.k`); at another k it is
scaled by the profile's speed-up model. k_recorded = 1/m means m trials held the device, so
epoch_time(1/m) = epoch_time(1) x sharing(m) and the epoch's work alone on a device is
recorded x epoch_time(1) / epoch_time(1/m); the engine then slows that work by the sharing
of the moment, as for any epoch (`sim/engine.py`). The configuration factor is not applied:
the recorded time already is this configuration's.

What a recorded time spans depends on who recorded it. A `nasalloc run` trace has only the
times of results, so the time of a job's first epoch spans the job's start-up (and the
checkpoint restore of a resumed job), and every later one the decision after the epoch
before and the checkpoint written then (the executor writes one after every epoch it
continues from). The simulator adds those costs itself, at the k it simulates, so they are
taken out here: the profile's start-up(k_recorded), checkpoint_restore_s (for a resumed
job, resume(k_recorded) instead of both when the profile has `resume_s`), and
decision_latency_s + checkpoint_save_s (`RecordedEpoch.startup/restore/decision`). A time that comes out below zero (the run
started faster than the profile says) counts as 0 s and is counted in the stats. Ray Tune's
`time_this_iter_s`, Syne Tune's `st_worker_time` and a CSV's `epoch_seconds` are measured
inside the training process between reports: nothing is taken out, and the profile adds the
start-up of each job as for a simulated one.

An epoch a simulated trial trains but its recorded trial never did (it was stopped earlier in
the real run) takes the time of the last recorded epoch before it, as the learning curve
holds its last value (`ReplayWorkload`); such epochs are counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from nasalloc.sim.formatting import format_allocation
from nasalloc.sim.profile import Profile


@dataclass(frozen=True)
class RecordedEpoch:
    """One recorded epoch: its measured seconds, the devices per trial it ran at, and which of
    the costs the simulator adds itself the measurement also spans (module docstring)."""

    seconds: float
    k: Fraction
    startup: bool = False   # the first epoch of a nasalloc job: from its start event
    restore: bool = False   # ... of a job resumed from a checkpoint
    decision: bool = False  # a later epoch of a nasalloc job: from the result before


@dataclass(frozen=True)
class RecordedTimes:
    """Per recorded trial (in the order of the recorded curves): epoch -> RecordedEpoch, and
    `source`: what the times are, where they and k came from, what was assumed (reported)."""

    epochs: tuple[dict[int, RecordedEpoch], ...]
    source: str

    def ks(self) -> list[Fraction]:
        """The recorded allocations, ascending (for reports)."""
        return sorted({e.k for trial in self.epochs for e in trial.values()})

    def for_profile(self, profile: Profile) -> EpochTimes:
        return EpochTimes(self, profile)


class EpochTimes:
    """Per simulation: the time of epoch `epoch` of simulated trial `trial` at allocation k.

    Simulated trial i replays recorded trial i mod n (as its learning curve does)."""

    def __init__(self, recorded: RecordedTimes, profile: Profile):
        self.recorded = recorded
        self.profile = profile
        ov = profile.overheads
        self.net: list[dict[int, tuple[float, float]]] = []  # per recorded trial: epoch -> (seconds, k recorded)
        self.clamped = 0
        for trial in recorded.epochs:
            out = {}
            for epoch, rec in trial.items():
                k = float(rec.k)
                seconds = rec.seconds
                if rec.startup:  # the job's start, as the engine charges it: start-up or resume at k
                    for part in profile.start_parts(k, rec.restore):
                        seconds -= part
                if rec.decision:
                    seconds -= ov.decision_latency_s + ov.checkpoint_save_s
                if seconds < 0:
                    self.clamped += 1
                    seconds = 0.0
                out[epoch] = (seconds, k)
            self.net.append(out)
        self.sorted = [sorted(trial) for trial in self.net]
        self.ratios: dict[tuple[float, float], float] = {}
        self.held = 0

    def _ratio(self, k: float, k_recorded: float) -> float:
        key = (k, k_recorded)
        ratio = self.ratios.get(key)
        if ratio is None:
            ratio = self.ratios[key] = self.profile.epoch_time(k) / self.profile.epoch_time(k_recorded)
        return ratio

    def at(self, trial: int, epoch: int, k: float) -> tuple[float, float]:
        """(seconds of the epoch at allocation k on a device of its own or k >= 1 devices,
        the epoch's work in seconds alone on one device: what a shared device divides)."""
        i = trial % len(self.net)
        rec = self.net[i].get(epoch)
        if rec is None:
            self.held += 1
            epochs = self.sorted[i]
            before = [e for e in epochs if e < epoch]
            rec = self.net[i][before[-1] if before else epochs[0]]
        seconds, k_recorded = rec
        return seconds * self._ratio(k, k_recorded), seconds * self._ratio(1.0, k_recorded)

    def describe(self) -> str:
        ks = ", ".join(format_allocation(k) for k in self.recorded.ks())
        return (f"recorded: {self.recorded.source}; recorded at k = {ks}, scaled to each k by profile "
                f"{self.profile.name}'s epoch_time(k) / epoch_time(k recorded)")

    def stats(self) -> dict[str, Any]:
        return {
            "epoch_times": self.describe(),
            "epoch_times_held": self.held,
            "epoch_times_below_overheads": self.clamped,
        }


__all__ = ["EpochTimes", "RecordedEpoch", "RecordedTimes"]
