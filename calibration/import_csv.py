"""Build `Measurements` from timings the user already has (a CSV), running nothing.

Format: a header row, then one row per observation (repeat a k for several samples; a single
row per k holding a mean works too, the bootstrap band is then zero-width). Lines starting
with `#` and blank lines are skipped. Columns (only `k` and `step_time_s` are required):

    k                    ranks (1, 2, 4, ...), or 1/m (0.5, 0.25, ...) for m trials sharing
                         one device, the step time then being that of one of the m trials
    step_time_s          seconds per optimizer step at k
    startup_s            seconds from launching the k ranks to their first step
    eval_s               seconds of evaluation per epoch (k = 1 rows)
    checkpoint_save_s    seconds to write one checkpoint (k = 1 rows)
    checkpoint_restore_s seconds to read one back (k = 1 rows)
    batch_fraction       per-rank batch at k over the batch at k = 1 (default: from
                         train.scaling, 1 for weak, 1/k for strong scaling)

    k,step_time_s,startup_s
    1,0.1052,1.9
    1,0.1047,
    2,0.0561,2.3
    0.5,0.190,

Every problem (missing file, unknown or repeated column, a value that is not a number or
out of range, no k = 1 rows) is a `UserError` naming the file, the line and the column.
Values that describe something else than their row are refused, not pooled: evaluation and
checkpoint times are per epoch at k = 1 (on a k > 1 row they would be averaged into the k = 1
figure), and a k = 1/m row holds only the step time of one of the m sharing trials, which
cannot be faster than one trial alone.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np

from nasalloc.calibration.measurements import Measurements
from nasalloc.sim.config import number
from nasalloc.sim.errors import UserError

REQUIRED = ("k", "step_time_s")
OPTIONAL = ("startup_s", "eval_s", "checkpoint_save_s", "checkpoint_restore_s", "batch_fraction")
KEY = "timings"


POSITIVE = ("k", "step_time_s", "batch_fraction")  # > 0; every other column >= 0


def _cell(path: Path, line: int, column: str, text: str) -> float:
    """A cell's number; the message names the file, line and column."""
    bound = {"above": 0.0} if column in POSITIVE else {"minimum": 0.0}
    return number(f"{KEY}={path}: line {line}: {column}", text, **bound)


def _allocation(path: Path, line: int, x: float) -> tuple[str, int]:
    """k -> ("ranks", k) for whole k >= 1, ("share", m) for k = 1/m."""
    if x >= 1:
        if x != int(x):
            raise UserError(f"{KEY}={path}: line {line}: k={x:g}: a value >= 1 must be a whole number of devices")
        return "ranks", int(x)
    m = round(1.0 / x)
    if m < 2 or abs(1.0 / m - x) > 1e-6:
        raise UserError(f"{KEY}={path}: line {line}: k={x:g}: below 1 it must be 1/m (0.5, 0.25, ...)")
    return "share", m


def read_timings(path: str | Path, default_batch_fraction: Callable[[int], float] = lambda k: 1.0) -> Measurements:
    """Parse a timings CSV into `Measurements` (source "csv:PATH"); UserError on any bad input.

    `default_batch_fraction(k)` fills b(k)/b where the CSV has no batch_fraction for k (the
    caller derives it from train.scaling).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{KEY}={path}: no such file (a CSV with columns k,step_time_s[,{','.join(OPTIONAL)}])")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{KEY}={path}: cannot read it as text ({type(exc).__name__})") from None
    rows = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise UserError(f"{KEY}={path}: empty; expected a header k,step_time_s and one row per sample")
    header_line, header_text = rows[0]
    header = [h.strip() for h in next(csv.reader([header_text]))]
    twice = sorted({col for col in header if header.count(col) > 1})
    if twice:
        raise UserError(f"{KEY}={path}: line {header_line}: column {twice[0]!r} appears twice")
    for col in header:
        if col not in REQUIRED + OPTIONAL:
            raise UserError(f"{KEY}={path}: line {header_line}: unknown column {col!r}; allowed: "
                            f"{', '.join(REQUIRED + OPTIONAL)}")
    for col in REQUIRED:
        if col not in header:
            raise UserError(f"{KEY}={path}: line {header_line}: the header needs a {col!r} column "
                            f"(got {', '.join(header) or 'nothing'})")
    if len(rows) == 1:
        raise UserError(f"{KEY}={path}: only a header; expected one row per sample after it")
    steps: dict[int, list[float]] = {}
    shares: dict[int, list[float]] = {}
    fractions: dict[int, float] = {}
    m = Measurements(step_samples={}, source=f"csv:{path}")
    for line, row_text in rows[1:]:
        cells = [c.strip() for c in next(csv.reader([row_text]))]
        if len(cells) > len(header):
            raise UserError(f"{KEY}={path}: line {line}: {len(cells)} values for {len(header)} columns")
        values = dict(zip(header, cells))
        for col in REQUIRED:
            if not values.get(col):
                raise UserError(f"{KEY}={path}: line {line}: {col} is empty")
        kind, n = _allocation(path, line, _cell(path, line, "k", values["k"]))
        step = _cell(path, line, "step_time_s", values["step_time_s"])
        (steps if kind == "ranks" else shares).setdefault(n, []).append(step)
        extra = {c: _cell(path, line, c, v) for c, v in values.items() if c in OPTIONAL and v}
        if kind == "share" and extra:
            raise UserError(f"{KEY}={path}: line {line}: {sorted(extra)[0]} on a k={values['k']} row; a row of m "
                            "trials sharing one device holds only their step time (k, step_time_s)")
        per_epoch = sorted(c for c in ("eval_s", "checkpoint_save_s", "checkpoint_restore_s") if c in extra)
        if kind == "ranks" and n != 1 and per_epoch:
            raise UserError(f"{KEY}={path}: line {line}: {per_epoch[0]} on a k={n} row; it is measured at k=1 "
                            "(give it on k=1 rows)")
        if kind == "ranks":
            if "startup_s" in extra:
                m.startup_s.setdefault(n, []).append(extra["startup_s"])
            if "batch_fraction" in extra:
                fractions[n] = extra["batch_fraction"]
            for col in ("eval_s", "checkpoint_save_s", "checkpoint_restore_s"):
                if col in extra:
                    getattr(m, col).append(extra[col])
    if 1 not in steps:
        raise UserError(f"{KEY}={path}: no row with k=1; the single-device step time fixes the compute time")
    alone = float(np.mean(steps[1]))
    for share, v in sorted(shares.items()):
        if float(np.mean(v)) < alone:
            raise UserError(f"{KEY}={path}: k=1/{share} rows: mean step {np.mean(v):.6g} s is faster than k=1's "
                            f"{alone:.6g} s; each of {share} trials sharing a device runs no faster than one alone")
    m.step_samples = {k: np.asarray(v) for k, v in sorted(steps.items())}
    m.share_samples = {s: np.asarray(v) for s, v in sorted(shares.items())}
    m.batch_fraction = {k: fractions.get(k, default_batch_fraction(k)) for k in m.step_samples}
    return m
