"""Recorded searches: what a search that really ran left behind, read into one form.

Most people who would replay a search have its records already, from nasalloc, Ray Tune or
Syne Tune. `read_recording(path, ...)` reads any of them into a `Recording`: per recorded
trial (in the order the trials were created) its learning curve, its configuration and, when
the records hold times, each epoch's measured seconds with the k it ran at
(`timings.RecordedTimes`). What `workload.path` may name, and where each value comes from:

| records | curve (epoch, metric) | epoch time | k it ran at |
|---|---|---|---|
| `trace.jsonl` of `nasalloc run` | result events | time between results; a job's first from its start | each job's devices; 1/m on one device that m trials held during the epoch |
| CSV `config_id, epoch, metric[, test_metric]` | its rows | column `epoch_seconds` or `time_this_iter_s` if present | column `gpus_per_trial` if present |
| Ray Tune experiment folder (`storage_path/name`) | each trial folder's `result.json` (else `progress.csv`): `training_iteration`, the metric | `time_this_iter_s` | the GPUs in the trial's resources (`experiment_state-*.json`) |
| Syne Tune `results.csv.zip` / `results.csv` (or its tuner folder) | rows per `trial_id`: the epoch column (`time_attr` in `metadata.json`, else `epoch`), the metric | differences of `st_worker_time` (seconds since the trial's process began reporting) | not recorded |

The metric is the column named by `workload.metric.name` (a trace's and the CSV's own
`metric`). Where k is not recorded, `workload.recorded_k` is assumed and the report says so.
Configurations come from the trace's start events, Ray Tune's `params.json` (else
result.json's `config`) and Syne Tune's `config_*` columns; the scheduler of a simulation still samples its
own from `workload.space` (a simulated trial replays recorded trial i mod n whatever its
configuration), the recorded ones say what the replayed trials were.

Ray Tune writes each trial's resources only into the experiment state, as a pickled
`PlacementGroupFactory`. It is read opcode by opcode with `pickletools` (never unpickled: no
code of the file runs, and Ray need not be installed): the GPU amounts of its bundles, summed.

Bad records give one line naming the file (and line) and what is wrong: a folder with no
trials, a trial without the metric, a negative or missing time, a folder that mixes records
of several kinds or experiments.
"""

from __future__ import annotations

import csv
import io
import json
import math
import pickletools
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from nasalloc.sim.cluster import exact_k
from nasalloc.sim.config import number
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_allocation
from nasalloc.sim.timings import RecordedEpoch, RecordedTimes
from nasalloc.sim.trace import HOLDS, read_trace
from nasalloc.sim.trace import holds as trace_holds

Curve = dict[int, tuple[float, float | None]]  # epoch -> (metric, test_metric)

RAY_RESULTS = ("result.json", "progress.csv")
SYNE_RESULTS = ("results.csv.zip", "results.csv")
TIME_COLUMNS = ("epoch_seconds", "time_this_iter_s")  # a CSV's epoch time, by preference


@dataclass(frozen=True)
class Recording:
    """A recorded search: per recorded trial its id, curve and configuration, and the epoch
    times when the records hold them (None: every epoch's time comes from the profile)."""

    kind: str  # nasalloc trace | CSV | Ray Tune experiment | Syne Tune results
    path: Path
    trial_ids: tuple[str, ...]
    curves: tuple[Curve, ...]
    configs: tuple[dict[str, Any], ...]
    times: RecordedTimes | None


def read_recording(path: str | Path, metric_name: str, recorded_k: Fraction, key: str = "workload.path") -> Recording:
    """The recorded search at `path` (module docstring); UserError naming the file when not usable.

    `metric_name` is the column Ray Tune and Syne Tune results are read for; `recorded_k`
    the allocation assumed where the records do not say it."""
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return _folder(p, metric_name, recorded_k, key, str(path))
    if not p.is_file():
        raise UserError(f"{key}={path}: no such file or folder (a trace.jsonl from `nasalloc run`, a CSV, "
                        f"a Ray Tune experiment folder or Syne Tune results.csv.zip)")
    if p.name in SYNE_RESULTS:
        return _syne_tune(p, metric_name, recorded_k)
    if p.suffix == ".csv":
        return _csv(p, recorded_k)
    return _trace(p)


# ----- folders: which records they hold ---------------------------------------------------

def _is_ray_trial(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RAY_RESULTS)


def _folder(folder: Path, metric_name: str, recorded_k: Fraction, key: str, given: str) -> Recording:
    """A Ray Tune experiment, a Syne Tune tuner folder or a `nasalloc run` folder; refuses a
    folder that holds records of several kinds, or several experiments, naming them."""
    subfolders = sorted(d for d in folder.iterdir() if d.is_dir())
    ray_trials = [d for d in subfolders if _is_ray_trial(d)]
    syne = [folder / name for name in SYNE_RESULTS if (folder / name).is_file()]
    trace = folder / "trace.jsonl"
    kinds = [text for text, found in ((f"Ray Tune trial folders ({len(ray_trials)})", ray_trials),
                                      (f"Syne Tune {syne[0].name if syne else ''}", syne),
                                      ("a nasalloc trace.jsonl", trace.is_file())) if found]
    if len(kinds) > 1:
        raise UserError(f"{folder}: a mixed folder: it holds {' and '.join(kinds)}; point {key} at the records of one search")
    if ray_trials:
        return _ray_experiment(folder, ray_trials, metric_name, recorded_k)
    if syne:
        return _syne_tune(syne[0], metric_name, recorded_k)
    if trace.is_file():
        return _trace(trace)
    experiments = [d.name for d in subfolders if any(_is_ray_trial(t) for t in d.iterdir() if t.is_dir())
                   or any((d / name).is_file() for name in SYNE_RESULTS)]
    if len(experiments) > 1:
        raise UserError(f"{folder}: a mixed folder: it holds {len(experiments)} searches ({', '.join(experiments)}); "
                        f"point {key} at one of them")
    if len(experiments) == 1:
        return _folder(folder / experiments[0], metric_name, recorded_k, key, given)
    if any(folder.glob("experiment_state-*.json")):
        raise UserError(f"{folder}: a Ray Tune experiment with no trials (no trial folder holds {' or '.join(RAY_RESULTS)})")
    raise UserError(f"{key}={given}: no trials in this folder (no Ray Tune trial folders, Syne Tune "
                    f"{' or '.join(SYNE_RESULTS)} or trace.jsonl)")


def _assumed(recorded_k: Fraction) -> str:
    return f"k not recorded: workload.recorded_k={format_allocation(recorded_k)} assumed"


def _epoch(value: Any, where: str, what: str) -> int:
    x = number(f"{where}: {what}", value, minimum=1)
    if x != int(x):
        raise UserError(f"{where}: {what}={value!r}: must be a whole number >= 1")
    return int(x)


def _scalar(text: str) -> Any:
    """A CSV cell as the number it spells, else the string."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# ----- nasalloc trace ------------------------------------------------------------------------

def _trace(path: Path) -> Recording:
    """Curves, configurations and epoch times of a `nasalloc run` trace (timings module)."""
    events = read_trace(path, tolerate_torn_tail=True)
    holds: dict[int, list[tuple[float, float, int]]] = {}  # device -> (start, end, trial) of every job on it
    end = max((ev.time for ev in events), default=0.0)
    for trial, t0, t1, devices, _how in trace_holds(events, open_until=end):  # open: a run killed while the job ran
        for d in devices:
            holds.setdefault(d, []).append((t0, t1, trial))

    curves: dict[int, Curve] = {}
    times: dict[int, dict[int, RecordedEpoch]] = {}
    configs: dict[int, dict[str, Any]] = {}
    job: dict[int, tuple[float, bool, bool]] = {}  # trial -> (time of its last start or result, first epoch?, restored?)
    for ev in events:
        if ev.event in HOLDS:
            job[ev.trial] = (ev.time, True, (ev.epoch or 0) > 0)
            if ev.config is not None:
                configs.setdefault(ev.trial, dict(ev.config))
        elif ev.event == "result" and ev.epoch is not None and ev.metric is not None and ev.trial in job:
            since, first, restored = job[ev.trial]
            job[ev.trial] = (ev.time, False, False)
            curves.setdefault(ev.trial, {}).setdefault(ev.epoch, (ev.metric, ev.test_metric))
            if ev.epoch not in times.setdefault(ev.trial, {}):
                k = _trace_k(ev.devices, since, ev.time, holds)
                times[ev.trial][ev.epoch] = RecordedEpoch(ev.time - since, k, startup=first, restore=first and restored,
                                                          decision=not first)
    order = sorted(curves)
    recorded = RecordedTimes(tuple(times[t] for t in order),
                             f"nasalloc trace {path}: time between results less the decision time, a job's first epoch "
                             f"from its start less start-up (and restore); k from each job's devices") if order else None
    return Recording("nasalloc trace", path, tuple(str(t) for t in order), tuple(curves[t] for t in order),
                     tuple(configs.get(t, {}) for t in order), recorded)


def _trace_k(devices: tuple[int, ...], t0: float, t1: float, holds: dict[int, list[tuple[float, float, int]]]) -> Fraction:
    """The k an epoch in [t0, t1] ran at: its number of devices, or 1/m on one device that m
    trials (itself included) held at some time during the epoch."""
    if len(devices) != 1:
        return Fraction(max(len(devices), 1))
    trials = {trial for a, b, trial in holds.get(devices[0], []) if a < t1 and b > t0}
    return Fraction(1, max(len(trials), 1))


# ----- CSV -----------------------------------------------------------------------------------

def _csv(p: Path, recorded_k: Fraction) -> Recording:
    with open(p, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        id_col = next((c for c in ("config_id", "config", "trial") if c in fields), None)
        if id_col is None or "epoch" not in fields or "metric" not in fields:
            raise UserError(f"{p}:1: header must name config_id, epoch, metric[, test_metric][, epoch_seconds][, gpus_per_trial]; "
                            f"got {', '.join(fields) or 'nothing'}")
        time_col = next((c for c in TIME_COLUMNS if c in fields), None)
        k_col = "gpus_per_trial" if "gpus_per_trial" in fields else None
        curves: dict[str, Curve] = {}
        times: dict[str, dict[int, RecordedEpoch]] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                epoch = int(row["epoch"])
                metric = float(row["metric"])
                test = float(row["test_metric"]) if row.get("test_metric") else None
            except (TypeError, ValueError):
                raise UserError(f"{p}:{line}: epoch must be an integer and metric a number") from None
            trial = row[id_col]
            if epoch in curves.setdefault(trial, {}):
                continue
            curves[trial][epoch] = (metric, test)
            if time_col is not None:
                seconds = number(f"{p}:{line}: {time_col}", row[time_col], minimum=0)
                k = recorded_k if k_col is None else _csv_k(row[k_col], f"{p}:{line}")
                times.setdefault(trial, {})[epoch] = RecordedEpoch(seconds, k)
    order = list(curves)
    recorded = None
    if time_col is not None and order:
        where = f"k from column {k_col}" if k_col else _assumed(recorded_k)
        recorded = RecordedTimes(tuple(times[t] for t in order), f"CSV {p}: column {time_col}; {where}")
    return Recording("CSV", p, tuple(order), tuple(curves[t] for t in order), tuple({} for _ in order), recorded)


def _csv_k(text: str, where: str) -> Fraction:
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{where}: gpus_per_trial={text!r}: must be a number of devices > 0 (or 1/m)")
    return exact_k(value)


# ----- Ray Tune ------------------------------------------------------------------------------

def _ray_experiment(folder: Path, trial_dirs: list[Path], metric_name: str, recorded_k: Fraction) -> Recording:
    """Every trial folder of one Ray Tune experiment, in trial id order (the order Ray created them)."""
    gpus = _ray_gpus(folder)
    trials = []
    empty = 0
    for d in trial_dirs:
        rows, results = _ray_rows(d)
        if not rows:
            empty += 1
            continue
        trials.append((str(rows[0][1].get("trial_id") or d.name), d, rows, results))
    if not trials:
        raise UserError(f"{folder}: a Ray Tune experiment with no trials (its {len(trial_dirs)} trial folders hold no results)")
    experiments = sorted({tid.rsplit("_", 1)[0] for tid, *_ in trials if "_" in tid})
    if len(experiments) > 1:
        raise UserError(f"{folder}: a mixed folder: trials of {len(experiments)} Ray Tune experiments "
                        f"({', '.join(experiments)}); point workload.path at one experiment's folder")
    trials.sort(key=lambda t: t[0])
    curves, configs, times, ks, unknown = [], [], [], [], 0
    for tid, d, rows, results in trials:
        k = gpus.get(tid)
        if k is None:
            unknown += 1
            k = recorded_k
        ks.append(k)
        curve: Curve = {}
        epochs: dict[int, RecordedEpoch] = {}
        for where, row in rows:
            if metric_name not in row:
                raise UserError(f"{results}: no {metric_name!r} in its results (workload.metric.name); "
                                f"it reports: {', '.join(sorted(str(c) for c in row)) or 'nothing'}")
            epoch = _epoch(row.get("training_iteration"), where, "training_iteration")
            metric = number(f"{where}: {metric_name}", row[metric_name])
            seconds = number(f"{where}: time_this_iter_s", row.get("time_this_iter_s"), minimum=0)
            if epoch not in curve:
                curve[epoch] = (metric, None)
                epochs[epoch] = RecordedEpoch(seconds, k)
        curves.append(curve)
        times.append(epochs)
        configs.append(_ray_config(d, rows))
    notes = ["k from each trial's GPUs" if not unknown else
             (f"{_assumed(recorded_k)} (no GPUs in the resources of {unknown} of {len(trials)} trials)")]
    if empty:
        notes.append(f"{empty} trial folders without results left out")
    source = f"Ray Tune experiment {folder}: time_this_iter_s; " + "; ".join(notes)
    return Recording("Ray Tune experiment", folder, tuple(t[0] for t in trials), tuple(curves), tuple(configs),
                     RecordedTimes(tuple(times), source))


def _ray_rows(trial: Path) -> tuple[list[tuple[str, dict[str, Any]]], Path]:
    """(where, result) per reported result of one trial: result.json's lines, else progress.csv's rows."""
    path = trial / "result.json"
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.is_file():
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{i}: not a JSON object (Ray Tune writes one result per line)")
            rows.append((f"{path}:{i}", row))
        return rows, path
    path = trial / "progress.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            rows.append((f"{path}:{i}", {k: v for k, v in row.items() if k is not None}))
    return rows, path


def _ray_config(trial: Path, rows: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """params.json, else result.json's `config` (Ray 2.60's progress.csv has no configuration)."""
    params = trial / "params.json"
    if params.is_file():
        try:
            config = json.loads(params.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            config = None
        if not isinstance(config, dict):
            raise UserError(f"{params}: not a JSON object (the trial's configuration)")
        return config
    config = rows[0][1].get("config")
    return dict(config) if isinstance(config, dict) else {}


def _ray_gpus(folder: Path) -> dict[str, Fraction]:
    """Trial id -> GPUs per trial from the newest experiment_state-*.json (none: {})."""
    states = sorted(folder.glob("experiment_state-*.json"))
    if not states:
        return {}
    state_path = states[-1]
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        entries = state["trial_data"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{state_path}: not a Ray Tune experiment state (JSON with trial_data)") from None
    out = {}
    for entry in entries:
        trial = entry[0] if isinstance(entry, list) and entry else entry
        if isinstance(trial, str):
            try:
                trial = json.loads(trial)
            except json.JSONDecodeError:
                raise UserError(f"{state_path}: a trial_data entry is not JSON") from None
        if not isinstance(trial, dict) or "trial_id" not in trial:
            raise UserError(f"{state_path}: a trial_data entry without trial_id")
        gpus = _pickled_gpus(trial.get("placement_group_factory"), f"{state_path}: trial {trial['trial_id']}")
        if gpus > 0:
            out[str(trial["trial_id"])] = exact_k(gpus)
    return out


def _pickled_gpus(value: Any, where: str) -> float:
    """Sum of the "GPU" amounts in a hex-encoded pickled PlacementGroupFactory, read with
    pickletools (no unpickling); 0 when the trial asked for no GPU."""
    if isinstance(value, Mapping):  # Ray's CLOUDPICKLE_FALLBACK form
        value = value.get("value")
    if not isinstance(value, str):
        return 0.0
    try:
        ops = list(pickletools.genops(bytes.fromhex(value)))
    except ValueError:
        raise UserError(f"{where}: placement_group_factory is not the pickle Ray Tune writes") from None
    total, after_gpu = 0.0, False
    for op, arg, _pos in ops:
        if op.name == "MEMOIZE":
            continue
        if after_gpu and isinstance(arg, (int, float)) and not isinstance(arg, bool):
            total += float(arg)
        after_gpu = isinstance(arg, str) and arg == "GPU"
    return total


# ----- Syne Tune -----------------------------------------------------------------------------

def _syne_tune(p: Path, metric_name: str, recorded_k: Fraction) -> Recording:
    """Syne Tune's results (one row per reported result, all trials in one table)."""
    if p.suffix == ".zip":
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
                if len(names) != 1:
                    raise UserError(f"{p}: expected one CSV inside (Syne Tune's results.csv); found {len(names)} files")
                text = zf.read(names[0]).decode("utf-8")
        except zipfile.BadZipFile:
            raise UserError(f"{p}: not a zip file (Syne Tune writes results.csv.zip)") from None
    else:
        text = p.read_text(encoding="utf-8")
    epoch_col = _syne_time_attr(p.parent / "metadata.json")
    reader = csv.DictReader(io.StringIO(text))
    fields = list(reader.fieldnames or [])
    for column, what in (("trial_id", "Syne Tune's trial_id"), (metric_name, "workload.metric.name"),
                         (epoch_col, "the epoch: Syne Tune's time_attr")):
        if column not in fields:
            raise UserError(f"{p}: no column {column!r} ({what}); it has: {', '.join(fields) or 'nothing'}")
    timed = "st_worker_time" in fields
    curves: dict[int, Curve] = {}
    times: dict[int, dict[int, RecordedEpoch]] = {}
    configs: dict[int, dict[str, Any]] = {}
    last: dict[int, float] = {}  # trial -> st_worker_time of its previous result in the same process
    for line, row in enumerate(reader, start=2):
        where = f"{p}:{line}"
        trial = int(number(f"{where}: trial_id", row["trial_id"], minimum=0))
        epoch = _epoch(row[epoch_col], where, epoch_col)
        metric = number(f"{where}: {metric_name}", row[metric_name])
        configs.setdefault(trial, {k[len("config_"):]: _scalar(v) for k, v in row.items() if k and k.startswith("config_")})
        curve = curves.setdefault(trial, {})
        if not timed:
            curve.setdefault(epoch, (metric, None))
            continue
        clock = number(f"{where}: st_worker_time", row["st_worker_time"], minimum=0)
        if "st_worker_iter" in fields:  # the Reporter's count of results, 0 in a new process
            new_process = number(f"{where}: st_worker_iter", row["st_worker_iter"], minimum=0) == 0
        else:
            new_process = clock < last.get(trial, math.inf)
        since = 0.0 if new_process or trial not in last else last[trial]
        if clock < since:
            raise UserError(f"{where}: st_worker_time={clock}: negative epoch time (below the trial's previous {since})")
        last[trial] = clock
        if epoch not in curve:
            curve[epoch] = (metric, None)
            times.setdefault(trial, {})[epoch] = RecordedEpoch(clock - since, recorded_k)
    if not curves:
        raise UserError(f"{p}: no trials (no result rows)")
    order = sorted(curves)
    recorded = None
    if timed:
        recorded = RecordedTimes(tuple(times[t] for t in order),
                                 f"Syne Tune results {p}: differences of st_worker_time; {_assumed(recorded_k)} "
                                 f"(Syne Tune does not record GPUs per trial)")
    return Recording("Syne Tune results", p, tuple(str(t) for t in order), tuple(curves[t] for t in order),
                     tuple(configs[t] for t in order), recorded)


def _syne_time_attr(metadata: Path) -> str:
    """The epoch column: the scheduler's `time_attr` in metadata.json beside the results, else `epoch`."""
    if metadata.is_file():
        try:
            meta = json.loads(metadata.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"{metadata}: not JSON (Syne Tune's metadata.json)") from None
        attr = (meta.get("scheduler_kwargs") or {}).get("time_attr") if isinstance(meta, dict) else None
        if isinstance(attr, str) and attr:
            return attr
    return "epoch"


__all__ = ["Curve", "Recording", "read_recording"]
