"""`profile.yaml`: what calibration measured and fitted, in the form the simulator reads as is.

Layout (every block but `name` and `workload`/`step_time` is optional; units in the key):

    name: resnet50-imagenet-a100
    description: free text
    sources: ["where each number comes from", ...]
    hardware: {device: NVIDIA A100 40GB, gpus_per_node: 4, intra_node: ..., inter_node: ...}
    provenance: {how, host, date, device, cpu_model, cores, torch}   # where measured (sim/provenance.py)
    workload: {samples_per_epoch: 1281167, batch_per_device: 256, scaling: weak, global_batch: null}
    step_time: {t_compute_s, gamma, grad_bytes, intra_bandwidth_Bps, intra_latency_s,
                inter_bandwidth_Bps, inter_latency_s, straggler_cv}       # see sim/speedup.py
    overheads: {startup_s, startup_per_doubling_s, eval_s, eval_scales, checkpoint_save_s,
                checkpoint_restore_s, decision_latency_s, release_s, release_per_doubling_s,
                resume_s, resume_per_doubling_s, startup_inter_node_s}
    sharing: {1: 1.0, 2: 1.8, 4: 3.5}     # m trials on one device -> per-trial slow-down
    scheduler_time: {bohb: {ask_s: 0.0009, result_s: 0.0001}, ...}  # the scheduler's own compute per call
    uncertainty: {step_time_samples: [{t_compute_s: ..., ...}, ...]}   # e.g. bootstrap fits
    config_cost: {params: {width: {type: int, low: 4, high: 32, log: true, slope: 1.2, center: 0.5}},
                  floor: 0.3, norm: 1.03, applies_to: compute} # configuration-dependent epoch time (below)
    assumed: [inter_latency_s, ...]       # parameters pinned, not measured
    measured: {...}                       # raw samples, kept verbatim
    fit: {...}                            # fit report, kept verbatim

Start-up cost of a job on k ranks: startup_s + startup_per_doubling_s * log2(k) (process
group creation grows with the group: github.com/NVIDIA/nccl/issues/534, /587 and /1156
report communicator set-up from seconds to minutes). `decision_latency_s` is the time between an
epoch's end and the next epoch's start spent on reporting and the scheduler's decision.
`checkpoint_save_s` is one checkpoint write (paid at every epoch the ranks checkpoint).
`checkpoint_restore_s` is what a job resumed from a checkpoint pays on top of a fresh job's
start-up: loading the checkpoint and the slower first epoch after it. `release_s` is the
end of a job after its last decision and save: the ranks return, the process group is torn
down and the devices are free (paid by every job; 0 when not measured); with
`release_per_doubling_s` it is release_s + release_per_doubling_s * log2(k) (a larger group
takes longer to tear down). `resume_s` (optional) is what a job resumed from a checkpoint
pays before its first epoch, measured as such (a paused trial resumed in a fresh group):
resume(k) = resume_s + resume_per_doubling_s * log2(k), in place of start-up(k) +
checkpoint_restore_s. `startup_inter_node_s` (default 0) is what a job spanning nodes (k >
gpus_per_node) pays on top of start-up(k) and resume(k): its rendezvous and process group
across nodes, a step at the node boundary that no log2 k line follows (on the Ray test
cluster, nodes of 2 CPU slots: 7 ms at k = 1, 9 ms at k = 2, 83 ms at k = 4 over two nodes).
On 2 CPU slots a resume costs 6 ms at k = 1 and 28 ms at k = 2, while
fresh jobs cost 15-17 ms at both (their first-seen configurations pay more; a resumed one was
seen before): start-up + one restore was 17 ms at either k. Without `resume_s`,
start-up(k) + checkpoint_restore_s.

Everything that prices an epoch or a job's start, end or move asks the Profile, and nothing
else computes these: `trial_epoch_time` (a trial's epoch at k with its configuration factor,
shared by m trials per device or not), `start_parts`/`start_cost` (start-up, or resume, or
start-up + restore, with the inter-node step), `end_cost` (save, release(k)) and `move_cost`
(the two together). The engine charges them and the elastic and unshare policies decide with
them, so a policy never expects a move to cost what the simulation does not charge.

`scheduler_time` (optional): seconds of the scheduler's own computation per call, per
scheduler name, as calibration timed it on this machine: `ask_s` per new job asked for
(BOHB fits and samples its density model there), `result_s` per result told. The executor
makes these calls in its one search loop, so the simulator charges them there
(`sim/engine.py`); a scheduler not listed costs 0.

`config_cost` (optional) makes the epoch time depend on the trial's configuration: a trial
with config c trains each epoch in epoch_time(k) x config_factor(c), where

    config_factor(c) = (floor + (1 - floor) * exp(sum_j slope_j * (u_j(c) - center_j))) / norm

u_j is the unit coordinate of parameter j's value, computed from the block's own low/high/log
as `sim/space.py` Domain.to_unit does (numeric parameters only; a config without parameter j
contributes 0 for it). `floor` (optional, 0 <= floor < 1, default 0) is the part of the step
time at the center that does not grow with the parameters (fixed per-step overhead: Python,
optimizer, kernel launches), so small models level off instead of getting ever cheaper;
floor 0 is the plain log-linear factor exp(...) / norm. Calibration fits the slopes (and
floor) from per-configuration k = 1 step times and sets `norm` so the mean factor over its
sample of configurations is 1 (t_compute_s being the sample's mean). Without the block every
factor is 1.

`applies_to` (optional, default `epoch`) says what the factor multiplies at k > 1: `epoch`,
the whole epoch_time(k); `compute`, only the configuration's own work, t_compute_s and
eval_s, inside the step-time model, so the all-reduce at k > 1 stays the measured one (the
factor is measured at k = 1, where a step is all compute). A k = 2 digits step on 2 CPU
slots is four fifths all-reduce: `epoch` made the widest configurations' k = 2 epochs
12-17% too slow, the narrowest 5-8% too fast. At k <= 1 both are the same.
Calibration writes `compute`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nasalloc.sim.errors import UserError
from nasalloc.sim.provenance import parse_provenance
from nasalloc.sim.space import Domain
from nasalloc.sim.speedup import EpochTimeModel, StepTimeModel


@dataclass(frozen=True)
class Overheads:
    startup_s: float = 0.0
    startup_per_doubling_s: float = 0.0
    eval_s: float = 0.0
    eval_scales: bool = True
    checkpoint_save_s: float = 0.0
    checkpoint_restore_s: float = 0.0
    decision_latency_s: float = 0.0
    release_s: float = 0.0
    release_per_doubling_s: float = 0.0
    resume_s: float | None = None  # None: a resume costs startup(k) + checkpoint_restore_s
    resume_per_doubling_s: float = 0.0
    startup_inter_node_s: float = 0.0  # added to start-up and resume of a job spanning nodes (Profile.startup_time)

    def startup(self, k: float) -> float:
        return self.startup_s + self.startup_per_doubling_s * math.log2(max(k, 1.0))

    def release(self, k: float) -> float:
        return self.release_s + self.release_per_doubling_s * math.log2(max(k, 1.0))

    def resume(self, k: float) -> float | None:
        """A resumed job's cost before its first epoch at k (None: not measured as such)."""
        if self.resume_s is None:
            return None
        return self.resume_s + self.resume_per_doubling_s * math.log2(max(k, 1.0))


@dataclass(frozen=True)
class ConfigCost:
    """Configuration-dependent epoch-time factor (module docstring): per parameter its domain
    (for the unit coordinate), slope and center; `floor` is the constant share at the center
    (0: plain log-linear); `norm` divides the result."""

    terms: tuple[tuple[Domain, float, float], ...]  # (domain, slope, center)
    norm: float = 1.0
    floor: float = 0.0
    compute_only: bool = False  # applies_to: compute (module docstring); False: the whole epoch

    def factor(self, config: Mapping[str, Any]) -> float:
        x = 0.0
        for domain, slope, center in self.terms:
            value = config.get(domain.name)
            if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue  # missing (or not a number): contributes 0
            x += slope * (domain.to_unit(value) - center)
        if self.floor == 0.0:
            return math.exp(x) / self.norm  # exactly the log-linear factor of profiles without a floor
        return (self.floor + (1.0 - self.floor) * math.exp(x)) / self.norm


@dataclass(frozen=True)
class Profile:
    name: str
    epoch: EpochTimeModel
    overheads: Overheads
    gpus_per_node: int
    description: str = ""
    sources: tuple[str, ...] = ()
    hardware: dict[str, Any] = field(default_factory=dict)
    step_time_samples: tuple[StepTimeModel, ...] = ()
    assumed: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)  # the whole file, for round-tripping
    config_cost: ConfigCost | None = None
    provenance: dict[str, Any] | None = None  # where it was measured (sim/provenance.py); None: not said
    scheduler_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (ask_s, result_s)

    def scheduler_time(self, name: str) -> tuple[float, float]:
        """(ask_s, result_s): the scheduler's own seconds per ask and per result (0 if not calibrated)."""
        return self.scheduler_times.get(name, (0.0, 0.0))

    def epoch_time(self, k: float) -> float:
        return self.epoch.epoch_time(k)

    def config_factor(self, config: Mapping[str, Any]) -> float:
        """Epoch-time multiplier of a trial with `config` (1.0 without a `config_cost` block)."""
        return 1.0 if self.config_cost is None else self.config_cost.factor(config)

    def trial_epoch_time(self, k: float, factor: float, sharers: int = 0) -> float:
        """Seconds per epoch at k of a trial whose `config_factor` is `factor`: epoch_time(k) x
        factor, or with `config_cost.applies_to: compute` at k > 1, epoch_time(k) with
        t_compute_s and eval_s x factor (the all-reduce unscaled). At k = 1/m the epoch alone
        on a device slowed by the sharing curve for `sharers` trials on the device (0: the
        device full, m of them), as the engine trains it. What the engine charges and what the
        policies weigh (`sim/elastic.py`, `sim/unshare.py`) are this one function."""
        if k < 1:
            return self.epoch_time(1) * self.epoch.sharing_slowdown(sharers or round(1 / k)) * factor
        if k == 1 or self.config_cost is None or not self.config_cost.compute_only:
            return self.epoch_time(k) * factor
        epoch, step = self.epoch, self.epoch.step
        scaled = dataclasses.replace(epoch, step=dataclasses.replace(step, t_compute_s=step.t_compute_s * factor),
                                     eval_s=epoch.eval_s * factor)
        return scaled.epoch_time(k)

    def startup_time(self, k: float) -> float:
        """A fresh job's start-up at k: startup(k), plus `startup_inter_node_s` when the job
        spans nodes (k > gpus_per_node: the rendezvous and process group across nodes)."""
        if k > self.epoch.gpus_per_node:
            return self.overheads.startup(k) + self.overheads.startup_inter_node_s
        return self.overheads.startup(k)

    def resume_time(self, k: float) -> float | None:
        """A resumed job's cost before its first epoch at k, where the profile measured it as
        such (`resume_s`; plus `startup_inter_node_s` across nodes); None: start-up + restore."""
        resume = self.overheads.resume(k)
        if resume is None or k <= self.epoch.gpus_per_node:
            return resume
        return resume + self.overheads.startup_inter_node_s

    def start_parts(self, k: float, resumed: bool) -> tuple[float, ...]:
        """The seconds a job on k devices pays before its first epoch, in the order they are
        added: a fresh job its start-up(k); a resumed one resume(k) where the profile measured
        it as such, else start-up(k) and then `checkpoint_restore_s`. Parts, not a sum, so that
        whoever adds or subtracts them does so in one order (a float sum depends on it)."""
        if not resumed:
            return (self.startup_time(k),)
        resume = self.resume_time(k)
        if resume is not None:
            return (resume,)
        return (self.startup_time(k), self.overheads.checkpoint_restore_s)

    def start_cost(self, k: float, resumed: bool, after: float = 0.0) -> float:
        """`after` (seconds already spent, added first) plus what a job on k devices pays before
        its first epoch (`start_parts`)."""
        cost = after
        for part in self.start_parts(k, resumed):
            cost += part
        return cost

    def end_cost(self, k: float, saved: bool = True, after: float = 0.0) -> float:
        """`after` (seconds already spent, added first) plus the end of a job on k devices after
        its last decision: the checkpoint write where it saves one (`checkpoint_save_s`), then
        release(k) (the ranks return, the group is torn down, the devices are free)."""
        cost = after + self.overheads.checkpoint_save_s if saved else after
        return cost + self.overheads.release(k)

    def move_cost(self, k_from: float, k_to: float) -> float:
        """What moving a running trial from k_from to k_to devices adds to its time: the job at
        k_from saves and ends (`end_cost`), the one at k_to resumes from that checkpoint
        (`start_cost`), the inter-node step included where it spans nodes. The decision
        after the epoch is paid either way, so it is not part of the move."""
        return self.start_cost(k_to, True, after=self.end_cost(k_from))

    def with_node_size(self, gpus_per_node: int) -> Profile:
        """The same profile on nodes of `gpus_per_node` (where inter-node terms start)."""
        if self.epoch.gpus_per_node == gpus_per_node:
            return self
        return dataclasses.replace(self, epoch=dataclasses.replace(self.epoch, gpus_per_node=gpus_per_node))

    def node_size_warning(self, gpus_per_node: int) -> str | None:
        """One line when a cluster's node size differs from a node size this profile only
        assumed (`gpus_per_node` under `assumed:`, e.g. imported timings that did not say):
        its fit took every k up to that size as inside one node."""
        if "gpus_per_node" not in self.assumed or gpus_per_node == self.gpus_per_node:
            return None
        return (f"warning: profile {self.name} assumed {self.gpus_per_node} GPUs per node (its timings did not say), "
                f"this cluster has {gpus_per_node}: its fit took every k up to {self.gpus_per_node} as inside one node; "
                f"if the timings came from nodes of {gpus_per_node}, recalibrate with calibration.gpus_per_node="
                f"{gpus_per_node}")

    def with_step_sample(self, index: int) -> Profile:
        """The same profile with step-time parameters from uncertainty sample `index`."""
        if not self.step_time_samples:
            return self
        sample = self.step_time_samples[index % len(self.step_time_samples)]
        return dataclasses.replace(self, epoch=self.epoch.with_step(sample))


class TrialFactors:
    """Each trial's `config_factor`, computed once per trial (its configuration never changes)
    and shared by everyone who prices its epochs in one search: the engine and the policies
    ask the same instance, so they use the same factor."""

    def __init__(self, profile: Profile):
        self._factor = None if profile.config_cost is None else profile.config_factor
        self._of: dict[int, float] = {}

    def __call__(self, trial: int, config: Mapping[str, Any]) -> float:
        if self._factor is None:
            return 1.0
        factor = self._of.get(trial)
        if factor is None:
            factor = self._of[trial] = self._factor(config)
        return factor


_STEP_KEYS = {f.name for f in dataclasses.fields(StepTimeModel)}
_TOP_KEYS = {"name", "description", "sources", "hardware", "workload", "step_time", "overheads",
             "sharing", "uncertainty", "assumed", "measured", "fit", "config_cost", "provenance", "scheduler_time"}
_COST_PARAM_KEYS = ("type", "low", "high", "log", "slope", "center")


def _signed(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserError(f"{where}={value!r}: must be a finite number")
    return float(value)


def _config_cost(node: Any, where: str) -> ConfigCost:
    """The `config_cost` block (module docstring) as a ConfigCost; UserError naming the bad entry."""
    if not isinstance(node, Mapping):
        raise UserError(f"{where}: expected a mapping with params, norm and optionally floor")
    unknown = sorted(set(node) - {"params", "norm", "floor", "applies_to"})
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown; allowed: applies_to, floor, norm, params")
    applies_to = node.get("applies_to", "epoch")
    if applies_to not in ("epoch", "compute"):
        raise UserError(f"{where}.applies_to={applies_to!r}: allowed: epoch, compute")
    params = node.get("params")
    if not isinstance(params, Mapping) or not params:
        raise UserError(f"{where}.params: expected a non-empty mapping name -> {{type, low, high, log, slope, center}}")
    norm = _number(f"{where}.norm", node.get("norm", 1.0), positive=True)
    floor = _number(f"{where}.floor", node.get("floor", 0.0))
    if floor >= 1.0:
        raise UserError(f"{where}.floor={node['floor']!r}: must be < 1 (the share of the step time that does not scale)")
    terms = []
    for name, spec in params.items():
        at = f"{where}.params.{name}"
        if not isinstance(spec, Mapping):
            raise UserError(f"{at}: expected {{type: float|int, low, high, log, slope, center}}")
        unknown = sorted(set(spec) - set(_COST_PARAM_KEYS))
        if unknown:
            raise UserError(f"{at}.{unknown[0]}: unknown; allowed: {', '.join(_COST_PARAM_KEYS)}")
        kind = spec.get("type")
        if kind not in ("float", "int"):
            raise UserError(f"{at}.type={kind!r}: allowed: float, int (numeric parameters only)")
        for key in ("low", "high", "slope"):
            if key not in spec:
                raise UserError(f"{at}.{key}: missing")
        low, high = _signed(f"{at}.low", spec["low"]), _signed(f"{at}.high", spec["high"])
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{at}.log={log!r}: must be true or false")
        if low > high:
            raise UserError(f"{at}: low={low:g} must not exceed high={high:g}")
        if log and low <= 0:
            raise UserError(f"{at}.low={low:g}: a log-scaled range must be positive")
        slope = _signed(f"{at}.slope", spec["slope"])
        center = _signed(f"{at}.center", spec.get("center", 0.5))
        terms.append((Domain(str(name), kind, low=low, high=high, log=log), slope, center))
    return ConfigCost(terms=tuple(terms), norm=norm, floor=floor, compute_only=applies_to == "compute")


def _number(where: str, value: Any, *, positive: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, str) and value.strip().lower() in ("inf", ".inf", "infinity"):
        value = math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}={value!r}: must be a number")
    x = float(value)
    if math.isnan(x) or (math.isinf(x) and not allow_inf):
        raise UserError(f"{where}={value!r}: must be a finite number")
    if x < 0 or (positive and x == 0):
        raise UserError(f"{where}={value!r}: must be {'> 0' if positive else '>= 0'}")
    return x


def _step_model(node: Any, where: str) -> StepTimeModel:
    if not isinstance(node, Mapping):
        raise UserError(f"{where}: expected a mapping with {', '.join(sorted(_STEP_KEYS))}")
    unknown = sorted(set(node) - _STEP_KEYS)
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown; allowed: {', '.join(sorted(_STEP_KEYS))}")
    if "t_compute_s" not in node:
        raise UserError(f"{where}.t_compute_s: missing (seconds per step on one device)")
    values = {}
    for key, value in node.items():
        bandwidth = key.endswith("bandwidth_Bps")
        values[key] = _number(f"{where}.{key}", value, positive=key in ("t_compute_s", "gamma") or bandwidth, allow_inf=bandwidth)
    if not 1.0 <= values.get("gamma", 1.0) <= 10.0:
        raise UserError(f"{where}.gamma={values['gamma']}: must lie in [1, 10]")
    return StepTimeModel(**values)


_WORKLOAD_KEYS = ("samples_per_epoch", "batch_per_device", "scaling", "global_batch")
_FREE_BLOCKS = ("hardware", "measured", "fit")  # facts and reports kept verbatim: any keys, but mappings


def _mapping(where: str, node: Any, allowed: tuple[str, ...] | None = None) -> Mapping:
    """`node` as a mapping whose keys are all in `allowed` (None: any); UserError naming the
    first unknown key and the allowed ones."""
    if not isinstance(node, Mapping):
        raise UserError(f"{where}={node!r}: expected a mapping" + (f" with {', '.join(allowed)}" if allowed else ""))
    if allowed is not None:
        unknown = sorted(str(k) for k in node if k not in allowed)
        if unknown:
            raise UserError(f"{where}.{unknown[0]}: unknown; allowed: {', '.join(allowed)}")
    return node


def _strings(where: str, node: Any) -> tuple[str, ...]:
    """A list of strings (null: none)."""
    if node is None:
        return ()
    if not isinstance(node, list) or not all(isinstance(x, str) for x in node):
        raise UserError(f"{where}={node!r}: expected a list of strings")
    return tuple(node)


def _whole(where: str, value: Any) -> int:
    """A whole number > 0 (an epoch of 12.7 samples or a batch of 2.5 is a typo, not a rounding)."""
    x = _number(where, value, positive=True)
    if x != int(x):
        raise UserError(f"{where}={value!r}: must be a whole number")
    return int(x)


def _sharing(where: str, node: Any) -> dict[int, float]:
    """m trials on one device -> each one's slow-down: m = 1 is 1 (alone), and for m >= 2 each
    trial is at least as slow as alone (the device is shared, not multiplied)."""
    node = _mapping(where, node)
    sharing: dict[int, float] = {}
    for m, f in node.items():
        text = str(m).strip()
        if isinstance(m, bool) or not text.isdigit():
            raise UserError(f"{where}.{m}: the key must be a whole number of trials per device")
        mi = int(text)
        if mi < 1:
            raise UserError(f"{where}.{m}: must be >= 1")
        x = _number(f"{where}.{m}", f, positive=True)
        if mi == 1 and x != 1.0:
            raise UserError(f"{where}.1={f!r}: must be 1 (one trial alone on its device is the reference)")
        if x < 1.0:
            raise UserError(f"{where}.{m}={f!r}: must be >= 1 (each of {mi} trials sharing a device runs no faster "
                            "than one alone)")
        sharing[mi] = x
    return sharing


def _scheduler_time(where: str, node: Any) -> dict[str, tuple[float, float]]:
    """The `scheduler_time` block: name -> {ask_s, result_s} (seconds >= 0, both required)."""
    out = {}
    for name, times in _mapping(where, node).items():
        times = _mapping(f"{where}.{name}", times, ("ask_s", "result_s"))
        for key in ("ask_s", "result_s"):
            if key not in times:
                raise UserError(f"{where}.{name}.{key}: missing (seconds per call)")
        out[str(name)] = (_number(f"{where}.{name}.ask_s", times["ask_s"]),
                          _number(f"{where}.{name}.result_s", times["result_s"]))
    return out


def parse_profile(data: Any, source: str = "profile") -> Profile:
    """Validate a profile mapping (as loaded from YAML) into a Profile; UserError if bad.

    Every key is checked: a typo (`workload.scalling`) would otherwise be read as the block's
    default, so unknown keys are refused naming the allowed ones, and so are values no
    measurement can give (a shared device that makes each trial faster, a batch of 2.5).
    """
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: not a profile (expected a YAML mapping)")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("name", "workload", "step_time"):
        if key not in data:
            raise UserError(f"{source}: missing {key!r}")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise UserError(f"{source}: name={data['name']!r}: must be a non-empty string")
    if data.get("description") is not None and not isinstance(data["description"], str):
        raise UserError(f"{source}: description={data['description']!r}: must be a string")
    for key in _FREE_BLOCKS:
        if data.get(key) is not None:
            _mapping(f"{source}: {key}", data[key])
    hardware = dict(data.get("hardware") or {})
    gpn = hardware.get("gpus_per_node", 1)
    if isinstance(gpn, bool) or not isinstance(gpn, int) or gpn < 1:
        raise UserError(f"{source}: hardware.gpus_per_node={gpn!r}: must be an integer >= 1")
    wl = _mapping(f"{source}: workload", data["workload"], _WORKLOAD_KEYS)
    samples = _whole(f"{source}: workload.samples_per_epoch", wl.get("samples_per_epoch"))
    batch = _whole(f"{source}: workload.batch_per_device", wl.get("batch_per_device"))
    scaling = wl.get("scaling", "weak")
    if scaling not in ("weak", "strong"):
        raise UserError(f"{source}: workload.scaling={scaling!r}: allowed: weak, strong")
    global_batch = wl.get("global_batch")
    if scaling == "strong":
        if global_batch is None:
            raise UserError(f"{source}: workload.global_batch: required with scaling: strong")
        global_batch = _whole(f"{source}: workload.global_batch", global_batch)
    elif global_batch is not None:
        raise UserError(f"{source}: workload.global_batch={global_batch!r}: only with scaling: strong (weak scaling "
                        "keeps the per-device batch, so the global batch grows with k); use null")
    step = _step_model(data["step_time"], f"{source}: step_time")
    ov_node = _mapping(f"{source}: overheads", data.get("overheads") or {}, tuple(f.name for f in dataclasses.fields(Overheads)))
    ov_values: dict[str, Any] = {}
    for key, value in ov_node.items():
        if key == "eval_scales":
            if not isinstance(value, bool):
                raise UserError(f"{source}: overheads.eval_scales={value!r}: must be true or false")
            ov_values[key] = value
        else:
            ov_values[key] = _number(f"{source}: overheads.{key}", value)
    overheads = Overheads(**ov_values)
    sharing = _sharing(f"{source}: sharing", data.get("sharing") or {1: 1.0})
    uncertainty = _mapping(f"{source}: uncertainty", data.get("uncertainty") or {}, ("step_time_samples",))
    samples_node = uncertainty.get("step_time_samples") or []
    if not isinstance(samples_node, list):
        raise UserError(f"{source}: uncertainty.step_time_samples: expected a list of step_time mappings")
    step_samples = tuple(_step_model({**data["step_time"], **_mapping(f"{source}: uncertainty.step_time_samples[{i}]", s)},
                                     f"{source}: uncertainty.step_time_samples[{i}]") for i, s in enumerate(samples_node))
    epoch = EpochTimeModel(
        step=step, samples_per_epoch=samples, batch_per_device=batch, gpus_per_node=gpn, scaling=scaling,
        global_batch=global_batch, eval_s=overheads.eval_s, eval_scales=overheads.eval_scales, sharing=sharing,
    )
    sources = _strings(f"{source}: sources", data.get("sources"))
    assumed = _strings(f"{source}: assumed", data.get("assumed"))
    cost = _config_cost(data["config_cost"], f"{source}: config_cost") if data.get("config_cost") is not None else None
    provenance = parse_provenance(data["provenance"], f"{source}: provenance") if data.get("provenance") is not None else None
    return Profile(
        name=str(data["name"]), epoch=epoch, overheads=overheads, gpus_per_node=gpn,
        description=str(data.get("description") or ""), sources=sources,
        hardware=hardware, step_time_samples=step_samples, assumed=assumed,
        raw=dict(data), config_cost=cost, provenance=provenance,
        scheduler_times=_scheduler_time(f"{source}: scheduler_time", data.get("scheduler_time") or {}),
    )


# The folder is `profiles`, not `profile`: Hydra treats every folder of the config module as a
# config group, and a group named like the `profile` setting makes every `profile=...`
# override fail ("Could not override 'profile'. No match in the defaults list").
PROFILE_FOLDER = "profiles"


def shipped_profiles() -> list[str]:
    """Names of the profiles shipped in `nasalloc.conf/profiles/` (usable as `profile=NAME`)."""
    folder = resources.files("nasalloc.conf") / PROFILE_FOLDER
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (`resnet50_a100`) or a profile.yaml by path."""
    text_name = str(name_or_path)
    if text_name in shipped_profiles():
        resource = resources.files("nasalloc.conf") / PROFILE_FOLDER / f"{text_name}.yaml"
        return parse_profile(yaml.safe_load(resource.read_text(encoding="utf-8")), f"profile {text_name}")
    path = Path(text_name).expanduser()
    if not path.is_file():
        shipped = ", ".join(shipped_profiles()) or "(none)"
        raise UserError(f"profile={text_name}: neither a shipped profile ({shipped}) nor an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid YAML") from None
    return parse_profile(data, str(path))


def dump_profile(data: Mapping[str, Any], path: Path) -> None:
    """Write a profile mapping as YAML atomically, after checking it parses."""
    parse_profile(data, str(path))
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None), encoding="utf-8")
    tmp.replace(path)
