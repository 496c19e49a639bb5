"""`trace.jsonl`: the one event log that the simulator writes and the executor journals.

One JSON object per line, the same schema from both clocks (docs/file-formats.md):

    {"time": 12.5, "event": "result", "trial": 3, "epoch": 2, "metric": 0.71, "devices": [0, 1]}

- ``time``: seconds since the search started (simulated or real).
- ``event``: start | resume | result | pause | stop | complete | fail.
- ``epoch``: start/resume: the epoch the job starts from (0 = scratch, else its checkpoint);
  result: epochs trained; pause/stop/complete/fail: epochs trained when it happened.
- ``metric``: on result events (the metric that drives the scheduler), else null.
- ``devices``: device ids the trial holds (GPU index or CPU slot); on k < 1 several trials
  list the same id.
- ``config``: only on start.
- optional ``test_metric`` on result events (held-out metric reported beside ``metric``).
- ``asked_after``: only on a start/resume of a job that waited for devices: the scheduler
  calls made before it was asked (`Scheduler.calls`), so a journal replay asks at that point.
- ``resume_epoch``: only on fail events: the checkpoint a retry starts from (0: none).
- optional ``info`` (a string, for people; no program reads values out of it): why a trial
  failed or waited, or why the executor paused/resumed it ("reallocate" for a per-rung move
  to more devices, "interrupted" on Ctrl-C).

Traces written before ``asked_after`` and ``resume_epoch`` were fields held them at the end
of ``info`` ("waited for devices; asked_after=3", "rank 0 died; resume_epoch=2");
`TraceEvent.from_dict` reads that form into the fields, so such a run still resumes.

The executor appends and flushes one line per event (`TraceWriter`), so a killed run leaves a
valid prefix; `read_trace` tolerates a torn last line for that reason.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasalloc.sim.errors import UserError

EVENTS = ("start", "resume", "result", "pause", "stop", "complete", "fail")
HOLDS = ("start", "resume")  # events after which the trial holds its devices
RELEASES = ("pause", "stop", "complete", "fail")  # events after which it holds none
# the old form of the typed fields: "<why>; asked_after=N" on start/resume, "<why>; resume_epoch=N" on fail
_OLD_FIELD = {"start": "asked_after", "resume": "asked_after", "fail": "resume_epoch"}
_OLD_FORM = re.compile(r"^(.*?)(?:; )?(asked_after|resume_epoch)=(\d+)$")


@dataclass(slots=True, kw_only=True)
class TraceEvent:
    """One line of trace.jsonl. Treat it as immutable: it is not frozen only because a frozen
    dataclass's ``__init__`` (one ``object.__setattr__`` per field) took 4x as long, and the
    simulator builds one per result, start, pause and stop (600k in the paper grid). Keyword
    arguments only: with eleven fields, most of them optional, a positional call is misread."""

    time: float
    event: str
    trial: int
    epoch: int | None = None
    metric: float | None = None
    devices: tuple[int, ...] = ()
    config: dict[str, Any] | None = None
    test_metric: float | None = None
    asked_after: int | None = None
    resume_epoch: int | None = None
    info: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "time": self.time,
            "event": self.event,
            "trial": self.trial,
            "epoch": self.epoch,
            "metric": self.metric,
            "devices": list(self.devices),
        }
        if self.config is not None:
            d["config"] = self.config
        if self.test_metric is not None:
            d["test_metric"] = self.test_metric
        if self.asked_after is not None:
            d["asked_after"] = self.asked_after
        if self.resume_epoch is not None:
            d["resume_epoch"] = self.resume_epoch
        if self.info is not None:
            d["info"] = self.info
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "trace") -> TraceEvent:
        try:
            event = d["event"]
            if event not in EVENTS:
                raise ValueError(f"event={event!r}: allowed: {', '.join(EVENTS)}")
            time = float(d["time"])
            if not math.isfinite(time) or time < 0:
                raise ValueError(f"time={d['time']!r}: must be a finite number >= 0")
            epoch = d.get("epoch")
            metric = d.get("metric")
            test_metric = d.get("test_metric")
            fields = {"asked_after": d.get("asked_after"), "resume_epoch": d.get("resume_epoch")}
            info = d.get("info")
            old = _OLD_FIELD.get(event)
            if old is not None and fields[old] is None and isinstance(info, str):
                m = _OLD_FORM.match(info)
                if m is not None and m.group(2) == old:  # a trace written before the fields existed
                    info, fields[old] = m.group(1) or None, m.group(3)
            return cls(
                time=time,
                event=event,
                trial=int(d["trial"]),
                epoch=None if epoch is None else int(epoch),
                metric=None if metric is None else float(metric),
                devices=tuple(int(x) for x in d.get("devices") or ()),
                config=d.get("config"),
                test_metric=None if test_metric is None else float(test_metric),
                info=info,
                **{k: None if v is None else int(v) for k, v in fields.items()},
            )
        except KeyError as exc:
            raise UserError(f"{where}: missing key {exc.args[0]!r}; every event needs time, event, trial") from None
        except (TypeError, ValueError) as exc:
            raise UserError(f"{where}: {exc}") from None


def write_trace(path: Path, events: Iterable[TraceEvent]) -> None:
    """Write a whole trace at once, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for ev in events:
            fh.write(ev.to_json())
            fh.write("\n")
    os.replace(tmp, path)


class TraceWriter:
    """Append-and-flush journal: every event is on disk before the next decision is taken."""

    def __init__(self, path: Path, fsync: bool = False):
        self.path = Path(path)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._fsync = fsync

    def write(self, event: TraceEvent) -> None:
        self._fh.write(event.to_json() + "\n")
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: Path, tolerate_torn_tail: bool = False) -> list[TraceEvent]:
    """Read and validate a trace; bad lines raise UserError naming file and line.

    With `tolerate_torn_tail`, an unparseable *last* line (a run killed mid-write) is dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such trace file")
    lines = path.read_text(encoding="utf-8").splitlines()
    events = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines):
                break
            raise UserError(f"{path}:{i}: not a JSON object") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{i}: not a JSON object")
        events.append(TraceEvent.from_dict(obj, where=f"{path}:{i}"))
    return events


@dataclass
class Summary:
    """What `summary.json` holds (docs/file-formats.md, plus a few counts)."""

    makespan_s: float
    best_metric: float | None
    best_test_metric: float | None
    best_trial: int | None
    time_to_target_s: float | None
    gpu_utilization: float
    trials: int
    completed: int
    stopped: int
    failed: int
    epochs_trained: int
    device_hours: float
    scheduler: str
    gpus_per_trial: Any
    target: float | None = None
    devices: int = 0
    # trials shared a device while another one idled (k = 1/m, `shared_while_idle`): wall
    # seconds, and the idle device-seconds the extra trials could have used
    shared_while_idle_s: float = 0.0
    shared_while_idle_device_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


def holds(events: Iterable[TraceEvent], *, open_until: float | None = None) -> list[tuple[int, float, float, tuple[int, ...], str]]:
    """(trial, start, end, devices, how it ended) for every interval a trial held devices, in
    the order they ended. A hold still open at the end of the trace (a run killed while the
    job ran) ends at `open_until` as "running", or is left out when that is None."""
    opened: dict[int, tuple[float, tuple[int, ...]]] = {}
    out = []
    for ev in events:
        if ev.event in HOLDS:
            opened[ev.trial] = (ev.time, ev.devices)
        elif ev.event in RELEASES and ev.trial in opened:
            t0, devs = opened.pop(ev.trial)
            out.append((ev.trial, t0, ev.time, devs, ev.event))
    if open_until is not None:
        out += [(trial, t0, open_until, devs, "running") for trial, (t0, devs) in opened.items()]
    return out


def busy_intervals(events: Iterable[TraceEvent]) -> dict[int, list[tuple[float, float]]]:
    """Per device, the merged intervals during which at least one trial held it."""
    return _merged(holds(events))[0]


def _merged(held: list[tuple[int, float, float, tuple[int, ...], str]]) -> tuple[dict[int, list[tuple[float, float]]], bool]:
    """`busy_intervals` of these holds, and whether two holds of one device overlapped (a
    device shared; one ending when the next starts is no overlap)."""
    raw: dict[int, list[tuple[float, float]]] = {}
    for _trial, t0, t1, devs, _how in held:
        for d in devs:
            raw.setdefault(d, []).append((t0, t1))
    merged: dict[int, list[tuple[float, float]]] = {}
    shared = False
    for d, ivs in raw.items():
        ivs.sort()
        out: list[list[float]] = []
        for a, b in ivs:
            if out and a <= out[-1][1]:
                shared = shared or a < out[-1][1]
                out[-1][1] = max(out[-1][1], b)
            else:
                out.append([a, b])
        merged[d] = [(a, b) for a, b in out]
    return merged, shared


def shared_while_idle(held: list[tuple[int, float, float, tuple[int, ...], str]], n_devices: int) -> tuple[float, float]:
    """How long trials shared a device while another device held no trial (k = 1/m):
    -> (wall seconds, device-seconds).

    A trial sharing a device trains at the sharing curve's fraction of its speed; while a
    device sits idle beside it, the allocation (not the search) costs time (seen in a HyperBand search
    on 64 GPUs: two full-budget trials on one GPU for 8.5 h). Wall seconds: time during which at least one
    device held two or more trials and at least one held none. Device-seconds: the integral
    over that time of the idle devices those extra trials could have used, min(trials beyond
    the first on each shared device, idle devices); two trials on one GPU beside idle ones
    for an hour count 3,600 wall and 3,600 device-seconds. `held` is `holds(events)`; a
    release and a hold at the same instant do not overlap.
    """
    points = sorted((t, step, d) for _trial, t0, t1, devs, _how in held for t, step in ((t0, 1), (t1, -1)) for d in devs)
    count: dict[int, int] = {}
    busy = extra = 0  # devices holding a trial; trials beyond the first on their device
    wall = device_s = 0.0
    last = 0.0
    for t, step, d in points:  # at equal times releases (-1) come first
        if extra and busy < n_devices and t > last:
            wall += t - last
            device_s += min(extra, n_devices - busy) * (t - last)
        last = t
        c = count.get(d, 0)
        count[d] = c + step
        if step > 0:
            busy += c == 0
            extra += c >= 1
        else:
            busy -= c == 1
            extra -= c >= 2
    return wall, device_s


def summarize(
    events: list[TraceEvent],
    *,
    mode: str,
    n_devices: int,
    scheduler: str,
    gpus_per_trial: Any,
    target: float | None = None,
) -> Summary:
    """Compute the summary of a trace; identical arithmetic for simulated and real runs."""
    sign = 1.0 if mode == "max" else -1.0
    makespan = 0.0  # trace times are >= 0
    best: TraceEvent | None = None
    time_to_target = None
    epochs = 0
    started: set[int] = set()
    finals: dict[int, str] = {}  # trial -> how it ended (stop, complete, fail), unless it held devices again
    opened: dict[int, tuple[float, tuple[int, ...]]] = {}
    held = []  # `holds(events)`, built in the same pass (this runs once per simulation)
    for ev in events:
        kind, t = ev.event, ev.time
        if t > makespan:
            makespan = t
        if kind == "result":
            if ev.metric is None or math.isnan(ev.metric):
                continue
            epochs += 1
            if best is None or sign * ev.metric > sign * best.metric:  # type: ignore[operator]
                best = ev
            if target is not None and time_to_target is None and sign * ev.metric >= sign * target:
                time_to_target = t
        elif kind in HOLDS:
            opened[ev.trial] = (t, ev.devices)
            finals.pop(ev.trial, None)
            if kind == "start":
                started.add(ev.trial)
        elif kind in RELEASES:
            if ev.trial in opened:
                t0, devs = opened.pop(ev.trial)
                held.append((ev.trial, t0, t, devs, kind))
            if kind != "pause":
                finals[ev.trial] = kind
    merged, shared = _merged(held)
    busy = sum(b - a for ivs in merged.values() for a, b in ivs)
    shared_idle = shared_while_idle(held, n_devices) if shared else (0.0, 0.0)
    return Summary(
        makespan_s=makespan,
        best_metric=None if best is None else best.metric,
        best_test_metric=None if best is None else best.test_metric,
        best_trial=None if best is None else best.trial,
        time_to_target_s=time_to_target,
        gpu_utilization=busy / (n_devices * makespan) if makespan > 0 and n_devices > 0 else 0.0,
        trials=len(started),
        completed=sum(1 for v in finals.values() if v == "complete"),
        stopped=sum(1 for v in finals.values() if v == "stop"),
        failed=sum(1 for v in finals.values() if v == "fail"),
        epochs_trained=epochs,
        device_hours=busy / 3600.0,
        scheduler=scheduler,
        gpus_per_trial=gpus_per_trial,
        target=target,
        devices=n_devices,
        shared_while_idle_s=shared_idle[0],
        shared_while_idle_device_s=shared_idle[1],
    )


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically so a reader never sees half a file."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
