"""Simulator speed: simulated events per second and wall time.

(a) one ASHA search of 1,000 trials on 64 GPUs (k = 1), target <= 0.06 s;
(b) the "paper grid": schedulers {hyperband, asha, bohb} x clusters {4, 8, 16, 32, 64} GPUs
    (4 per node) x every valid k from 1/4 to 16 x 10 seeds, in 2 worker processes, target <= 4 s wall.

    .venv/bin/python benchmarks/sim_speed.py [--processes 2] [--seeds 10] [--only a|b]

"events" are the simpy timeouts the engine schedules (one per epoch, start-up and pause);
trace events (start/result/pause/...) are reported beside them. Schedulers use their
shipped defaults (conf/scheduler/*.yaml), the workload is the synthetic default, the profile
resnet50_a100.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import time

from nasalloc.cli import COMMANDS, _compose
from nasalloc.sim.cluster import ClusterSpec, allowed_allocations, parse_allocation
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.simulate import build_spec


def base_spec(*overrides: str) -> SimulationSpec:
    return build_spec(_compose(COMMANDS["simulate"], list(overrides)))


def one(spec: SimulationSpec) -> tuple[int, int, float]:
    """(simulated events, trace events, CPU seconds) of one simulation."""
    t0 = time.process_time()
    result = simulate(spec)
    return result.sim_events, len(result.events), time.process_time() - t0


def bench_a(repeats: int = 5) -> None:
    spec = base_spec("scheduler=asha", "scheduler.n_trials=1000", "cluster.gpus=64", "gpus_per_trial=1")
    one(spec)  # warm caches (imports, expected_max_normal)
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = simulate(spec)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    best = min(times)
    print(f"(a) ASHA, 1,000 trials, 64 GPUs, k=1: {result.sim_events:,} simulated events, {len(result.events):,} trace events; "
          f"wall {best:.3f} s (best of {repeats}, median {sorted(times)[len(times) // 2]:.3f} s, CPU {min(cpu):.3f} s); "
          f"{result.sim_events / best:,.0f} events/s ({len(result.events) / best:,.0f} trace events/s); "
          f"makespan {result.summary.makespan_s / 3600:.1f} h simulated [target <= 0.06 s]")


def grid_specs(seeds: int) -> list[SimulationSpec]:
    specs = []
    for sched in ("hyperband", "asha", "bohb"):
        base = base_spec(f"scheduler={sched}")
        for gpus in (4, 8, 16, 32, 64):
            cluster = ClusterSpec(f"juwels_{gpus}", gpus, 4)
            for k in allowed_allocations(cluster, min_k=0.25):
                if k > 16:
                    continue
                alloc = parse_allocation(k, cluster)
                for seed in range(seeds):
                    specs.append(dataclasses.replace(base, cluster=cluster, allocation=alloc, seed=seed))
    return specs


def bench_b(processes: int, seeds: int) -> None:
    specs = grid_specs(seeds)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(processes) as pool:
        out = pool.map(one, specs, chunksize=4)
    wall = time.perf_counter() - t0
    events = sum(o[0] for o in out)
    trace = sum(o[1] for o in out)
    cpu = sum(o[2] for o in out)
    print(f"(b) paper grid: {len(specs)} simulations (3 schedulers x 5 cluster sizes x valid k in [1/4, 16] x {seeds} seeds) "
          f"in {processes} processes: wall {wall:.1f} s; {events:,} simulated events ({trace:,} trace events), "
          f"{events / wall:,.0f} events/s overall; CPU {cpu:.1f} s in all ({cpu / len(specs) * 1000:.1f} ms per simulation, "
          f"{cpu / processes:.1f} s per process: the wall time on {processes} otherwise idle cores) [target <= 4 s]")
    for name in ("hyperband", "asha", "bohb"):
        mine = [o for o, s in zip(out, specs) if s.scheduler.name == name]
        print(f"    {name:<9} {sum(o[2] for o in mine) / len(mine) * 1000:6.1f} ms CPU per simulation")


def main() -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work on the machine inflates wall times)")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--only", choices=("a", "b"))
    args = ap.parse_args()
    if args.only in (None, "a"):
        bench_a()
    if args.only in (None, "b"):
        bench_b(args.processes, args.seeds)


if __name__ == "__main__":
    main()
