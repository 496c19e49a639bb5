"""Turn measurements and their analysis into the three outputs: profile.yaml, a plot, a table.

The profile is written through `nasalloc.sim.profile.dump_profile`, which parses it first,
so what calibration writes is always what the simulator reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasalloc.calibration.analysis import Analysis
from nasalloc.calibration.config_cost import describe as describe_config_cost
from nasalloc.calibration.config_cost import fit_config_cost
from nasalloc.calibration.fit import FITTABLE, LineFit, fit_resume, fit_startup
from nasalloc.calibration.measurements import Measurements
from nasalloc.sim.speedup import StepTimeModel

MODEL_EQUATION = ("T_step(k) = (T_c^g + T_net(k)^g)^(1/g) * (1 + cv*z_k); T_c = t_compute_s*b(k)/b; "
                  "T_net(k) = 2(k-1)/k*grad_bytes/B + 2(k-1)*alpha (intra- or inter-node)")


@dataclass(frozen=True)
class WorkloadFacts:
    """The profile's `workload:` block plus where it came from."""

    entrypoint: str  # "module:function", or "" for imported timings
    samples_per_epoch: int
    batch_per_device: int
    scaling: str  # weak | strong
    global_batch: int | None
    eval_scales: bool


def _g(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}") if math.isfinite(x) else x


def _step_dict(m: StepTimeModel, keys: tuple[str, ...] | None = None) -> dict[str, float]:
    d = dataclasses.asdict(m)
    return {k: _g(float(v)) for k, v in d.items() if keys is None or k in keys}


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else 0.0


def batch_fractions(k: np.ndarray, w: WorkloadFacts) -> np.ndarray:
    """b(k)/b for any k: 1 under weak scaling, (global_batch // k) / batch_per_device under strong."""
    if w.scaling == "weak":
        return np.ones_like(k, dtype=float)
    gb = w.global_batch or w.batch_per_device
    return np.maximum(1, gb // k.astype(int)) / w.batch_per_device


def plain(obj: Any) -> Any:
    """Only YAML-safe builtins (numpy scalars, str subclasses and tuples converted)."""
    if isinstance(obj, dict):
        return {plain(k) if not isinstance(k, str) else str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [plain(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if obj is None:
        return None
    return str(obj)


# The profile keys of each fitted line's terms (`LineFit.held` names the terms).
_STARTUP_KEYS = {"base": "startup_s", "per_doubling": "startup_per_doubling_s", "across_nodes": "startup_inter_node_s"}
_RESUME_KEYS = {"base": "resume_s", "per_doubling": "resume_per_doubling_s"}
_RELEASE_KEYS = {"base": "release_s", "per_doubling": "release_per_doubling_s"}


def _held(line: LineFit, keys: Mapping[str, str]) -> dict[str, float]:
    """`line`'s terms that its bound held, under their `overheads.` keys."""
    return {f"overheads.{keys[term]}": value for term, value in line.held.items()}


def resume_cost(m: Measurements, a: Analysis) -> float:
    """What a resumed job pays beyond a fresh job's start-up (the profile's
    `checkpoint_restore_s`): mean over k of the resumed jobs' start-up less the fitted
    start-up at k. It holds the restore and the slower first epoch after it, as a search's
    trace shows them; without resume measurements (timings imported), the probe's timed
    restore alone. Unbounded: below 0 is possible (noise), and `build_profile` bounds it."""
    if not m.resume_s:
        return _mean(m.checkpoint_restore_s)
    gpn = a.settings.gpus_per_node
    return float(np.mean([np.mean(v) - a.startup.at(k, gpn) for k, v in m.resume_s.items()]))


def release_cost(m: Measurements) -> LineFit:
    """The end of a job after its last decision and save, release(k) = release_s +
    release_per_doubling_s * log2(k): per k, the measured pauses less the epoch boundary (the
    decision round trip) and the checkpoint write, fitted as start-up is (`fit_startup`);
    (0, 0) unmeasured. A k = 2 group takes longer to end than one rank: on 2 CPU slots 17 ms
    against 6 ms, which one pooled mean (12 ms) put on both."""
    if not m.pause_s:
        return LineFit(0.0, 0.0, True)
    boundary = _mean(m.decision_latency_s) + _mean(m.checkpoint_save_s)
    return fit_startup({k: [x - boundary for x in v] for k, v in m.pause_s.items()})


def resume_fit(m: Measurements, a: Analysis) -> LineFit | None:
    """The profile's resume(k) = resume_s + resume_per_doubling_s * log2(k), fitted to the
    resumed jobs' own start-ups as start-up is (`fit_startup`), less the start-up's step for
    jobs across nodes (the simulator adds it back, `Profile.resume_time`); None without resume
    measurements (timings imported: start-up + checkpoint_restore_s stands for it)."""
    if not any(len(v) for v in m.resume_s.values()):
        return None
    return fit_resume(m.resume_s, a.settings.gpus_per_node, a.startup.across_nodes)


def bounded_overheads(values: Mapping[str, float], held: dict[str, float]) -> dict[str, float]:
    """Every overhead is a duration, so >= 0 (what `Profile` accepts): a value below 0 (a
    mean of differences near 0, or a term no bounded fit produced) is written as 0, and what
    it was goes into `held` under its `overheads.` key."""
    out = {}
    for key, value in values.items():
        if value < 0:
            held.setdefault(f"overheads.{key}", value)
        out[key] = _g(max(0.0, value))
    return out


def bounded_sharing(measured: Mapping[int, float], held: dict[str, float]) -> dict[int, float]:
    """m -> slow-down, each at least 1 (m trials on a device do not each run faster than one
    alone: a ratio below 1 is noise, written as 1 and recorded in `held`)."""
    out = {}
    for m_, ratio in measured.items():
        if ratio < 1.0:
            held.setdefault(f"sharing.{m_}", ratio)
        out[int(m_)] = _g(max(1.0, ratio))
    return out


def build_profile(name: str, description: str, m: Measurements, a: Analysis, w: WorkloadFacts,
                  sources: list[str], space: dict[str, Any] | None = None,
                  provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The profile mapping (see sim/profile.py): measured, fitted, assumed, with sources.
    `space`: the search space the sampled configurations (`m.configs`) came from; with it and
    at least 3 of them, the `config_cost` block is fitted (calibration/config_cost.py).
    `provenance`: where the numbers were measured (sim/provenance.py)."""
    ks = a.data.k
    step = a.step
    assumed = sorted(step.assumed)
    if a.startup.slope_assumed:
        assumed.append("startup_per_doubling_s")
    assumed += [key for key in m.assumptions() if key not in assumed]  # not measured: stated, not claimed
    held: dict[str, float] = {}  # profile key -> what the fit gave before its bound held it
    sharing = bounded_sharing(m.sharing_slowdown(), held)
    fitted_keys = tuple(n for n in FITTABLE if n in step.fitted) + (("straggler_cv",) if "straggler_cv" in step.measured else ())
    measured_speedup = a.data.k * a.data.batch_fraction * a.data.mean_s[0] / a.data.mean_s
    fit_block: dict[str, Any] = {
        "model": MODEL_EQUATION,
        "fitted": list(step.fitted),
        "measured": {k: _g(v) for k, v in step.measured.items()},
        "assumed": {n: {"value": _g(x.value), "source": x.source, "reason": x.reason} for n, x in sorted(step.assumed.items())},
        "success": step.success,
        "message": step.message,
        "at_bounds": list(step.at_bounds),
        "rms_log_residual": _g(step.rms_log_residual, 4),
        "mean_step_time_s": {int(k): {"measured": _g(t), "fitted": _g(float(p))}
                             for k, t, p in zip(ks, a.data.mean_s, step.predict(ks, a.settings.gpus_per_node, a.data.batch_fraction))},
        "speedup_measured": {int(k): _g(float(s), 4) for k, s in zip(ks, measured_speedup)},
        "baselines": {
            "amdahl": {"equation": "S(k) = 1/((1-p) + p/k)", "t1_s": _g(a.amdahl.t1_s), "p": _g(a.amdahl.shape, 4)},
            "linear": {"equation": "S(k) = 1 + e(k-1)", "t1_s": _g(a.linear.t1_s), "e": _g(a.linear.shape, 4)},
        } if a.baselines_note is None else {"cannot_fit": a.baselines_note},
        "comparison": {
            "best": a.best,
            "basis": a.basis,
            "scores": {s.name: {"in_sample_rel_error": _g(s.in_sample_rel_error, 4),
                                "heldout_rel_error": None if s.heldout_rel_error is None else _g(s.heldout_rel_error, 4)}
                       for s in a.scores},
        },
        "startup": {"equation": "startup(k) = startup_s + startup_per_doubling_s*log2(k)"
                                + ("" if a.startup.across_nodes is None else
                                   " (+ startup_inter_node_s for k > gpus_per_node, fitted as the mean excess of the "
                                   "jobs across nodes over the line fitted inside one node)"),
                    "definition": "per fresh job at k: dispatch to first report, less one epoch of the same job "
                                  "(steps of its first epoch x its steady step + its steady evaluation)",
                    "slope_assumed": a.startup.slope_assumed},
        "bootstrap": {"requested": a.bootstrap_requested, "succeeded": len(a.step_samples),
                      "method": "refits on raw step samples resampled with replacement within each k"},
    }
    # the factor multiplies the whole epoch at k = 1: fitted to the configurations' epochs
    cost = fit_config_cost(m.configs, space, steps_per_epoch=math.ceil(w.samples_per_epoch / w.batch_per_device))
    fit_block["config_cost"] = cost.report()
    release = release_cost(m)
    resume = resume_fit(m, a)
    for line, keys in ((a.startup, _STARTUP_KEYS), (release, _RELEASE_KEYS), (resume, _RESUME_KEYS)):
        if line is not None:
            held.update(_held(line, keys))
    overheads = bounded_overheads({
        "startup_s": a.startup.base,
        "startup_per_doubling_s": a.startup.per_doubling,
        "eval_s": _mean(m.eval_s),
        "checkpoint_save_s": _mean(m.checkpoint_save_s),
        "checkpoint_restore_s": resume_cost(m, a),
        "decision_latency_s": _mean(m.decision_latency_s),
        "release_s": release.base,
        "release_per_doubling_s": release.per_doubling,
        **({} if resume is None else {"resume_s": resume.base, "resume_per_doubling_s": resume.per_doubling}),
        **({} if a.startup.across_nodes is None else {"startup_inter_node_s": a.startup.across_nodes}),
    }, held)
    if held:
        fit_block["held_at_bound"] = {
            "note": "fitted below the physical bound (a duration below 0, a sharing slow-down below 1): noise "
                    "around a value at the bound; the profile holds the bound",
            "fitted": {key: _g(value) for key, value in sorted(held.items())},
        }
    hardware = {**m.hardware, "gpus_per_node": int(a.settings.gpus_per_node)}
    return plain({
        "name": name,
        "description": description,
        "sources": list(sources),
        "hardware": hardware,
        **({"provenance": provenance} if provenance is not None else {}),
        "workload": {"samples_per_epoch": int(w.samples_per_epoch),
                     "batch_per_device": int(w.batch_per_device), "scaling": w.scaling,
                     "global_batch": None if w.global_batch is None else int(w.global_batch)},
        "step_time": _step_dict(step.model),
        "overheads": {**overheads, "eval_scales": bool(w.eval_scales)},
        "sharing": sharing or {1: 1.0},
        **({"config_cost": cost.block} if cost.block is not None else {}),
        "uncertainty": {"step_time_samples": [_step_dict(s, fitted_keys) for s in a.step_samples]},
        "assumed": assumed,
        "measured": {**({"entrypoint": w.entrypoint} if w.entrypoint else {}), **m.to_dict()},
        "fit": fit_block,
    })


def speedup_grid(measured_k: np.ndarray, gpus_per_node: int) -> np.ndarray:
    """The k the speed-up curve is drawn at: the allocations a cluster of such nodes allows
    (divisors of a node, then whole nodes, doubling) up to the most of 8, twice the largest
    measured k and four nodes, plus every measured k. Only allowed k: in between, the model
    would be evaluated at sizes no search runs (k = 5 on nodes of 4 spans two nodes with a
    third of one idle), which drew a sawtooth."""
    top = max(8.0, 2.0 * float(np.max(measured_k)), 4.0 * gpus_per_node)
    ks = [d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0]
    k = 2 * gpus_per_node
    while k <= top:
        ks.append(k)
        k *= 2
    return np.unique(np.concatenate([np.array(ks, dtype=float), np.asarray(measured_k, dtype=float)]))


def extrapolation_assumptions(a: Analysis, k_max: float) -> dict[str, Any]:
    """The step-time parameters no measurement determined (pinned: a default or the user's
    value) that the curve rests on between the largest measured k and `k_max`: the inter-node
    ones only where that stretch spans nodes, the intra-node ones only where it has k inside
    a node; the others (gamma, grad_bytes) everywhere."""
    gpn, k_meas = a.settings.gpus_per_node, float(a.data.k.max())

    def used(name: str) -> bool:
        if name.startswith("inter_"):
            return k_max > gpn
        if name.startswith("intra_"):
            return k_meas < gpn
        return True

    return {name: x for name, x in sorted(a.step.assumed.items()) if used(name)}


def plot_speedup(m: Measurements, a: Analysis, w: WorkloadFacts, path: Path, name: str = "") -> None:
    """speedup.png: `draw_speedup` on a figure of its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.6, 4.8))
    draw_speedup(ax, m, a, w, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_speedup(ax: Any, m: Measurements, a: Analysis, w: WorkloadFacts, name: str = "") -> None:
    """Measured vs fitted speed-up with the bootstrap band, the baselines and ideal scaling,
    titled with the profile's `name`. Beyond the largest measured k the fitted curve and its
    band are extrapolated: drawn dashed and paler, with the parameters assumed there in the
    legend; the dashed vertical line is the node boundary (inter-node terms start past it).
    The legend sits right of the axes, off the curves."""
    gpn = a.settings.gpus_per_node
    k_meas = float(a.data.k.max())
    grid = speedup_grid(a.data.k, gpn)
    bf = batch_fractions(grid, w)
    lo, hi = a.speedup_band(grid, bf)
    fitted = a.speedup(a.step.model, grid, bf)
    inside, beyond = grid <= k_meas, grid >= k_meas
    band = f"95% band ({len(a.step_samples)} bootstrap fits)" if a.step_samples else "no band (no bootstrap fits)"
    ax.fill_between(grid[inside], lo[inside], hi[inside], color="C0", alpha=0.35, lw=0, label=band)
    ax.fill_between(grid[beyond], lo[beyond], hi[beyond], color="C0", alpha=0.15, lw=0)
    for edge in (lo, hi):  # the band's edges, so a narrow band still shows around the curve
        ax.plot(grid[inside], edge[inside], color="C0", lw=0.6, alpha=0.8)
    ax.plot(grid[inside], fitted[inside], color="C0", lw=1.4, label="fitted step-time model")
    assumed = extrapolation_assumptions(a, float(grid.max()))
    if beyond.sum() > 1:
        note = "".join(f"\n  {n} = {x.value:.3g} ({x.source})" for n, x in assumed.items())
        label = f"extrapolated beyond measured k = {k_meas:g}" + ("\nassumed there (not measured):" + note if note else "")
        ax.plot(grid[beyond], fitted[beyond], color="C0", lw=1.4, ls=(0, (4, 2)), alpha=0.7, label=label)
    t1a, t1l = a.amdahl.t1_s, a.linear.t1_s
    if a.baselines_note is None:  # else a flat line through none of the points: said in a note instead
        ax.plot(grid, grid * bf * t1a / a.amdahl.predict(grid, bf), "--", color="C1", label=f"Amdahl (p={a.amdahl.shape:.3f})")
        ax.plot(grid, grid * bf * t1l / a.linear.predict(grid, bf), ":", color="C2", label=f"linear (e={a.linear.shape:.3f})")
    else:
        ax.text(0.02, 0.70, a.baselines_note.replace(": ", ":\n", 1), transform=ax.transAxes, ha="left", va="top",
                fontsize=7, color="0.3")  # under the legend, where the rising curves are not
    ax.plot(grid, grid, color="0.6", lw=0.8, label="ideal")
    measured = a.data.k * a.data.batch_fraction * a.data.mean_s[0] / a.data.mean_s
    rel_se = np.array([np.std(m.step_samples[int(k)], ddof=1) / np.sqrt(len(m.step_samples[int(k)]))
                       / np.mean(m.step_samples[int(k)]) if len(m.step_samples[int(k)]) > 1 else 0.0 for k in a.data.k])
    err = 1.96 * measured * np.sqrt(rel_se ** 2 + rel_se[0] ** 2)  # ratio of two means, independent samples
    ax.errorbar(a.data.k, measured, yerr=err, fmt="o", color="k", capsize=3, label="measured (mean step time, 95% CI)")
    if grid.max() > gpn:  # between the last k inside a node and the first spanning two (geometric middle: log axis)
        ax.axvline(math.sqrt(gpn * grid[grid > gpn].min()), color="0.5", lw=0.9, ls="--",
                   label=f"node boundary ({gpn} devices per node)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(grid)
    ax.set_xticklabels([f"{k:g}" for k in grid])
    ax.set_xlabel("devices per trial k")
    ax.set_ylabel("speedup (throughput / one device)")
    ax.set_title(f"{name or w.entrypoint or m.source} ({w.scaling} scaling)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)


def summary_table(m: Measurements, a: Analysis, profile: dict[str, Any]) -> Any:
    """A rich Table: per k measured vs fitted step time and speedup, baselines alongside."""
    from rich.table import Table

    t = Table(title="step time per k (ms) and speedup", title_justify="left")
    for col in ("k", "steps", "measured", "fitted", "amdahl", "linear", "speedup meas.", "speedup fit"):
        t.add_column(col, justify="right")
    gpn = a.settings.gpus_per_node
    fitted = a.step.predict(a.data.k, gpn, a.data.batch_fraction)
    am, li = a.amdahl.predict(a.data.k, a.data.batch_fraction), a.linear.predict(a.data.k, a.data.batch_fraction)
    s_meas = a.data.k * a.data.batch_fraction * a.data.mean_s[0] / a.data.mean_s
    s_fit = a.speedup(a.step.model, a.data.k, a.data.batch_fraction)
    for i, k in enumerate(a.data.k.astype(int)):
        baselines = (f"{am[i] * 1e3:.3f}", f"{li[i] * 1e3:.3f}") if a.baselines_note is None else ("n/a", "n/a")
        t.add_row(str(k), str(len(m.step_samples[int(k)])), f"{a.data.mean_s[i] * 1e3:.3f}", f"{fitted[i] * 1e3:.3f}",
                  *baselines, f"{s_meas[i]:.2f}", f"{s_fit[i]:.2f}")
    if a.baselines_note is not None:
        t.caption = a.baselines_note
    return t


def summary_lines(profile: dict[str, Any]) -> list[str]:
    """The few facts under the table: best model, assumptions, overheads, sharing."""
    fit, ov = profile["fit"], profile["overheads"]
    lines = [
        f"best model: {fit['comparison']['best']} ({fit['comparison']['basis']})",
        f"fitted: {', '.join(fit['fitted'])}; measured: "
        + ", ".join(f"{k}={v:g}" for k, v in fit["measured"].items())
        + f"; optimizer {'converged' if fit['success'] else 'FAILED: ' + fit['message']}",
        f"assumed (not identifiable from these k, or not measured): {', '.join(profile['assumed']) or 'none'}",
        f"start-up {ov['startup_s']:.3f} s + {ov['startup_per_doubling_s']:.3f} s per doubling of k"
        + (f" + {ov['startup_inter_node_s']:.3f} s across nodes" if "startup_inter_node_s" in ov else "") + "; eval "
        f"{ov['eval_s'] * 1e3:.1f} ms/epoch; checkpoint save {ov['checkpoint_save_s'] * 1e3:.1f} ms, restore "
        f"{ov['checkpoint_restore_s'] * 1e3:.1f} ms beyond a fresh start-up (restore and first epoch after it); "
        f"epoch boundary {ov['decision_latency_s'] * 1e3:.1f} ms; end of a job {ov.get('release_s', 0.0) * 1e3:.1f} ms + "
        f"{ov.get('release_per_doubling_s', 0.0) * 1e3:.1f} ms per doubling of k"
        + (f"; a resumed job {ov['resume_s']:.3f} s + {ov.get('resume_per_doubling_s', 0.0):.3f} s per doubling of k "
           "before its first epoch" if "resume_s" in ov else ""),
        "sharing slow-down per trial: " + ", ".join(f"m={m_}: {f:.2f}x" for m_, f in profile["sharing"].items()),
    ]
    configs = (profile.get("measured") or {}).get("configs")
    if configs:
        lines.append(
            f"configurations: {configs['n']} sampled from the search space, k=1 step {configs['min_step_s'] * 1e3:.3f}-"
            f"{configs['max_step_s'] * 1e3:.3f} ms, mean {configs['mean_step_s'] * 1e3:.3f} ms (spread cv "
            f"{100 * configs['cv']:.0f}%); k >= 1 and sharing measured at {configs['reference_config']}, step times "
            f"scaled x{configs['scale']:.3f} to the mean (the table shows them scaled)")
    cost_line = describe_config_cost(profile.get("config_cost"), fit.get("config_cost"))
    if cost_line:
        lines.append(cost_line)
    if fit["at_bounds"]:
        lines.append(f"warning: {', '.join(fit['at_bounds'])} ended on a bound (the data lies outside the model there)")
    held = (fit.get("held_at_bound") or {}).get("fitted") or {}
    if held:
        lines.append("held at the bound (measurement noise around it): " + ", ".join(
            f"{key} fitted {value:.3g}, written {1 if key.startswith('sharing.') else 0}" for key, value in held.items()))
    return lines
