"""Elastic allocation against the best fixed and the best per-rung allocation, predicted.

    .venv/bin/python benchmarks/elastic.py [--seeds 10] [--workers 0] [recommend overrides ...]

The scenario is `nasalloc recommend`'s default (ResNet-50 on 64 A100s in nodes of 4, 256
trials, 27 epochs, 10 seeds, the profile's uncertainty propagated): the same grid of searches,
so every allocation of a scheduler is compared on the same seeds (paired). For ASHA,
HyperBand and BOHB it reports
- the best fixed allocation (static k) and the best per-rung schedule by mean makespan, and
  elastic's speed-up over each: the ratio of means, and the geometric mean and range of the
  per-seed ratios;
- the best validation metric at equal seeds: elastic minus the best fixed allocation (mean and
  range over seeds), since a faster search at a worse result would be no gain;
- the busy-hours bound: the device-hours of k = 1 (the most efficient static allocation here:
  no scaling loss) spread over all GPUs, which no allocation can beat; elastic's makespan over
  it says how much is left.
Targets: ASHA >= 1.25x over its best fixed allocation, HyperBand and BOHB >= 1.15x.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections import defaultdict

from nasalloc.cli import COMMANDS, _compose
from nasalloc.sim.cluster import ELASTIC
from nasalloc.sim.recommend import load
from nasalloc.sim.sweep import RunMetrics, run_grid

TARGETS = {"asha": 1.25, "hyperband": 1.15, "bohb": 1.15}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=0, help="simulation processes (0: one per core)")
    parser.add_argument("overrides", nargs="*", help="more `nasalloc recommend` overrides")
    args = parser.parse_args()
    cfg = _compose(COMMANDS["recommend"], [f"seeds={args.seeds}", f"workers={args.workers}", "plots=false",
                                           *args.overrides])
    settings = load(cfg)
    t0 = time.perf_counter()
    runs = run_grid([p for p in settings.points], settings.workers)
    print(f"{len(runs)} simulations in {time.perf_counter() - t0:.1f} s; {settings.clusters[0].gpus} GPUs, "
          f"profile {settings.profile.name}, {args.seeds} seeds\n")
    by: dict[tuple[str, str], dict[int, RunMetrics]] = defaultdict(dict)
    for r in runs:
        by[(r.scheduler, r.allocation)][r.seed] = r
    for sched in dict.fromkeys(r.scheduler for r in runs):
        report(sched, {a: v for (s, a), v in by.items() if s == sched}, settings.clusters[0].gpus)


def _mean(rows: dict[int, RunMetrics]) -> float:
    return statistics.fmean(r.makespan_s for r in rows.values())


def report(sched: str, groups: dict[str, dict[int, RunMetrics]], gpus: int) -> None:
    elastic = groups.get(ELASTIC)
    if elastic is None:
        print(f"{sched}: no elastic runs (elastic.compare=false?)")
        return
    static = {a: g for a, g in groups.items() if a != ELASTIC and not a.startswith("[")}
    per_rung = {a: g for a, g in groups.items() if a.startswith("[")}
    best_fixed = min(static, key=lambda a: _mean(static[a]))
    lines = [f"{sched}: elastic {_mean(elastic) / 3600:.2f} h mean makespan"]
    for name, pool in (("fixed", static), ("per-rung", per_rung)):
        if not pool:
            continue
        best = min(pool, key=lambda a: _mean(pool[a]))
        ratios = [pool[best][s].makespan_s / elastic[s].makespan_s for s in elastic]
        geo = math.exp(statistics.fmean(math.log(x) for x in ratios))
        lines.append(f"  vs best {name} k={best} ({_mean(pool[best]) / 3600:.2f} h): {_mean(pool[best]) / _mean(elastic):.2f}x "
                     f"(per seed: geometric mean {geo:.2f}x, {min(ratios):.2f}-{max(ratios):.2f}x)")
    diffs = [(elastic[s].best_metric or math.nan) - (static[best_fixed][s].best_metric or math.nan) for s in elastic]
    lines.append(f"  best metric, elastic - best fixed at equal seeds: mean {statistics.fmean(diffs):+.4f} "
                 f"(range {min(diffs):+.4f} to {max(diffs):+.4f})")
    if "1" in static:
        bound = {s: static["1"][s].device_hours * 3600 / gpus for s in elastic}
        over = [elastic[s].makespan_s / bound[s] for s in elastic]
        lines.append(f"  busy-hours bound (k=1 device-hours / {gpus} GPUs): {statistics.fmean(bound.values()) / 3600:.2f} h; "
                     f"elastic is {statistics.fmean(over):.2f}x of it; best fixed could gain at most "
                     f"{_mean(static[best_fixed]) / statistics.fmean(bound.values()):.2f}x")
    target = TARGETS.get(sched)
    if target:
        got = _mean(static[best_fixed]) / _mean(elastic)
        lines.append(f"  target >= {target:.2f}x over the best fixed allocation: {'met' if got >= target else 'missed'} ({got:.2f}x)")
    print("\n".join(lines) + "\n", flush=True)


if __name__ == "__main__":
    main()
