"""How durations and allocations are shown to people, in one place, so that `simulate`,
`recommend` (table, verdict, plots), `run` and `validate` write them alike.

Durations take their unit from their magnitude: hours from 2 h up, minutes from 2 min up,
seconds below ("2.80 h", "25.1 min", "46.0 s"), so a figure needs few digits and the unit
is never a surprise. A column of durations (the recommend table, a plot axis) uses one unit
for all its values so they compare at a glance: pick it with `duration_unit` of the column,
write each value with `format_in_unit`.

Allocations (devices per trial, k) read as the values `gpus_per_trial=` accepts: whole
devices as integers ("2"), a share of one device as a fraction ("1/4": four trials share a
device) and a per-rung schedule as a list without spaces ("[1/4,1/2,1,2]").

Other quantities (cost) have no unit to switch, so a column of them shares one scale instead:
when its smallest value is under 0.1, `number_scale` picks the power of 1000 that brings it to
1 or more (costs of 0.00696 and 0.213 read as 6.96 and 213 under "×0.001"), and
`format_significant` writes each value with three significant digits and its interval at the
same decimal place ("6.96 ±0.01", "213 ±37"), never in exponent notation, so the column keeps
its width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fractions import Fraction

# unit, seconds per unit, decimals, the smallest duration shown in it
_UNITS = (("h", 3600.0, 2, 2 * 3600.0), ("min", 60.0, 1, 120.0), ("s", 1.0, 1, 0.0))


def duration_unit(seconds: float) -> tuple[float, str]:
    """(seconds per unit, unit name) for a duration of this size: "h", "min" or "s"."""
    for name, scale, _, smallest in _UNITS:
        if abs(seconds) >= smallest:
            return scale, name
    return 1.0, "s"  # NaN compares false everywhere


def format_in_unit(seconds: float, unit: str) -> str:
    """The number alone, in `unit` ("h", "min" or "s"), with that unit's decimals."""
    scale, decimals = next((s, d) for name, s, d, _ in _UNITS if name == unit)
    return f"{seconds / scale:.{decimals}f}"


def format_duration(seconds: float) -> str:
    """A duration with its unit chosen by magnitude: 46 -> "46.0 s", 150 -> "2.5 min",
    10080 -> "2.80 h"."""
    _, unit = duration_unit(seconds)
    return f"{format_in_unit(seconds, unit)} {unit}"


def number_scale(values: Iterable[float]) -> tuple[float, str]:
    """(divisor, label) shared by a column of plain numbers: (1.0, "") when its smallest
    nonzero magnitude is 0.1 or more (three significant digits then need at most 3
    decimals), else the power of 1000 that brings that value to at least 1, labelled as the
    factor to multiply by: [0.00696, 0.213] -> (0.001, "×0.001")."""
    magnitudes = [abs(v) for v in values if math.isfinite(v) and v != 0]
    if not magnitudes or min(magnitudes) >= 0.1:
        return 1.0, ""
    power = math.floor(math.log10(min(magnitudes)) / 3) * 3  # 0.00696 -> -3, 0.5 -> -3, 1e-7 -> -9
    scale = 10.0 ** power
    return scale, "×0.001" if power == -3 else f"×1e{power}"


def format_significant(value: float, half_width: float | None = None, digits: int = 3) -> str:
    """`value` with `digits` significant digits (all of its integer digits when it has more),
    thousands separated, and "±half_width" at the same decimal place: (0.2134, 0.0372) ->
    "0.213 ±0.037", (97.5, 16) -> "97.5 ±16.0", (998.4, 144.2) -> "998 ±144"."""
    if not math.isfinite(value):
        return str(value)
    exponent = math.floor(math.log10(abs(value))) if value != 0 else digits - 1  # 0 -> "0"
    decimals = max(0, digits - 1 - exponent)
    text = f"{value:,.{decimals}f}"
    if half_width is not None and math.isfinite(half_width):
        text += f" ±{half_width:,.{decimals}f}"
    return text


def _share(k: float | int | str | Fraction) -> str:
    if isinstance(k, str) and k.strip() == "elastic":  # the policy (sim/elastic.py), not a number
        return "elastic"
    if isinstance(k, str):
        value = Fraction(k.strip())
    else:
        value = Fraction(k).limit_denominator(1024)  # 0.333... is a third of a device
    return str(value)  # Fraction prints "2" or "1/4"


def format_allocation(k: float | int | str | Fraction | Sequence[float | int | str | Fraction]) -> str:
    """Devices per trial as users write them: 2 -> "2", 0.25 -> "1/4", "1/2" -> "1/2",
    [0.25, 0.5, 1, 2] -> "[1/4,1/2,1,2]" (one k per rung)."""
    if isinstance(k, (list, tuple)):
        return "[" + ",".join(_share(x) for x in k) + "]"
    return _share(k)  # type: ignore[arg-type]


__all__ = ["duration_unit", "format_allocation", "format_duration", "format_in_unit", "format_significant",
           "number_scale"]
