"""backend=ray vs backend=local vs the simulator: the same toy search on the same slots.

Starts its own Ray cluster on this machine (`--nodes` nodes of `--slots` CPU slots, every
process on 127.0.0.1, token authentication with a token made here; stopped at the end),
first calibrates the `toy` trainer there (`nasalloc calibrate backend=ray`: k = 1, 2, 4, ...
across the nodes, start-up measured on the Ray backend), then runs one ASHA search of it
(sleeping epochs: each trial's `epoch_s` from its config, so the work is known and does not
compete for the cores) three ways:

- backend=local on nodes x slots CPU slots of this machine (one node);
- backend=ray on the cluster (nodes of `--slots`; placement by node, like the simulator's),
  planned with the profile calibrated on the cluster;
- the simulator, through `nasalloc validate`'s re-simulation of each run with the toy's
  exact profile (epoch time = epoch_s / k, no other cost), so the prediction error is the
  executor's own overhead and nothing else; and for the Ray run, `nasalloc validate` itself
  with the calibrated profile (its makespan error, and the start-up per trial job that the
  run's trace measured next to the one calibration put in the profile).

Repeats alternate the order of the two backends. It then measures each backend's fixed cost
per trial job and per epoch with zero-work epochs (searches of 1 and 11 epochs per trial),
as `executor_overhead.py` does for the local one: the per-job figure is what a trial's
start-up costs on that backend (actor messages, rendezvous, process group).

    .venv/bin/python benchmarks/ray_overhead.py [--nodes 2 --slots 2 --trials 12 --repeats 2]

Needs the [ray] extra. Worker (actor) start-up is excluded on both backends: the search clock
starts when every worker is up (`worker_startup_s` in summary.json, printed too).
"""

from __future__ import annotations

import argparse
import json
import statistics
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

EPOCH_LOW, EPOCH_HIGH, STEPS = 0.4, 1.6, 4


def run_config(backend: str, devices: int, address: str, scheduler: dict[str, Any], params: dict[str, Any],
               profile: str | None, seed: int) -> dict[str, Any]:
    from nasalloc.execute.run import shipped_backend
    from nasalloc.sim.config import shipped

    space = {"quality": {"type": "float", "low": 0.1, "high": 1.0},
             "epoch_s": {"type": "float", "low": EPOCH_LOW, "high": EPOCH_HIGH, "log": True}}
    raw = {
        "seed": seed, "scheduler": {**shipped("scheduler", scheduler["name"]), **scheduler},
        "train": {"name": "toy", "entrypoint": "nasalloc.execute.trainers.toy:train", "space": space, "params": params},
        "devices": {**shipped("devices", "cpu"), "count": devices},
        "gpus_per_trial": 1, "unshare": True, "trial_timeout_s": 120, "checkpoint_every": 1, "progress": "none",
        "target": None, "profile": profile, "resume": None, **shipped_backend(),
    }
    raw["backend"] = backend
    raw["ray"] = {**raw["ray"], "address": address}
    return raw


def run(raw: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run the search as `nasalloc run` does (run_config.yaml saved, so validate can read it)."""
    from nasalloc.execute.run import RAN_ON, RUN_CONFIG, settings_from
    from nasalloc.execute.search import run_search

    settings = settings_from(raw)
    out.mkdir(parents=True, exist_ok=True)
    saved = dict(raw)
    if settings.backend == "ray":
        saved[RAN_ON] = {"gpus": settings.cluster.gpus, "gpus_per_node": settings.cluster.gpus_per_node}
    (out / RUN_CONFIG).write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
    return run_search(settings, out)


def predicted_makespan(folder: Path, profile_path: str) -> float:
    """The simulator's makespan for the run in `folder` (validate's re-simulation)."""
    from nasalloc.execute.run import read_run_config
    from nasalloc.sim.engine import simulate
    from nasalloc.sim.profile import load_profile
    from nasalloc.validate.validate import read_run

    real = read_run(folder, read_run_config(folder), load_profile(profile_path))
    return float(simulate(real.spec).summary.makespan_s)


def calibrate_on_ray(address: str, out: Path) -> Path:
    """`nasalloc calibrate backend=ray` of the toy trainer on the benchmark's search space
    (8 sampled configurations: the profile's config_cost follows epoch_s) -> profile.yaml."""
    from nasalloc.cli import main as cli

    space = (f"{{quality:{{type:float,low:0.1,high:1.0}},epoch_s:{{type:float,low:{EPOCH_LOW},high:{EPOCH_HIGH},"
             "log:true}}")
    rc = cli(["calibrate", "backend=ray", f"ray.address={address}", "calibration.device=cpu",
              "train.entrypoint=nasalloc.execute.trainers.toy:train", "train.batch_per_device=8", "train.scaling=strong",
              "+train.config.quality=0.5", f"+train.config.epoch_s={(EPOCH_LOW * EPOCH_HIGH) ** 0.5:.3f}",
              f"+train.config.steps_per_epoch={STEPS}", "+train.config.faults=[]", f"train.space={space}",
              "calibration.share=[]",
              "calibration.warmup_steps=1", "calibration.pilot_steps=8", "calibration.time_limit_s=4",
              "calibration.rounds=2", "calibration.config_time_limit_s=1", "calibration.bootstrap=0",
              "name=toy-ray", f"out_dir={out}"])
    if rc != 0:
        raise SystemExit(f"calibration on the Ray cluster failed (exit {rc})")
    return out / "profile.yaml"


def validate_run(folder: Path, out: Path) -> dict[str, Any]:
    """`nasalloc validate` of the run in `folder` with the profile it was planned with -> its
    report of that run (validation.json)."""
    from nasalloc.cli import main as cli

    if cli(["validate", f"run={folder}", "plots=false", f"out_dir={out}"]) != 0:
        raise SystemExit(f"nasalloc validate run={folder} failed")
    return json.loads((out / "validation.json").read_text())["runs"][0]


def fixed_cost(backend: str, devices: int, address: str, out: Path) -> tuple[float, float]:
    """(seconds per trial job, seconds per epoch) of the executor's own work on `backend`."""
    spans = {}
    n = 4 * devices
    for epochs in (1, 11):
        raw = run_config(backend, devices, address, {"name": "random", "n_trials": n, "max_epochs": epochs},
                         {"epoch_s": 0.0, "steps_per_epoch": 1}, None, 0)
        raw["train"]["space"] = {"quality": {"type": "float", "low": 0.1, "high": 1.0}}
        spans[epochs] = float(run(raw, out / f"{backend}_fixed_{epochs}")["makespan_s"])
    jobs_per_slot = n / devices
    per_epoch = (spans[11] - spans[1]) / (10 * jobs_per_slot)
    return spans[1] / jobs_per_slot - per_epoch, per_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--slots", type=int, default=2, help="CPU slots per node")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--max-epochs", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    from nasalloc.execute.local_ray_cluster import local_ray_cluster
    from nasalloc.execute.trainers.toy import profile_data

    devices = args.nodes * args.slots
    work = Path(tempfile.mkdtemp(prefix="nasalloc-raybench-"))
    try:
        with local_ray_cluster(args.nodes, args.slots, "cpu_slot") as cluster:
            calibrated = calibrate_on_ray(cluster.address, work / "calibrate")
            cal = yaml.safe_load(calibrated.read_text())
            print(f"calibrated on Ray ({cal['provenance']['how']}): start-up {cal['overheads']['startup_s']:.3f} s + "
                  f"{cal['overheads']['startup_per_doubling_s']:.3f} s per doubling of k + "
                  f"{cal['overheads'].get('startup_inter_node_s', 0.0):.3f} s across nodes; assumed: "
                  f"{', '.join(cal['assumed']) or 'nothing'}", flush=True)
            profiles = {}
            for name, gpn in (("local", devices), ("ray", args.slots)):
                profiles[name] = str(work / f"toy_{name}.yaml")
                data = profile_data(gpn, EPOCH_LOW, EPOCH_HIGH, STEPS)
                Path(profiles[name]).write_text(yaml.safe_dump(data), encoding="utf-8")
            sched = {"name": "asha", "n_trials": args.trials, "max_epochs": args.max_epochs, "eta": 3}
            params = {"steps_per_epoch": STEPS, "scaling": "strong", "faults": []}
            rows: dict[str, list[tuple[float, float, float]]] = {"local": [], "ray": []}
            validated: list[dict[str, Any]] = []
            for r in range(args.repeats):
                for backend in (("local", "ray") if r % 2 == 0 else ("ray", "local")):
                    out = work / f"{backend}_{r}"
                    planned = str(calibrated) if backend == "ray" else profiles[backend]
                    raw = run_config(backend, devices, cluster.address, sched, params, planned, seed=r)
                    summary = run(raw, out)
                    pred = predicted_makespan(out, profiles[backend])
                    if backend == "ray":
                        validated.append(validate_run(out, work / f"validate_{r}"))
                    rows[backend].append((float(summary["makespan_s"]), pred, float(summary["worker_startup_s"])))
                    print(f"repeat {r} {backend:>5}: makespan {summary['makespan_s']:.2f} s, simulator {pred:.2f} s "
                          f"(error {100 * (pred / summary['makespan_s'] - 1):+.1f}%), workers up in "
                          f"{summary['worker_startup_s']:.1f} s", flush=True)
            ratios = [ray_m / loc_m for (ray_m, _, _), (loc_m, _, _) in zip(rows["ray"], rows["local"])]
            print(f"ray/local makespan ratio: {statistics.median(ratios):.3f} (median of {len(ratios)}; same seed per "
                  f"repeat, {args.trials} trials on {args.nodes} nodes x {args.slots} slots)")
            errors = [v["makespan_s"]["error"] for v in validated]
            print(f"validate on the Ray runs with the profile calibrated on Ray: makespan error "
                  f"{', '.join(f'{100 * e:+.1f}%' for e in errors)} (median |error| "
                  f"{100 * statistics.median(abs(e) for e in errors):.1f}%)")
            for v in validated:
                s1 = v["startup_s"].get("1") or v["startup_s"].get(1) or {}
                print(f"start-up per trial job at k=1 on Ray: measured in the run's trace {s1.get('measured', float('nan')):.3f} s, "
                      f"the calibrated profile's {s1.get('predicted', float('nan')):.3f} s")
            for backend in ("local", "ray"):
                job, epoch = fixed_cost(backend, devices, cluster.address, work)
                print(f"{backend:>5} fixed cost: {1000 * job:.1f} ms per trial job + {1000 * epoch:.1f} ms per epoch", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
