"""Fingerprints of simulated traces, to show that a refactoring changed no simulated event.

Prints one line per set of simulations: how many there are, their trace events in all, and
a SHA-256 over every event of every trace (in a fixed order, each event as its trace line).
Run it before and after a change and compare the lines (`diff`):

    python benchmarks/regression_hashes.py > before.txt   # on the old commit
    python benchmarks/regression_hashes.py > after.txt    # on the new one
    diff before.txt after.txt

The sets:
- paper-grid: schedulers {hyperband, asha, bohb} x clusters {4, 8, 16, 32, 64} GPUs (4 per
  node) x every allowed k from 1/4 to 16 x `--seeds` seeds, profile resnet50_a100 (as
  benchmarks/sim_speed.py (b));
- recommend-default: every simulation of `nasalloc recommend` with no overrides (static k,
  per-rung schedules, elastic), one line per kind of allocation;
- recommend-<profile>: the same sweep with `profile=<profile>` for each shipped calibrated
  profile (`--profiles`), with unshare=false and unshare=true; and recommend-<profile>+compute,
  the same profile with `config_cost.applies_to: compute` (what calibration writes now: the
  configuration factor scales the compute, not the all-reduce), where a change to how a
  policy prices epochs and moves shows, and only in the elastic and unshare rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import multiprocessing as mp
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from nasalloc.cli import COMMANDS, _compose
from nasalloc.sim.cluster import ClusterSpec, allowed_allocations, parse_allocation
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.profile import PROFILE_FOLDER
from nasalloc.sim.recommend import load
from nasalloc.sim.simulate import build_spec


def fingerprint(spec: SimulationSpec) -> tuple[int, str]:
    """(trace events, SHA-256 of the trace's lines) of one simulation."""
    events = simulate(spec).events
    digest = hashlib.sha256()
    for ev in events:
        digest.update(ev.to_json().encode())
        digest.update(b"\n")
    return len(events), digest.hexdigest()


def paper_grid(seeds: int) -> list[SimulationSpec]:
    specs = []
    for sched in ("hyperband", "asha", "bohb"):
        base = build_spec(_compose(COMMANDS["simulate"], [f"scheduler={sched}"]))
        for gpus in (4, 8, 16, 32, 64):
            cluster = ClusterSpec(f"juwels_{gpus}", gpus, 4)
            for k in allowed_allocations(cluster, min_k=0.25):
                if k <= 16:
                    alloc = parse_allocation(k, cluster)
                    specs.extend(dataclasses.replace(base, cluster=cluster, allocation=alloc, seed=s) for s in range(seeds))
    return specs


def kind(spec: SimulationSpec) -> str:
    """The row a simulation of the recommend sweep belongs to."""
    alloc = spec.allocation
    return "elastic" if alloc.is_elastic else "per-rung" if alloc.per_rung else "static"


def report(label: str, specs: Sequence[SimulationSpec], pool: mp.pool.Pool) -> None:
    groups: dict[str, list[SimulationSpec]] = {}
    for spec in specs:
        groups.setdefault(kind(spec), []).append(spec)
    for name, group in sorted(groups.items()):
        prints = pool.map(fingerprint, group, chunksize=4)
        digest = hashlib.sha256("".join(h for _, h in prints).encode()).hexdigest()
        print(f"{label} {name}: {len(group)} simulations, {sum(n for n, _ in prints)} trace events, sha256 {digest[:16]}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the paper grid")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--profiles", nargs="*", default=["digits_cpu"], help="calibrated profiles to sweep as well")
    args = ap.parse_args()
    with mp.get_context("fork").Pool(args.processes) as pool, tempfile.TemporaryDirectory() as tmp:
        report("paper-grid", paper_grid(args.seeds), pool)
        report("recommend-default", sweep([]), pool)
        for name in args.profiles:
            data = yaml.safe_load((Path(__file__).parents[1] / "conf" / PROFILE_FOLDER / f"{name}.yaml").read_text())
            data["config_cost"]["applies_to"] = "compute"
            compute = Path(tmp) / f"{name}+compute.yaml"
            compute.write_text(yaml.safe_dump(data))
            for label, profile in ((name, name), (f"{name}+compute", str(compute))):
                for unshare in ("false", "true"):
                    report(f"recommend-{label}-unshare={unshare}", sweep([f"profile={profile}", f"unshare={unshare}"]), pool)


def sweep(overrides: list[str]) -> list[SimulationSpec]:
    """Every simulation `nasalloc recommend` runs with these overrides."""
    return [point.spec for point in load(_compose(COMMANDS["recommend"], overrides)).points]


if __name__ == "__main__":
    main()
