"""How right is the prediction on this machine? calibrate -> recommend -> run -> validate.

    .venv/bin/python benchmarks/prediction_error.py [--work DIR] [--trials 12] [--epochs 9]

1. `nasalloc calibrate` profiles the digits CNN (train.entrypoint) on this machine's CPU slots (k = 1, 2
   and 2 trials sharing one slot);
2. `nasalloc recommend` on a 2-slot "cluster" with that profile, for the allocations
   k = 1/2, 1 and 2 (what the recommender considers there);
3. `nasalloc run` executes the same ASHA search (same seed) for real at each of those
   allocations, `--repeats` times, round robin (k = 1/2, 1, 2, 1/2, 1, 2, ...), so slow
   drift of the machine's speed falls on every allocation alike;
4. `nasalloc validate` re-simulates each run with its own learning curves and compares.
Prints the makespan error of every run, the median absolute error over runs, the error of
each allocation's mean over its repeats, and whether the predicted ranking of the
allocations matches the measured one (measured: mean over repeats; neighbours whose
repeats a Welch t-test cannot separate are reported as ties). Targets (not a test): median
makespan error under 10%, ranking identical. Run it on an otherwise idle machine: the
calibration measures this machine as it is while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ALLOCATIONS = ["1/2", "1", "2"]


def nasalloc(*args: str) -> None:
    cmd = [sys.executable, "-m", "nasalloc", *args]
    print("$ nasalloc " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/prediction_error"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="real runs per allocation (the same search each time)")
    parser.add_argument("--profile", help="skip calibration and use this profile (name or path)")
    args = parser.parse_args()
    work = args.work.resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work}: exists and is not empty; give another --work")
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    search = [f"scheduler.n_trials={args.trials}", f"scheduler.max_epochs={args.epochs}", f"seed={args.seed}"]
    if args.profile:
        profile = args.profile
    else:
        nasalloc("calibrate", "calibration.cpu_slots=2", "name=digits_cpu_bench", f"out_dir={work / 'calibrate'}")
        profile = str(work / "calibrate" / "profile.yaml")
    nasalloc("recommend", "scheduler=asha", f"profile={profile}", "cluster.gpus=2", "cluster.gpus_per_node=2",
             "allocations=[\"1/2\",1,2]", "n_trials=" + str(args.trials), f"scheduler.max_epochs={args.epochs}",
             "seeds=5", f"out_dir={work / 'recommend'}")
    runs = []
    for repeat in range(args.repeats):
        for k in ALLOCATIONS:
            folder = work / f"run_k{k.replace('/', '_')}_r{repeat}"
            nasalloc("run", f"gpus_per_trial={k}", "devices=cpu", "devices.count=2", "progress=none",
                     f"profile={profile}", *search, f"out_dir={folder}")
            runs.append(folder)
    nasalloc("validate", "run=[" + ",".join(str(r) for r in runs) + "]", f"profile={profile}",
             f"out_dir={work / 'validate'}")
    report = json.loads((work / "validate" / "validation.json").read_text())
    rec = json.loads((work / "recommend" / "recommendation.json").read_text())
    print("\nrun          predicted makespan  measured makespan  error")
    for r in report["runs"]:
        m = r["makespan_s"]
        print(f"  {Path(r['run']).name:<12} {m['predicted']:>12.2f} s {m['measured']:>15.2f} s  {100 * m['error']:+6.1f}%")
    rank = report["ranking"]
    print(f"median |makespan error| over {len(report['runs'])} runs: {100 * report['median_abs_makespan_error']:.1f}%  "
          "(target < 10%)")
    print("mean over repeats: " + ", ".join(
        f"k={lab}: predicted {p:.2f} s, measured {m:.2f} s ({100 * rank['mean_makespan_error'][lab]:+.1f}%)"
        for lab, p, m in zip(rank["allocations"], rank["predicted_makespan_s"], rank["measured_makespan_s"])))
    print(f"ranking: predicted {' < '.join(rank['predicted_order'])}, measured {' < '.join(rank['measured_order'])}, "
          f"Kendall tau {rank['kendall_tau']:.2f}  (target: identical)")
    for tie in rank["measured_order_ties"]:
        print(f"  measured k={tie['allocations'][0]} vs k={tie['allocations'][1]}: not separable over the repeats "
              f"(Welch p = {tie['p_value']:.2f})")
    print(f"recommend (synthetic curves) chose k={rec['recommended']['gpus_per_trial']}; "
          f"measured fastest: k={rank['measured_best']}")
    print(f"files: {work}")


if __name__ == "__main__":
    main()
