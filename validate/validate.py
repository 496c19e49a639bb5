"""`nasalloc validate run=RUN_DIR [run=[A,B,C]]`: measure how right the prediction was.

For each real run: re-simulate the same search — the scheduler config, seed and allocation
from its `run_config.yaml`, the cluster of its devices, the profile it was planned with, and
its own learning curves replayed from its trace (trial i gets the curve the real trial i
produced) — so only the timing model differs. Then compare the two traces
(`compare.compare`): makespan, per-epoch time per allocation, start-up, resume and pause
costs, device utilisation, and how far the scheduler's decisions agree (asynchronous
schedulers can diverge when timings differ; the report counts it).

With several runs of the same search at different allocations it also reports whether the
predicted ranking of the allocations matches the measured one (Kendall tau) and the measured
speed-up of the predicted-best allocation over each other. Runs of different searches (another
scheduler or scheduler setting, trial count, search space or training function) are refused,
naming the first difference (`search_difference`): their makespans differ for reasons other
than the allocation. `force=true` ranks them anyway, and the report says what differed. `update_profile=true` writes
`profile_updated.yaml`: the profile refitted with what the runs measured.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
from nasalloc.execute.run import (RUN_CONFIG, RunConfig, machine_here, read_machine, read_run_config,
                                  require_run_folder)
from nasalloc.sim.cluster import ELASTIC, Allocation, ClusterSpec
from nasalloc.sim.config import required, to_typed
from nasalloc.sim.elastic import resolve_allocation
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_allocation, format_duration
from nasalloc.sim.profile import Profile, dump_profile, load_profile
from nasalloc.sim.provenance import COMPARED, foreign_line
from nasalloc.sim.trace import TraceEvent, read_trace, write_json, write_trace
from nasalloc.sim.workload import MetricSpec, ReplayWorkload
from nasalloc.validate.compare import Comparison, Timings, compare, kendall_tau
from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class RealRun:
    """A finished (or killed) run of `nasalloc run`, read back for validation."""

    folder: Path
    events: tuple[TraceEvent, ...]
    spec: SimulationSpec  # the same search, to be simulated
    backend: str  # cpu | cuda
    machine: dict[str, Any] | None = None  # where it ran (its machine.yaml; sim/provenance.py)


@dataclass(frozen=True)
class ValidateSettings:
    runs: tuple[RealRun, ...]
    profile: Profile
    update_profile: bool
    plots: bool
    forced: str | None = None  # force=true over runs of different searches: the first difference


def _devices_in_trace(events: tuple[TraceEvent, ...], folder: Path) -> int:
    """Device count of a run whose config says "every GPU present" (devices=cuda, count 0)."""
    used = [d for ev in events for d in ev.devices]
    if not used:
        raise UserError(f"run={folder}: cannot tell how many devices it had (no devices in its config or trace)")
    return max(used) + 1


def _curves(events: tuple[TraceEvent, ...]) -> tuple[dict[int, tuple[float, float | None]], ...]:
    """Recorded curves indexed by trial id (a trial that never reported replays NaN: worst)."""
    per_trial: dict[int, dict[int, tuple[float, float | None]]] = {}
    for ev in events:
        if ev.event == "result" and ev.epoch is not None and ev.metric is not None:
            per_trial.setdefault(ev.trial, {}).setdefault(ev.epoch, (ev.metric, ev.test_metric))
    n = max((ev.trial for ev in events), default=-1) + 1
    return tuple(per_trial.get(t) or {1: (math.nan, None)} for t in range(n))


def read_run(folder: Path, config: RunConfig, profile: Profile) -> RealRun:
    """The run's trace and the simulation spec of the same search (UserError if unusable).

    `config` is the folder's run_config.yaml as `execute.run.read_run_config` reads it: values
    only, so a run made on a GPU machine validates anywhere. The run's devices become a
    one-node cluster of the same size, and its `gpus_per_trial` is parsed against that.
    """
    trace_path = folder / "trace.jsonl"
    events = tuple(read_trace(trace_path, tolerate_torn_tail=True))
    if not any(ev.event == "result" for ev in events):
        raise UserError(f"{trace_path}: no results recorded; nothing to validate")
    n = config.device_count() or _devices_in_trace(events, folder)
    kind = config.devices.kind
    # a Ray run records its nodes; a local run's devices are one node
    cluster = config.cluster or ClusterSpec(name=f"{n} {kind} devices", gpus=n, gpus_per_node=n)
    elastic = required(config.raw, "elastic", f"{folder / RUN_CONFIG}: ") if config.gpus_per_trial == ELASTIC else None
    allocation = resolve_allocation(config.gpus_per_trial, cluster, profile, elastic,
                                    key=f"{folder / RUN_CONFIG}: gpus_per_trial")
    metric = MetricSpec(name="metric", mode=config.scheduler.mode, low=-math.inf, high=math.inf)
    workload = ReplayWorkload(_curves(events), metric, config.space, source=str(trace_path))
    # the run moved trials off shared devices only with a profile to decide with (`execute.search`)
    spec = SimulationSpec(scheduler=config.scheduler, workload=workload, profile=profile, cluster=cluster,
                          allocation=allocation, seed=config.seed, target=config.target,
                          unshare=config.unshare and config.profile is not None)
    return RealRun(folder, events, spec, kind, read_machine(folder) or machine_here(kind, [0]))


@dataclass
class ValidateConf:
    """conf/validate.yaml as composed, the one place the defaults are written (none here)."""

    run: Any  # a run folder of `nasalloc run`, or a list of them
    profile: Optional[str]  # null: the one the (first) run names
    force: bool
    update_profile: bool
    plots: bool
    seed: int  # conf/common.yaml's; unread here (each run is re-simulated with its own seed)
    out_dir: Optional[str] = None  # Hydra's output folder: Hydra reads it, no command does

    def __post_init__(self) -> None:
        self.run = [str(r) for r in (self.run if isinstance(self.run, list) else [self.run])]


def load(cfg: DictConfig) -> ValidateSettings:
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    if raw.get("run") in (None, "???", "", []):  # `???` in the YAML: no default, given or not at all
        raise UserError("run: required; give a run folder of `nasalloc run` (run=PATH) or a list of them (run=[A,B])")
    conf = to_typed(ValidateConf, raw)
    folders = [require_run_folder(f, "run") for f in conf.run]  # every folder first, so a typo in run= is named first
    configs = [read_run_config(f) for f in folders]
    name = conf.profile or configs[0].profile
    if not name:
        raise UserError("profile: give the profile the run was planned with (profile=NAME or profile=PATH); "
                        "the run's config does not name one")
    profile = load_profile(str(name))
    differ = next((d for f, c in zip(folders[1:], configs[1:]) if (d := search_difference(folders[0], configs[0], f, c))),
                  None)
    if differ is not None and not conf.force:
        raise UserError(f"run: {differ}; a ranking compares allocations of one search (force=true ranks them anyway)")
    return ValidateSettings(tuple(read_run(f, c, profile) for f, c in zip(folders, configs)), profile,
                            conf.update_profile, conf.plots, forced=differ)


def search_difference(folder_a: Path, a: RunConfig, folder_b: Path, b: RunConfig) -> str | None:
    """How run b is another search than run a (the first difference, in words), or None.

    The same search: the same scheduler with the same settings (trial count, epochs, eta,
    variant, ...), the same search space and the same training function. The allocation,
    devices and seed may differ: the first two are what a ranking compares, and repeats of
    one search with other seeds are still that search."""
    def differs(key: str, x: Any, y: Any) -> str:
        return f"{folder_b} is another search than {folder_a}: {key} {y!r} there, {x!r} here"

    sa, sb = dataclasses.asdict(a.scheduler), dataclasses.asdict(b.scheduler)
    if sa["name"] != sb["name"]:
        return differs("scheduler", sa["name"], sb["name"])
    for key in sa:
        if sa[key] != sb.get(key):
            return differs(f"scheduler.{key}", sa[key], sb.get(key))
    space_a, space_b = a.train.space or {}, b.train.space or {}
    for key in sorted(set(space_a) | set(space_b)):
        if space_a.get(key) != space_b.get(key):
            return differs(f"train.space.{key}", space_a.get(key), space_b.get(key))
    if a.train.entrypoint != b.train.entrypoint:
        return differs("train.entrypoint", a.train.entrypoint, b.train.entrypoint)
    return None


# ----- profile refit ---------------------------------------------------------------------

def _by_allocation(run: RealRun, t: Timings) -> dict[float, dict[str, float | None]]:
    """The run's timings keyed by k, for every k of its allocation (a per-rung schedule has
    several: its epochs at each k are told apart by the devices they held).

    A trace shows devices held, not k: k = 1/m holds one device, as k = 1 does. A schedule
    holding one device at two of its k (1/2 and 1, or 1/4 and 1/2) cannot tell their epochs
    apart, so those k are left out rather than mixed. Start-up is measured where trials
    start (the schedule's first k), resume and pause where they resume and pause.
    """
    by_devices: dict[int, list[Fraction]] = {}
    for k in run.spec.allocation.ks:
        by_devices.setdefault(max(1, int(k)), []).append(k)
    out: dict[float, dict[str, float | None]] = {}
    for devices, ks in by_devices.items():
        if len(ks) == 1:
            out[ks[0]] = {"epoch_s": t.epoch_s.get(devices), "startup_s": t.startup_s.get(devices),
                          "resume_s": t.resume_s.get(devices), "pause_s": t.pause_by_devices.get(devices)}
    return out


def refit_profile(profile: Profile, measured: dict[float, dict[str, float | None]], backend: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The profile's mapping with step time, sharing and overheads refitted to what the runs
    measured; and a report of what changed. Parameters the runs cannot identify keep their
    profile values (they are passed to the fit as given)."""
    from nasalloc.calibration.fit import (
        FITTABLE,
        FitSettings,
        LineFit,
        StepData,
        fit_resume,
        fit_startup,
        fit_startup_across_nodes,
        fit_step_time,
        plan_parameters,
    )

    ov = profile.overheads
    epoch = profile.epoch
    decision = ov.decision_latency_s
    whole = {k: v for k, v in measured.items() if k >= 1 and v["epoch_s"] is not None}
    step = profile.epoch.step
    report: dict[str, Any] = {"measured_epoch_s": {format_allocation(k): v["epoch_s"] for k, v in measured.items()}}
    if whole:
        ks = sorted(int(k) for k in whole)
        implied = []
        fractions = []
        for k in ks:
            ki = float(k)
            e = max(whole[ki]["epoch_s"] - decision - ov.checkpoint_save_s, 1e-9)  # type: ignore[operator]  (a save per epoch)
            evaluation = ov.eval_s / k if ov.eval_scales else ov.eval_s
            implied.append(max(e - evaluation, 1e-9) / epoch.steps_per_epoch(k))
            fractions.append(epoch.global_batch_at(k) / k / epoch.batch_per_device)
        report["implied_step_s"] = dict(zip(map(str, ks), implied))
        if 1 in ks:
            gpn = epoch.gpus_per_node
            free, _ = plan_parameters(ks, FitSettings(gpus_per_node=gpn, backend=backend))
            given = {n: getattr(step, n) for n in FITTABLE if n not in free and n != "t_compute_s"}
            given["straggler_cv"] = step.straggler_cv
            settings = FitSettings(gpus_per_node=gpn, grad_bytes=step.grad_bytes, backend=backend, given=given)
            fit = fit_step_time(StepData(np.array(ks, dtype=float), np.array(implied), np.array(fractions)), settings,
                                straggler_cv=step.straggler_cv, start=step)
            step = fit.model
            report["refitted"] = free
        else:
            k0 = ks[0]
            ratio = implied[0] / step.step_time(k0, epoch.gpus_per_node, fractions[0])
            step = dataclasses.replace(step, t_compute_s=step.t_compute_s * ratio)
            report["refitted"] = ["t_compute_s (scaled: no run at k=1)"]
    new_epoch = dataclasses.replace(epoch, step=step)
    sharing = dict(epoch.sharing)
    for k, v in measured.items():
        if k < 1 and v["epoch_s"] is not None:
            m = round(1 / k)
            # at least 1: sharing a device does not make a trial faster (below 1 is noise)
            sharing[m] = max(1.0, max(v["epoch_s"] - decision - ov.checkpoint_save_s, 1e-9) / new_epoch.epoch_time(1))
    # The trace's start-up and resume are the first result less the trial's epoch gap, and
    # that gap holds the decision and the checkpoint write after each epoch, which the first
    # epoch of a job does not pay: the profile's start-up is the trace's plus those two.
    # Fitted as calibration fits them (`calibration/fit.py`): inside a node a log2 k line, from
    # one k the profile's slope kept and the level refitted; across nodes the step above the
    # line, refitted where jobs on both sides of the node boundary were measured, else the
    # profile's, taken out of the jobs across nodes (left in, the simulator would add it twice).
    boundary = decision + ov.checkpoint_save_s
    gpn = epoch.gpus_per_node
    startups = {max(1, int(k)): [v["startup_s"] + boundary] for k, v in measured.items() if v["startup_s"] is not None}
    data = dict(profile.raw)
    overheads = dict(data.get("overheads") or {})
    start = fit_startup_across_nodes(startups, gpn, slope=ov.startup_per_doubling_s, across=ov.startup_inter_node_s)
    if startups:
        overheads["startup_s"], overheads["startup_per_doubling_s"] = start.base, start.per_doubling
        if start.across_nodes != ov.startup_inter_node_s:
            overheads["startup_inter_node_s"] = start.across_nodes
    else:  # no start-up measured: the profile's
        start = LineFit(ov.startup_s, ov.startup_per_doubling_s, False, across_nodes=ov.startup_inter_node_s)
    resumed = {max(1, int(k)): [v["resume_s"] + boundary] for k, v in measured.items() if v["resume_s"] is not None}
    if resumed and ov.resume_s is not None:  # the profile's resume(k) is measured as such: refit it per k
        resume = fit_resume(resumed, gpn, start.across_nodes, slope=ov.resume_per_doubling_s)
        overheads["resume_s"], overheads["resume_per_doubling_s"] = resume.base, resume.per_doubling
    elif resumed:  # a resume is start-up(k) + restore: the restore is what is left of it
        restores = [x - start.at(k, gpn) for k, v in resumed.items() for x in v]
        overheads["checkpoint_restore_s"] = max(0.0, float(np.median(restores)))
    # a pause is decision + checkpoint write + the end of the job: the write is the one every
    # checkpointed epoch pays, so the rest goes to the end of the job, release(k), fitted per k
    # as calibration fits it (`calibration/report.py` release_cost); from one k the slope kept
    pauses = {max(1, int(k)): [v["pause_s"] - boundary] for k, v in measured.items() if v["pause_s"] is not None}
    if pauses:
        release = fit_startup(pauses, slope=ov.release_per_doubling_s)
        overheads["release_s"], overheads["release_per_doubling_s"] = release.base, release.per_doubling
    data["step_time"] = {**(data.get("step_time") or {}), **{f.name: getattr(step, f.name) for f in dataclasses.fields(step)}}
    data["sharing"] = {int(m): float(f) for m, f in sorted(sharing.items())}
    data["overheads"] = overheads
    data.pop("uncertainty", None)  # the old bootstrap samples describe the old fit
    report["sharing"] = dict(data["sharing"])  # copies: YAML would write the shared dicts as aliases
    report["overheads"] = dict(overheads)
    data["fit"] = {**(data.get("fit") or {}), "validate_refit": report}
    return data, report


# ----- output ----------------------------------------------------------------------------

def _plot_timelines(pred: list[TraceEvent], real: RealRun, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nasalloc.sim.plots import draw_gantt

    n = real.spec.cluster.gpus
    span = max(max((e.time for e in pred), default=1.0), max((e.time for e in real.events), default=1.0))
    fig, axes = plt.subplots(2, 1, figsize=(11, min(3.0 + 0.4 * n, 12.0)), sharex=True)
    draw_gantt(axes[0], pred, n, f"predicted (simulated), k={real.spec.allocation}", span=span)
    draw_gantt(axes[1], list(real.events), n, f"measured ({real.folder.name})", span=span)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def held_label(allocation: Allocation, devices: int) -> str:
    """The allocation's k whose trials hold this many devices, for the report: a trace
    counts devices held, and k = 1/2 and 1/4 hold one device as k = 1 does. "k=1/2" for a
    run at 1/2; "k=1/2 or 1" when a schedule holds one device at both (their epochs are
    pooled); "2 devices" when no k of the allocation holds that many."""
    ks = [k for k in allocation.ks if max(1, int(k)) == devices]
    if not ks:
        return f"{devices} devices"
    return "k=" + " or ".join(format_allocation(k) for k in ks)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}%"


def _term(pair: dict[str, float | None]) -> str:
    """'+12.0% (0.041 s vs 0.037 s)': the error with the predicted and measured seconds."""
    if pair.get("predicted") is None or pair.get("measured") is None:
        return "n/a"
    return f"{_pct(pair['error'])} ({pair['predicted']:.3g} s vs {pair['measured']:.3g} s)"


def _per_devices(per_k: dict[str, dict[str, float | None]], allocation: Allocation) -> str:
    """A term per number of devices held, named by the run's k that holds them (`held_label`);
    'n/a' when neither trace has one."""
    if not per_k:
        return "n/a"
    return ", ".join(f"{held_label(allocation, int(devices))} {_term(v)}" for devices, v in per_k.items())


def _run_report(run: RealRun, c: Comparison) -> dict[str, Any]:
    return {
        "run": str(run.folder),
        "scheduler": run.spec.scheduler.name,
        "gpus_per_trial": str(run.spec.allocation),
        "devices": run.spec.cluster.gpus,
        "gpus_per_node": run.spec.cluster.gpus_per_node,  # a Ray run's nodes (run_config.yaml's ran_on); else all
        "seed": run.spec.seed,
        "makespan_s": c.makespan_s,
        "gpu_utilization": c.gpu_utilization,
        "epoch_s": c.epoch_s,
        "startup_s": c.startup_s,
        "resume_s": c.resume_s,
        "pause_s": c.pause_s,
        "decisions": dataclasses.asdict(c.decisions),
        "timings_predicted": c.timings_predicted.to_dict(),
        "timings_measured": c.timings_measured.to_dict(),
    }


def ranking(runs: list[RealRun], comparisons: list[Comparison]) -> dict[str, Any] | None:
    """Predicted vs measured order of the allocations (needs runs at >= 2 different k).

    Repeats of the same allocation (the same search run again) are pooled: an allocation's
    measured makespan is the mean over its runs and its predicted one the mean of their
    re-simulations. With repeats, a Welch t-test on the measured makespans says which
    neighbours in the measured order this machine's run-to-run noise cannot separate
    (`measured_order_ties`), so a swapped pair inside the noise is told apart from a
    model that is wrong.
    """
    labels_all = [str(r.spec.allocation) for r in runs]
    labels = list(dict.fromkeys(labels_all))
    if len(labels) < 2:
        return None
    pred_runs = {lab: [c.makespan_s["predicted"] for c, x in zip(comparisons, labels_all) if x == lab] for lab in labels}
    meas_runs = {lab: [c.makespan_s["measured"] for c, x in zip(comparisons, labels_all) if x == lab] for lab in labels}
    predicted = [float(np.mean(pred_runs[lab])) for lab in labels]
    measured = [float(np.mean(meas_runs[lab])) for lab in labels]
    best = int(np.argmin(predicted))
    from scipy.stats import ttest_ind

    measured_order = [labels[i] for i in np.argsort(measured, kind="stable")]
    ties = []
    for a, b in zip(measured_order, measured_order[1:]):
        x, y = meas_runs[a], meas_runs[b]
        if len(x) >= 2 and len(y) >= 2:
            p = float(ttest_ind(x, y, equal_var=False).pvalue)
            if not math.isnan(p) and p >= 0.05:
                ties.append({"allocations": [a, b], "p_value": p})
    return {
        "allocations": labels,
        "repeats": {lab: len(meas_runs[lab]) for lab in labels},
        "predicted_makespan_s": predicted,
        "measured_makespan_s": measured,
        "measured_runs_s": meas_runs,
        "mean_makespan_error": {lab: predicted[i] / measured[i] - 1.0 for i, lab in enumerate(labels)},
        "predicted_order": [labels[i] for i in np.argsort(predicted, kind="stable")],
        "measured_order": measured_order,
        "measured_order_ties": ties,
        "kendall_tau": kendall_tau(predicted, measured),
        "predicted_best": labels[best],
        "measured_best": measured_order[0],
        "measured_speedup_of_predicted_best": {labels[i]: measured[i] / measured[best] for i in range(len(labels))},
    }


EPOCH_ERROR_SUGGESTS = 0.10  # |epoch-time error| from which validate suggests measuring this machine


def foreign_lines(profile: Profile, runs: tuple[RealRun, ...]) -> list[str]:
    """One line per distinct machine the runs ran on that is not where the profile was measured."""
    first: dict[tuple[Any, ...], RealRun] = {}
    for run in runs:  # runs made on one machine: one line, naming the first of them
        first.setdefault(tuple((run.machine or {}).get(key) for key in COMPARED), run)
    lines = [foreign_line(profile.name, profile.provenance, run.machine or {}, where=f"run {run.folder.name}")
             for run in first.values()]
    return [f"  {line}" for line in lines if line]


def epoch_error_suggestion(comparisons: list[Comparison], update_profile: bool) -> str | None:
    """A line suggesting to recalibrate when the epoch-time error dominates: it is at least
    EPOCH_ERROR_SUGGESTS (median over the runs' allocations) and at least half the makespan
    error, so the profile's speed, not the scheduler's decisions, is what the prediction got
    wrong."""
    epoch = [v["error"] for c in comparisons for v in c.epoch_s.values() if v["error"] is not None]
    makespan = [abs(c.makespan_s["error"]) for c in comparisons if c.makespan_s["error"] is not None]
    if not epoch:
        return None
    e = float(np.median(np.abs(epoch)))
    if e < EPOCH_ERROR_SUGGESTS or e < 0.5 * (float(np.median(makespan)) if makespan else 0.0):
        return None
    refit = "the refitted profile_updated.yaml" if update_profile else "update_profile=true to refit it from these runs"
    return (f"  the epoch-time error ({_pct(float(np.median(epoch)))} median) dominates: the profile's speed does not "
            f"fit the machine the runs ran on; measure it there with `nasalloc calibrate`, or use {refit}")


def main(settings: ValidateSettings, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports, comparisons, measured_by_k = [], [], {}
    lines = [f"nasalloc validate: profile {settings.profile.name}", *foreign_lines(settings.profile, settings.runs)]
    if settings.forced is not None:
        lines.append(f"  force=true: ranking runs of different searches ({settings.forced})")
    for i, run in enumerate(settings.runs):
        result = simulate(run.spec)
        c = compare(result.events, list(run.events), mode=run.spec.workload.metric.mode, n_devices=run.spec.cluster.gpus)
        comparisons.append(c)
        reports.append({**_run_report(run, c), "replay": result.workload_stats})
        measured_by_k.update(_by_allocation(run, c.timings_measured))
        stem = f"{i:02d}_{run.folder.name}" if len(settings.runs) > 1 else run.folder.name
        write_trace(out_dir / f"predicted_{stem}.jsonl", result.events)
        if settings.plots:
            _plot_timelines(result.events, run, out_dir / f"timeline_{stem}.png")
        alloc = run.spec.allocation
        lines.append(
            f"  {run.folder.name}: {run.spec.scheduler.name}, k={run.spec.allocation} on {run.spec.cluster.gpus} devices"
            + (f" ({run.spec.cluster.nodes} nodes of {run.spec.cluster.gpus_per_node})" if run.spec.cluster.nodes > 1 else "")
            + "\n"
            f"    makespan   predicted {format_duration(c.makespan_s['predicted'])}, "
            f"measured {format_duration(c.makespan_s['measured'])}, "
            f"error {_pct(c.makespan_s['error'])}\n"
            f"    error per term: epoch {_per_devices(c.epoch_s, alloc)}; start-up {_per_devices(c.startup_s, alloc)}; "
            f"resume {_per_devices(c.resume_s, alloc)}; pause {_term(c.pause_s)}\n"
            f"    utilisation {100 * c.gpu_utilization['predicted']:.0f}% vs {100 * c.gpu_utilization['measured']:.0f}%\n"
            f"    decisions  {c.decisions.same_outcome} of {max(c.decisions.trials_measured, c.decisions.trials_predicted)} "
            f"trials ended alike ({100 * c.decisions.fraction:.0f}%), epochs {c.decisions.epochs_predicted} vs "
            f"{c.decisions.epochs_measured}, same best trial: {c.decisions.same_best_trial}")
    rank = ranking(list(settings.runs), comparisons)
    errors = [abs(c.makespan_s["error"]) for c in comparisons if c.makespan_s["error"] is not None]
    summary = {
        "profile": settings.profile.name,
        "median_abs_makespan_error": float(np.median(errors)) if errors else None,
        "runs": reports,
        "ranking": rank,
        "different_searches": settings.forced,
    }
    if rank is not None:
        lines.append(f"  ranking    predicted {' < '.join(rank['predicted_order'])}; measured {' < '.join(rank['measured_order'])}; "
                     f"Kendall tau {rank['kendall_tau'] if rank['kendall_tau'] is None else round(rank['kendall_tau'], 3)}")
        if max(rank["repeats"].values()) > 1:
            lines.append("  per allocation (mean over repeats): " + ", ".join(
                f"k={lab}: {_pct(rank['mean_makespan_error'][lab])} ({rank['repeats'][lab]} runs)" for lab in rank["allocations"]))
            for tie in rank["measured_order_ties"]:
                lines.append(f"  measured k={tie['allocations'][0]} and k={tie['allocations'][1]} are within this machine's "
                             f"run-to-run noise (Welch p = {tie['p_value']:.2f})")
    if errors:
        lines.append(f"  median |makespan error| {100 * summary['median_abs_makespan_error']:.1f}%")
    suggestion = epoch_error_suggestion(comparisons, settings.update_profile)
    if suggestion:
        lines.append(suggestion)
    if settings.update_profile:
        data, report = refit_profile(settings.profile, measured_by_k, settings.runs[0].backend)
        data["name"] = f"{settings.profile.name}-validated"
        dump_profile(data, out_dir / "profile_updated.yaml")
        summary["profile_update"] = report
        lines.append(f"  refitted profile: {out_dir.resolve() / 'profile_updated.yaml'}")
    write_json(out_dir / "validation.json", summary)
    lines.append(f"output: {out_dir.resolve()}")
    print("\n".join(lines))


__all__ = ["load", "main", "read_run", "refit_profile", "ranking", "ValidateSettings", "RealRun"]
