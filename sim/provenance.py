"""Where a profile was measured, and whether this machine is that one.

A profile's timings hold for the machine that measured them: the shipped `digits_cpu`,
measured on another 2-core machine of the same kind, predicted epochs 54% too long there,
and nothing said the profile came from elsewhere. So a profile records its
`provenance:` block, and `nasalloc run` / `nasalloc validate` print one line when the machine
at hand differs from it:

    provenance:
      how: nasalloc calibrate           # or: published figures, timings CSV, ...
      host: vm                          # hostname; null: not known
      date: "2026-11-30"                # UTC day of the measurement
      device: CPU slot (AMD EPYC)       # what one device (k = 1) was
      cpu_model: AMD EPYC
      cores: 2
      torch: 2.13.0+cpu

Every field but `how` may be null: a shipped profile says what is known of its origin and
marks the rest unknown rather than guessing it. An unknown field never matches this machine's
(a profile whose host is unknown cannot be said to come from here).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from nasalloc.sim.errors import UserError

FIELDS = ("how", "host", "date", "device", "cpu_model", "cores", "torch")
COMPARED = ("host", "device", "cpu_model", "cores", "torch")  # what makes timings differ between machines


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_version() -> str | None:
    """The installed torch's version, read from its metadata (no import: sim does not need torch)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def this_machine(device: str | None, how: str) -> dict[str, Any]:
    """This machine's provenance record; `device` names one device (None: not known here)."""
    return {"how": how, "host": socket.gethostname(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "device": device, "cpu_model": cpu_model(), "cores": os.cpu_count(), "torch": torch_version()}


def parse_provenance(node: Any, where: str) -> dict[str, Any]:
    """The `provenance:` block checked: a mapping of FIELDS, `how` a string, `cores` a whole
    number or null, the rest strings or null; UserError naming the bad entry."""
    if not isinstance(node, Mapping):
        raise UserError(f"{where}={node!r}: expected a mapping with {', '.join(FIELDS)}")
    unknown = sorted(str(k) for k in node if k not in FIELDS)
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown; allowed: {', '.join(FIELDS)}")
    if not isinstance(node.get("how"), str) or not node["how"].strip():
        raise UserError(f"{where}.how: required, how the numbers were obtained (e.g. nasalloc calibrate)")
    for key, value in node.items():
        if key == "cores":
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"{where}.cores={value!r}: must be a whole number >= 1 or null")
        elif value is not None and not isinstance(value, str):
            raise UserError(f"{where}.{key}={value!r}: must be a string or null")
    return {key: node.get(key) for key in FIELDS}


def differences(recorded: Mapping[str, Any], here: Mapping[str, Any]) -> list[str]:
    """The compared fields in which `recorded` is not `here` (an unknown recorded value, or
    one this machine cannot tell, counts as different unless both are unknown)."""
    return [key for key in COMPARED if recorded.get(key) != here.get(key)]


def _describe(record: Mapping[str, Any]) -> str:
    def value(key: str) -> str:
        v = record.get(key)
        return "unknown" if v is None else str(v)

    return (f"host {value('host')}, {value('device')}, CPU {value('cpu_model')} x {value('cores')} cores, "
            f"torch {value('torch')}")


def foreign_line(name: str, recorded: Mapping[str, Any] | None, here: Mapping[str, Any], where: str = "here") -> str | None:
    """One line when the profile `name` was measured elsewhere than `here` (None: same
    machine). A profile without a provenance block is from an unknown machine."""
    if recorded is None:
        return (f"warning: profile {name} does not say where it was measured; {where}: {_describe(here)}. Its timings "
                "may not hold here: `nasalloc calibrate` measures this machine")
    diff = differences(recorded, here)
    if not diff:
        return None
    known = [key for key in diff if recorded.get(key) is not None]
    verb = "was measured on another machine" if known else "may come from another machine (what differs was not recorded)"
    when = f" on {recorded['date']}" if recorded.get("date") else ""
    return (f"warning: profile {name} {verb}: {recorded.get('how')}{when}, {_describe(recorded)}; {where}: "
            f"{_describe(here)} (differs in {', '.join(diff)}). Its timings may not hold here: `nasalloc calibrate` "
            "measures this machine")
