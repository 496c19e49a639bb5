"""How right is the prediction on this machine, for every scheduler? calibrate -> recommend -> run -> validate.

    .venv/bin/python benchmarks/prediction_error.py [--work DIR] [--profile PATH] [--quick]
        [--schedulers asha,hyperband,bohb] [--repeats 3] [--trials 12] [--epochs 9] [--batch 8]

1. `nasalloc calibrate` profiles the digits CNN (train.entrypoint) on this machine's 2 CPU
   slots (k = 1, 2 and 2 trials sharing one slot), at a per-rank batch of `--batch` (8:
   four times the default's steps, epochs of about 0.5-1 s here, so per-job costs weigh as
   in a real search); `--profile PATH` skips it and uses that profile;
2. per scheduler (ASHA, HyperBand, BOHB), `nasalloc recommend` on a 2-slot "cluster" with
   that profile for the allocations k = 1/2, 1 and the per-rung schedule [1, 2] (rung 0 at
   k = 1, later rungs at k = 2: every promotion moves the trial to a 2-rank group);
3. `nasalloc run` executes the same search (same seed) for real at each of those
   allocations, `--repeats` times, round robin over schedulers and allocations, so slow
   drift of the machine's speed falls on every run alike;
4. `nasalloc validate` per scheduler re-simulates each run with its own learning curves and
   compares, term by term (epoch, start-up, resume, pause).
Prints per scheduler the makespan error of every run, the median absolute error over its
runs, the error of each allocation's mean over its repeats, and whether the predicted
ranking of the allocations matches the measured one (measured: mean over repeats;
neighbours whose repeats a Welch t-test cannot separate are reported as ties); writes the
same to `<work>/summary.json`. Targets (not a test): median makespan error under 10% and
the ranking identical, for every scheduler. Run it on an otherwise idle machine: the
calibration measures this machine as it is while it runs. On the 2-core build machine at
load average 15-36 the full benchmark took 44.5 minutes and `--quick` (one repeat, 8 trials
of at most 3 epochs) 13 minutes; on the otherwise idle machine (load average about 1) the full
benchmark takes 8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SCHEDULERS = ["asha", "hyperband", "bohb"]
ALLOCATIONS = ["1/2", "1", "[1,2]"]  # a static sharing k, a static k and a per-rung schedule


def nasalloc(*args: str) -> None:
    cmd = [sys.executable, "-m", "nasalloc", *args]
    print("$ nasalloc " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    print(f"  ({time.perf_counter() - t0:.1f} s)", flush=True)


def folder_name(scheduler: str, k: str, repeat: int) -> str:
    tag = k.replace("/", "_").replace("[", "").replace("]", "").replace(",", "-")
    return f"{scheduler}_k{tag}_r{repeat}"


def report(scheduler: str, validation: dict, recommendation: dict) -> dict:
    """Print one scheduler's figures; -> the summary.json entry."""
    rank = validation["ranking"]
    print(f"\n== {scheduler}")
    print("  run                  predicted makespan  measured makespan  error")
    for r in validation["runs"]:
        m = r["makespan_s"]
        print(f"  {Path(r['run']).name:<20} {m['predicted']:>12.2f} s {m['measured']:>15.2f} s  {100 * m['error']:+6.1f}%")
    median = validation["median_abs_makespan_error"]
    print(f"  median |makespan error| over {len(validation['runs'])} runs: {100 * median:.1f}%  (target < 10%)")
    print("  mean over repeats: " + ", ".join(
        f"k={lab}: predicted {p:.2f} s, measured {m:.2f} s ({100 * rank['mean_makespan_error'][lab]:+.1f}%)"
        for lab, p, m in zip(rank["allocations"], rank["predicted_makespan_s"], rank["measured_makespan_s"])))
    same = rank["predicted_order"] == rank["measured_order"]
    print(f"  ranking: predicted {' < '.join(rank['predicted_order'])}, measured {' < '.join(rank['measured_order'])}, "
          f"Kendall tau {rank['kendall_tau']:.2f}  ({'identical' if same else 'differs'}; target: identical)")
    for tie in rank["measured_order_ties"]:
        print(f"    measured k={tie['allocations'][0]} vs k={tie['allocations'][1]}: not separable over the repeats "
              f"(Welch p = {tie['p_value']:.2f})")
    terms = {}
    for key in ("startup_s", "resume_s"):
        errors = [v["error"] for r in validation["runs"] for v in r[key].values() if v["error"] is not None]
        terms[key] = sorted(errors)[len(errors) // 2] if errors else None
    pauses = sorted(r["pause_s"]["error"] for r in validation["runs"] if r["pause_s"]["error"] is not None)
    terms["pause_s"] = pauses[len(pauses) // 2] if pauses else None
    epochs = sorted(v["error"] for r in validation["runs"] for v in r["epoch_s"].values() if v["error"] is not None)
    terms["epoch_s"] = epochs[len(epochs) // 2] if epochs else None
    print("  median error per term over its runs: " + ", ".join(
        f"{name[:-2]} {'n/a' if e is None else f'{100 * e:+.0f}%'}" for name, e in terms.items()))
    print(f"  recommend (synthetic curves) chose k={recommendation['recommended']['gpus_per_trial']}; "
          f"measured fastest: k={rank['measured_best']}")
    return {"median_abs_makespan_error": median, "mean_makespan_error": rank["mean_makespan_error"],
            "predicted_order": rank["predicted_order"], "measured_order": rank["measured_order"],
            "ranking_identical": same, "measured_order_ties": rank["measured_order_ties"],
            "kendall_tau": rank["kendall_tau"], "median_term_error": terms,
            "runs": {Path(r["run"]).name: r["makespan_s"] for r in validation["runs"]},
            "recommended": recommendation["recommended"]["gpus_per_trial"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("outputs/prediction_error"))
    parser.add_argument("--schedulers", default=",".join(SCHEDULERS), help="comma-separated, from: " + ", ".join(SCHEDULERS))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8, help="per-rank batch at k = 1 (digits: 1184 samples per epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="real runs per allocation (the same search each time)")
    parser.add_argument("--profile", help="skip calibration and use this profile (name or path; it must have been "
                                          "calibrated at the same --batch)")
    parser.add_argument("--quick", action="store_true", help="one repeat, 8 trials of at most 3 epochs (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.trials, args.epochs = 1, 8, 3
    schedulers = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    unknown = [s for s in schedulers if s not in SCHEDULERS]
    if unknown or not schedulers:
        raise SystemExit(f"--schedulers={args.schedulers}: allowed: {', '.join(SCHEDULERS)}")
    work = args.work.resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work}: exists and is not empty; give another --work")
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"load average at start: {load_start:.2f} on {os.cpu_count()} cores")
    search = [f"scheduler.n_trials={args.trials}", f"scheduler.max_epochs={args.epochs}", f"seed={args.seed}",
              f"train.params.batch_size={args.batch}"]
    if args.profile:
        profile = args.profile
    else:
        nasalloc("calibrate", "calibration.cpu_slots=2", "name=digits_cpu_bench", f"train.batch_per_device={args.batch}",
                 f"out_dir={work / 'calibrate'}")
        profile = str(work / "calibrate" / "profile.yaml")
    for s in schedulers:
        nasalloc("recommend", f"scheduler={s}", f"profile={profile}", "cluster.gpus=2", "cluster.gpus_per_node=2",
                 "allocations=[" + ",".join(f'"{k}"' if "/" in k else k for k in ALLOCATIONS) + "]",
                 f"n_trials={args.trials}", f"scheduler.max_epochs={args.epochs}", "seeds=5",
                 f"out_dir={work / ('recommend_' + s)}")
    runs: dict[str, list[Path]] = {s: [] for s in schedulers}
    for repeat in range(args.repeats):
        for s in schedulers:
            for k in ALLOCATIONS:
                folder = work / folder_name(s, k, repeat)
                nasalloc("run", f"scheduler={s}", f"gpus_per_trial={k}", "devices=cpu", "devices.count=2", "progress=none",
                         f"profile={profile}", *search, f"out_dir={folder}")
                runs[s].append(folder)
    summary = {"load_average_start": load_start, "cores": os.cpu_count(), "profile": profile, "repeats": args.repeats,
               "trials": args.trials, "max_epochs": args.epochs, "batch": args.batch, "schedulers": {}}
    for s in schedulers:
        nasalloc("validate", "run=[" + ",".join(str(r) for r in runs[s]) + "]", f"profile={profile}", "plots=false",
                 f"out_dir={work / ('validate_' + s)}")
    for s in schedulers:
        validation = json.loads((work / f"validate_{s}" / "validation.json").read_text())
        recommendation = json.loads((work / f"recommend_{s}" / "recommendation.json").read_text())
        summary["schedulers"][s] = report(s, validation, recommendation)
    summary["load_average_end"] = os.getloadavg()[0]
    summary["wall_s"] = time.perf_counter() - t_start
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nload average at end: {summary['load_average_end']:.2f}; {summary['wall_s'] / 60:.1f} min; files: {work}")


if __name__ == "__main__":
    main()
