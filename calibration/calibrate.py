"""`nasalloc calibrate`: profile a training function at a few k (or import timings) -> profile.yaml.

`load` validates everything before Hydra makes a folder: the settings, the entrypoint (it
must import), k against the devices present, and an imported CSV (parsed in full there). `main`
profiles (`profiling`), fits (`analysis`) and writes profile.yaml, speedup.png and a table
(`report`). The profile goes through `sim.profile.dump_profile`, so the simulator reads it
as is: `nasalloc simulate profile=<out_dir>/profile.yaml`.

With `backend=ray` the devices present are a Ray cluster's (`ray.address`, joined as `nasalloc
run backend=ray` joins it), numbered node by node: the default k list then reaches across
nodes, so the inter-node terms and the start-up per doubling are fitted from measurements, and
every job runs on the run's own warm Ray actors (calibration/profiling.py). The profile's
`hardware.ray` and `provenance.how` say so.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from omegaconf import DictConfig

from nasalloc.calibration.analysis import Analysis, analyse
from nasalloc.calibration.fit import FITTABLE, FitSettings
from nasalloc.calibration.import_csv import read_timings
from nasalloc.calibration.measurements import Measurements
from nasalloc.calibration.profiling import ProfilingPlan, profile_training
from nasalloc.calibration.report import WorkloadFacts, build_profile, plot_speedup, summary_lines, summary_table
from nasalloc.execute.backend import WorkersDidNotStart
from nasalloc.execute.run import BACKENDS, RayConfig
from nasalloc.execute.worker import check_entrypoint
from nasalloc.sim.config import require, require_choice, to_typed
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_duration
from nasalloc.sim.profile import dump_profile
from nasalloc.sim.provenance import FIELDS, this_machine

if TYPE_CHECKING:
    from nasalloc.execute.ray_backend import RayTarget


@dataclass
class TrainConf:
    """`train` of conf/calibrate.yaml: the training function to profile. No field has a
    default; the YAML is the one place they are written (and what each means)."""

    entrypoint: str
    config: dict[str, Any]
    batch_per_device: int
    scaling: str
    samples_per_epoch: Optional[int]
    grad_bytes: Optional[float]
    eval_scales: bool
    space: Optional[dict[str, Any]]  # search space; None: the built-in trainer's (conf/train), else none

    def __post_init__(self) -> None:
        require(self.batch_per_device >= 1, f"batch_per_device={self.batch_per_device}: must be an integer >= 1")
        require_choice("scaling", self.scaling, ("weak", "strong"))
        require(self.samples_per_epoch is None or self.samples_per_epoch >= 1,
                f"samples_per_epoch={self.samples_per_epoch}: must be an integer >= 1 or null")
        require(self.grad_bytes is None or self.grad_bytes > 0, f"grad_bytes={self.grad_bytes}: must be > 0 or null")


_ASSUMABLE = sorted(set(FITTABLE) - {"t_compute_s"} | {"straggler_cv"})


@dataclass
class CalibrationConf:
    """`calibration` of conf/calibrate.yaml: what to measure and how long. No field has a
    default; the YAML is the one place they are written (and what each means)."""

    gpus_per_trial: Optional[list[int]]
    share: list[int]
    device: str
    cpu_slots: Optional[int]
    threads_per_rank: Optional[int]
    gpus_per_node: Optional[int]
    backend: str
    warmup_steps: int
    pilot_steps: int
    rounds: int
    time_limit_s: float
    max_steps: int
    checkpoints: int
    configs: int
    config_time_limit_s: float
    startup_jobs: int
    fill_devices: bool
    bootstrap: int
    assume: dict[str, Optional[float]]

    def __post_init__(self) -> None:
        require_choice("device", self.device, ("auto", "cpu", "cuda"))
        require_choice("backend", self.backend, ("auto", "cpu", "cuda"),
                       "the communication priors; where the ranks run is the top-level backend=local|ray")
        require(all(m >= 2 for m in self.share), f"share={self.share}: each m (trials per device) must be >= 2")
        require(self.cpu_slots is None or self.cpu_slots >= 1, f"cpu_slots={self.cpu_slots}: must be >= 1 or null")
        require(self.threads_per_rank is None or self.threads_per_rank >= 1,
                f"threads_per_rank={self.threads_per_rank}: must be >= 1 or null")
        require(self.gpus_per_node is None or self.gpus_per_node >= 1, f"gpus_per_node={self.gpus_per_node}: must be >= 1 or null")
        require(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps}: must be >= 0")
        require(self.pilot_steps >= 3, f"pilot_steps={self.pilot_steps}: must be >= 3")
        require(self.rounds >= 1, f"rounds={self.rounds}: must be an integer >= 1")
        require(self.time_limit_s > 0, f"time_limit_s={self.time_limit_s}: must be > 0")
        require(self.max_steps >= self.pilot_steps, f"max_steps={self.max_steps}: must be >= pilot_steps")
        require(self.checkpoints >= 0, f"checkpoints={self.checkpoints}: must be >= 0")
        require(self.configs >= 0, f"configs={self.configs}: must be an integer >= 0 (0: profile train.config only)")
        require(self.config_time_limit_s > 0, f"config_time_limit_s={self.config_time_limit_s}: must be > 0")
        require(self.startup_jobs >= 1, f"startup_jobs={self.startup_jobs}: must be an integer >= 1")
        require(self.bootstrap >= 0, f"bootstrap={self.bootstrap}: must be >= 0")
        self.assume = {k: v for k, v in self.assume.items() if v is not None}
        for key, value in self.assume.items():
            require(key in _ASSUMABLE, f"assume.{key}: cannot be pinned; allowed: {', '.join(_ASSUMABLE)}")
            require(value >= 0 and (key != "gamma" or 1 <= value <= 10) and (not key.endswith("_Bps") or value > 0),
                    f"assume.{key}={value}: out of range (gamma in [1, 10], bandwidths > 0, others >= 0)")


@dataclass
class CalibrateConf:
    """conf/calibrate.yaml as composed, the one place the defaults are written (none here).
    The groups stay mappings, each read by its own schema in `load` (`TrainConf`,
    `CalibrationConf`, `RayConfig`), so a message names the group's key."""

    name: Optional[str]
    description: Optional[str]
    timings: Optional[str]  # a CSV of timings to import (runs nothing)
    backend: str  # where the ranks run: local | ray
    ray: dict[str, Any]
    train: dict[str, Any]
    calibration: dict[str, Any]
    seed: int
    out_dir: Optional[str] = None  # Hydra's output folder: Hydra reads it, no command does

    def __post_init__(self) -> None:
        require(self.seed >= 0, f"seed={self.seed}: must be an integer >= 0")
        require_choice("backend", self.backend, BACKENDS,
                       "where the ranks run; the communication priors are calibration.backend=auto|cpu|cuda")


@dataclass(frozen=True)
class CalibrateSettings:
    """Everything `main` needs, validated by `load`."""

    name: str
    description: str | None
    train: TrainConf
    calibration: CalibrationConf
    seed: int
    timings: Path | None
    imported: Measurements | None  # parsed CSV (timings=...), else None
    plan: ProfilingPlan | None  # what to run (no timings), else None
    fit: FitSettings


def devices_present(kind: str, cpu_slots: int | None) -> list[int]:
    """Device ids to profile on: CUDA indices, or CPU slots (default: the usable cores)."""
    if kind == "cuda":
        import torch

        return list(range(torch.cuda.device_count()))
    if cpu_slots is not None:
        return list(range(cpu_slots))
    try:
        return list(range(len(os.sched_getaffinity(0))))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def _device_kind(c: CalibrationConf) -> str:
    if c.device != "auto":
        if c.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise UserError("calibration.device=cuda: no CUDA device visible here; allowed here: auto, cpu")
        return c.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _ks(c: CalibrationConf, n: int, kind: str, where: str = "present") -> list[int]:
    if c.gpus_per_trial is None:
        ks, k = [], 1
        while k <= n:
            ks.append(k)
            k *= 2
        return ks
    ks = sorted(set(int(k) for k in c.gpus_per_trial) | {1})  # k = 1 fixes the compute time: always measured
    for k in ks:
        if k < 1:
            raise UserError(f"calibration.gpus_per_trial={list(c.gpus_per_trial)}: each k must be >= 1 "
                            "(sharing, k = 1/m, is calibration.share)")
        if k > n:
            what = "GPUs" if kind == "cuda" else "CPU slots"
            raise UserError(f"calibration.gpus_per_trial={list(c.gpus_per_trial)}: k={k} is more than the {n} {what} "
                            f"{where}; allowed: 1..{n}")
    return ks


def join_ray(c: CalibrationConf, ray_conf: RayConfig) -> tuple[str, RayTarget]:
    """backend=ray: join the cluster as `nasalloc run` does (or start a local Ray instance of
    `calibration.cpu_slots` slots) -> (device kind, the cluster's devices); one-line errors
    for Ray missing, an unreachable address, no device resource, or settings the cluster decides."""
    from nasalloc.execute import ray_backend

    if c.cpu_slots is not None and ray_conf.address is not None:
        raise UserError(f"calibration.cpu_slots={c.cpu_slots}: with backend=ray ray.address={ray_conf.address} the "
                        f"devices are the cluster's ({ray_conf.slot_resource} resources of its nodes); leave it null")
    kind = c.device if c.device != "auto" or ray_conf.address is not None else _device_kind(c)
    count = c.cpu_slots or len(devices_present("cpu", None))
    ray_backend.connect(ray_conf.address, "cpu" if kind == "auto" else kind, ray_conf.slot_resource, count)
    if kind == "auto":  # the cluster's GPUs if it has any, as calibration.device=auto takes this machine's
        kind = "cuda" if ray_backend.import_ray().cluster_resources().get("GPU", 0) > 0 else "cpu"
    target = ray_backend.RayTarget(ray_backend.discover(kind, ray_conf.slot_resource), ray_conf.slot_resource)
    gpn = target.cluster.spec.gpus_per_node
    if c.gpus_per_node is not None and c.gpus_per_node != gpn:
        raise UserError(f"calibration.gpus_per_node={c.gpus_per_node}: the Ray cluster's nodes hold {gpn} devices each; "
                        "leave it null (backend=ray measures on the cluster's nodes)")
    return kind, target


def builtin_space(entrypoint: str) -> dict[str, Any] | None:
    """The search space of the built-in training function (conf/train/<name>.yaml) whose entrypoint
    this is; None for any other entrypoint."""
    from importlib import resources

    import yaml

    folder = resources.files("nasalloc.conf") / "train"
    for f in sorted(folder.iterdir(), key=lambda x: x.name):
        if not f.name.endswith(".yaml"):
            continue
        data = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        if data.get("entrypoint") == entrypoint and data.get("space"):
            return dict(data["space"])
    return None


def search_space(w: TrainConf) -> dict[str, Any] | None:
    """train.space if given ({} turns sampling off), else the built-in training function's; validated."""
    space = builtin_space(w.entrypoint) if w.space is None else dict(w.space)
    if not space:
        return None
    from nasalloc.sim.space import SearchSpace

    SearchSpace.from_config(space, "train.space")  # a bad entry is a UserError naming it
    return space


def batch_fraction_at(k: int, w: TrainConf) -> float:
    """Per-rank batch at k over batch_per_device: 1 (weak) or (b // k) / b (strong, as the built-ins shard)."""
    return 1.0 if w.scaling == "weak" else max(1, w.batch_per_device // k) / w.batch_per_device


def load(cfg: DictConfig) -> CalibrateSettings:
    conf = to_typed(CalibrateConf, cfg)
    train = to_typed(TrainConf, conf.train, "train")
    calib = to_typed(CalibrationConf, conf.calibration, "calibration")
    ray_conf = to_typed(RayConfig, conf.ray, "ray")
    seed, where = conf.seed, conf.backend
    timings = Path(conf.timings).expanduser() if conf.timings else None
    imported = plan = None
    if timings is not None and where == "ray":
        raise UserError(f"backend=ray: timings={conf.timings} runs nothing (it imports timings); leave one of them out")
    if timings is not None:
        imported = read_timings(timings, lambda k: batch_fraction_at(k, train))
        if train.samples_per_epoch is None:
            raise UserError(f"train.samples_per_epoch: required with timings={timings} (training samples per epoch)")
        backend = "cuda" if calib.backend == "auto" else calib.backend
        gpn = calib.gpus_per_node or max(imported.step_samples)
        # what the CSV does not say is assumed, listed under `assumed:` and warned about
        if calib.gpus_per_node is None:
            imported.assumed["gpus_per_node"] = (f"gpus_per_node: not in the timings; assumed {gpn} (the largest k), so "
                                                 f"every k was fitted as inside one node; give calibration.gpus_per_node=N")
        if calib.backend == "auto":
            imported.assumed["device_kind"] = ("device_kind: not in the timings; assumed cuda (nccl priors for the "
                                               "parameters the timings cannot fit); give calibration.backend=cpu|cuda")
        imported.hardware.update({"device_kind": backend, "gpus_per_node": gpn, "source": f"timings CSV {timings}"})
        name = conf.name or timings.stem
    else:
        target = None
        if where == "ray":
            kind, target = join_ray(calib, ray_conf)
            ids = list(range(target.cluster.spec.gpus))
        else:
            kind = _device_kind(calib)
            ids = devices_present(kind, calib.cpu_slots)
        if not ids:
            raise UserError(f"calibration.device={calib.device}: no devices found")
        check_entrypoint(train.entrypoint)
        ks = _ks(calib, len(ids), kind, "present" if target is None else "of the Ray cluster")
        backend = kind if calib.backend == "auto" else calib.backend
        gpn = target.cluster.spec.gpus_per_node if target is not None else calib.gpus_per_node or len(ids)
        plan = ProfilingPlan(
            entrypoint=train.entrypoint, config=dict(train.config), device_kind=kind, device_ids=ids,
            gpus_per_trial=ks, share=list(calib.share), threads_per_rank=calib.threads_per_rank,
            batch_fraction={k: batch_fraction_at(k, train) for k in ks}, warmup_steps=calib.warmup_steps,
            pilot_steps=calib.pilot_steps, max_steps=calib.max_steps, rounds=calib.rounds,
            time_limit_s=calib.time_limit_s, checkpoints=calib.checkpoints, space=search_space(train),
            configs=calib.configs, config_time_limit_s=calib.config_time_limit_s, startup_jobs=calib.startup_jobs,
            seed=int(seed), fill_devices=bool(calib.fill_devices), ray=target,
        )
        short = train.entrypoint.split(":")[0].rsplit(".", 1)[-1]
        name = conf.name or f"{short}-{kind}" + ("-ray" if target is not None else "")
    fit = FitSettings(gpus_per_node=gpn, grad_bytes=train.grad_bytes, backend=backend, given=dict(calib.assume))
    return CalibrateSettings(name=str(name), description=conf.description, train=train, calibration=calib,
                             seed=int(seed), timings=timings, imported=imported, plan=plan, fit=fit)


def _workload_facts(s: CalibrateSettings, m: Measurements, steps_first_epoch: int | None) -> WorkloadFacts:
    w = s.train
    samples = w.samples_per_epoch
    if samples is None:
        if not steps_first_epoch:
            raise UserError("train.samples_per_epoch: could not be measured (no epoch ended while profiling); "
                            "give it, e.g. train.samples_per_epoch=50000")
        samples = steps_first_epoch * w.batch_per_device
        m.notes.append(f"samples_per_epoch = {steps_first_epoch} steps in the first epoch at k=1 x batch {w.batch_per_device}")
    return WorkloadFacts(entrypoint=w.entrypoint if s.timings is None else "", samples_per_epoch=int(samples),
                         batch_per_device=w.batch_per_device, scaling=w.scaling,
                         global_batch=w.batch_per_device if w.scaling == "strong" else None, eval_scales=w.eval_scales)


def assumption_warnings(m: Measurements, analysis: Analysis) -> list[str]:
    """One line per quantity the profile states without having measured it (listed under
    `assumed:`): the unmeasured costs, and the gradient size when it had to be assumed."""
    lines = list(m.assumptions().values())
    grad = analysis.step.assumed.get("grad_bytes")
    if grad is not None and max(m.ks) > 1:
        why = "not in the timings" if m.source.startswith("csv:") else "no DistributedDataParallel model seen"
        lines.append(f"grad_bytes: not counted ({why}); the fit assumes "
                     f"{grad.value:g} bytes; give train.grad_bytes=BYTES")
    return lines


def main(settings: CalibrateSettings, out_dir: Path) -> None:
    from rich.console import Console

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fit = settings.fit
    if settings.imported is not None:
        m = settings.imported
        console.print(f"calibrate: importing {settings.timings} ({sum(len(v) for v in m.step_samples.values())} step samples, "
                      f"k = {', '.join(str(k) for k in m.ks)})")
        steps_first = None
        sources = [f"timings imported from {settings.timings} by nasalloc calibrate"]
        # where the CSV's timings were measured is not in it: every field unknown
        provenance = {"how": f"timings CSV {settings.timings.name}", **{key: None for key in FIELDS if key != "how"}}
        desc = settings.description or f"imported timings ({settings.timings.name})"
    else:
        plan = settings.plan
        assert plan is not None
        on_ray = plan.ray.describe(plan.device_kind) if plan.ray is not None else None  # "Ray, 3 nodes of 2 cpu_slot"
        console.print(f"calibrate: profiling {plan.entrypoint} on {plan.device_kind}{f' ({on_ray})' if on_ray else ''} at k = "
                      f"{', '.join(map(str, plan.gpus_per_trial))}"
                      + (f", {plan.configs} configurations from its search space" if plan.space and plan.configs else "")
                      + (f", sharing m = {', '.join(map(str, plan.share))}" if plan.share else "")
                      + f" (up to {plan.time_limit_s:g} s each)")
        try:
            m = profile_training(plan, out_dir / "profiling", progress=lambda line: console.print(f"  {line}"))
        except WorkersDidNotStart as exc:  # workers (Ray: a lost node's actors) that never came: one line, not a traceback
            raise UserError(f"calibration stopped: {exc}") from None
        steps_first = m.steps_per_epoch.get(1)
        if fit.grad_bytes is None and m.hardware.get("grad_bytes"):
            fit = FitSettings(gpus_per_node=fit.gpus_per_node, grad_bytes=float(m.hardware["grad_bytes"]),
                              backend=fit.backend, given=fit.given)
        device = m.hardware.get("device", plan.device_kind)
        how = "nasalloc calibrate" + (f" backend=ray ({on_ray})" if on_ray else "")
        provenance = this_machine(str(device), how=how)
        sources = [f"measured by {how} on {time.strftime('%Y-%m-%d', time.gmtime())}: {plan.entrypoint}, "
                   f"k = {', '.join(map(str, plan.gpus_per_trial))} on {device}, {m.hardware.get('backend')}"]
        knobs = ", ".join(f"{k}={v}" for k, v in settings.train.config.items())
        desc = settings.description or (f"{plan.entrypoint} ({knobs}), {settings.train.scaling} scaling, measured at "
                                        f"k = {', '.join(map(str, plan.gpus_per_trial))} on {device} "
                                        f"({m.hardware.get('backend')}{', ' + on_ray if on_ray else ''})")
    w = _workload_facts(settings, m, steps_first)
    analysis = analyse(m, fit, bootstrap=settings.calibration.bootstrap, rng=np.random.default_rng(settings.seed))
    profile = build_profile(settings.name, desc, m, analysis, w, sources,
                            space=settings.plan.space if settings.plan is not None else None, provenance=provenance)
    if settings.plan is not None:  # the schedulers run here, beside the training profiled here
        from nasalloc.calibration.scheduler_time import time_schedulers
        from nasalloc.sim.profile import parse_profile

        times = time_schedulers(settings.plan.space, parse_profile(profile, "calibrated profile"), settings.seed)
        profile["scheduler_time"] = {name: {key: float(f"{v:.3g}") for key, v in t.items()} for name, t in times.items()}
        console.print("scheduler's own time per ask / per result: " + ", ".join(
            f"{name} {1e3 * t['ask_s']:.3f} / {1e3 * t['result_s']:.3f} ms" for name, t in times.items()))
    if not analysis.step.success:
        console.print(f"[yellow]warning: the step-time fit did not converge: {analysis.step.message}[/]")
    for line in assumption_warnings(m, analysis):
        console.print(f"[yellow]warning: {line}[/]", soft_wrap=True)
    dump_profile(profile, out_dir / "profile.yaml")
    plot_speedup(m, analysis, w, out_dir / "speedup.png", name=profile["name"])
    console.print(summary_table(m, analysis, profile))
    for line in summary_lines(profile):
        console.print(line)
    console.print(f"wrote {out_dir / 'profile.yaml'} and {out_dir / 'speedup.png'} ({format_duration(time.perf_counter() - t0)}); "
                  f"use it: nasalloc simulate profile={out_dir / 'profile.yaml'}")
