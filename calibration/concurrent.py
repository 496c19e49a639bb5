"""Run several groups at once on the executor's launcher: how a sharing slow-down is measured.

`nasalloc.execute.launch.Launcher.run` runs one group and waits for it. Measuring the
slow-down of m trials sharing one device needs m single-rank groups running *at the same
time* on m worker slots of that device, so this drives the launcher's own backend
(`Launcher.backend`: the same warm workers, `GroupSpec`, events) with several groups in
flight. It is a thin loop over the executor's public backend calls, not a second launcher:
the process handling, process groups and failure rules stay the executor's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nasalloc.execute.backend import Ended, Failed, GroupSpec, Report
from nasalloc.execute.devices import Slot
from nasalloc.execute.launch import Launcher, RanksResult


def run_concurrently(launcher: Launcher, entrypoint: str, config: dict[str, Any], groups: list[list[Slot]], *,
                     max_steps: int, workdir: Path, timeout_s: float = 600.0) -> list[RanksResult]:
    """Start one group per entry of `groups` at once, each until `max_steps`; -> one result each.

    Reports are answered CONTINUE (steps, not epochs, end these runs); nothing is saved.
    """
    backend = launcher.backend
    results: dict[int, RanksResult] = {}
    t0 = time.perf_counter()
    for i, slots in enumerate(groups):
        spec = GroupSpec(
            trial=10_000 + i, config=dict(config), entrypoint=entrypoint, slots=list(slots), start_epoch=0,
            until_epoch=1_000_000, checkpoint_dir=workdir / f"shared_{i}", log_path=workdir / f"shared_{i}.log",
            timeout_s=timeout_s, record_steps=True, max_steps=max_steps, require_decision=False,
        )
        results[backend.start_group(spec)] = RanksResult(ok=False, info="", wall_s=0.0)
    pending = set(results)
    while pending:
        for ev in backend.poll(1.0):
            gid = getattr(ev, "group", None)
            if gid not in pending:
                continue
            r = results[gid]
            if isinstance(ev, Report):
                r.reports.append((time.perf_counter() - t0, ev.epoch, ev.metric, ev.extra))
                backend.decide(gid, "continue", save=False)
            elif isinstance(ev, Ended):
                r.ok, r.wall_s = True, time.perf_counter() - t0
                r.step_times = [d["step_times"] for d in ev.ranks]
                r.steps = [d["steps"] for d in ev.ranks]
                r.rank_wall_s = [d["wall_s"] for d in ev.ranks]
                pending.discard(gid)
            elif isinstance(ev, Failed):
                r.info, r.wall_s = ev.info, time.perf_counter() - t0
                pending.discard(gid)
                for other in list(pending):  # one failure spoils the measurement: stop the rest
                    backend.kill_group(other, "stopped: another sharing run failed")
    return [results[g] for g in sorted(results)]
