"""Moving trials off shared devices (``unshare``, `sim/unshare.py`), predicted: the makespan with
the rule against without it, paired by seed.

    .venv/bin/python benchmarks/unshare.py [--seeds 10] [--processes 2] [simulate overrides ...]

The scenario is `nasalloc recommend`'s default search (ResNet-50 profile, 64 A100s in nodes of
4, 256 trials of up to 27 epochs) at k = 1/2 and 1/4, for HyperBand, BOHB and ASHA. Per
(scheduler, k): the geometric mean of the per-seed makespan ratios (with / without) and their
range, the worst seed without the rule and what the rule makes of it, the hours trials shared
a device while another idled (mean over seeds), the moves per search, and the largest change in
the best metric (a faster search that found less would be no gain).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp

from nasalloc.cli import COMMANDS, _compose
from nasalloc.sim.engine import SimulationSpec, simulate
from nasalloc.sim.simulate import build_spec


def one(spec: SimulationSpec) -> tuple[float, float, float | None, int]:
    r = simulate(spec)
    s = r.summary
    moves = sum(1 for e in r.events if e.event == "pause" and e.info == "reallocate")
    return s.makespan_s, s.shared_while_idle_s, s.best_metric, moves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cases = []
    for sched in ("hyperband", "bohb", "asha"):
        for k in ("1/2", "1/4"):
            base = build_spec(_compose(COMMANDS["simulate"], [f"scheduler={sched}", f"gpus_per_trial={k}", "cluster.gpus=64",
                                                              "scheduler.n_trials=256", *args.overrides]))
            for seed in range(args.seeds):
                for unshare in (False, True):
                    cases.append(((sched, k, seed, unshare), dataclasses.replace(base, seed=seed, unshare=unshare)))
    with mp.get_context("fork").Pool(args.processes) as pool:
        out = dict(zip((c[0] for c in cases), pool.map(one, [c[1] for c in cases], chunksize=2)))
    print(f"{'scheduler':<10} {'k':<4} {'geo-mean':>8} {'range':>15} {'worst seed: without -> with':>30} "
          f"{'shared-idle h':>15} {'moves':>6} {'|d best|':>8}")
    for sched in ("hyperband", "bohb", "asha"):
        for k in ("1/2", "1/4"):
            ratios, idle0, idle1, moves, dbest = [], [], [], [], []
            for seed in range(args.seeds):
                a, b = out[(sched, k, seed, False)], out[(sched, k, seed, True)]
                ratios.append(b[0] / a[0])
                idle0.append(a[1])
                idle1.append(b[1])
                moves.append(b[3])
                dbest.append(abs((b[2] or 0.0) - (a[2] or 0.0)))
            geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
            worst = max(range(args.seeds), key=lambda s: out[(sched, k, s, False)][0])
            w0, w1 = out[(sched, k, worst, False)][0], out[(sched, k, worst, True)][0]
            print(f"{sched:<10} {k:<4} {geo:8.3f} {min(ratios):7.3f}-{max(ratios):.3f} "
                  f"{f'seed {worst}: {w0 / 3600:.2f} h -> {w1 / 3600:.2f} h':>30} "
                  f"{sum(idle0) / len(idle0) / 3600:6.2f} -> {sum(idle1) / len(idle1) / 3600:5.2f} "
                  f"{sum(moves) / len(moves):6.1f} {max(dbest):8.4f}")


if __name__ == "__main__":
    main()
