"""Executor overhead: a fixed search run by `nasalloc run` vs the same training run bare.

Both sides train the same trials (the `synthetic` training function, one rank per trial, identical
configs, fixed epochs, no early stopping) on the same CPU slots:

- executor: `run_search` with the random scheduler (every trial to max_epochs), warm workers,
  journal, checkpoints every `checkpoint_every` epochs, reports through the scheduler;
- bare: one plain process per slot, pinned like the executor's workers, each training its
  share of the trials back to back by calling the same training function with a context
  that answers CONTINUE locally (no scheduler, no IPC, no checkpoints, no process group).

Process start-up is excluded on both sides (the executor's clock starts when its workers are
up; the bare clock when every bare process has imported torch), so the ratio is the
executor's cost per search: IPC per report, process-group set-up per trial, checkpoints,
journal writes and scheduling gaps. Target: under 5% for ~1 s epochs.

    .venv/bin/python benchmarks/executor_overhead.py [--trials 4 --epochs 3 --repeats 1]

On a shared, loaded machine the ratio is noisy (other processes steal the same cores from
either side). The second figure is load-robust: the executor's fixed cost measured with
the zero-work `toy` training function (searches of 1 and 11 epochs per trial), as milliseconds per
trial job and per epoch; for ~1 s epochs the overhead is about (job + E x epoch) / E seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENTRY = "nasalloc.execute.trainers.synthetic:train"


def train_params(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_samples": args.samples, "dim": 64, "width": args.width, "depth": 3, "batch_size": 128,
            "scaling": "strong", "seed": 0}


def run_config(args: argparse.Namespace, scheduler: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """A complete `nasalloc run` config: the shipped random scheduler and CPU devices (the one
    place their defaults are written) with this benchmark's settings over them."""
    from nasalloc.execute.run import shipped_backend
    from nasalloc.sim.config import shipped

    return {
        "seed": 0, "scheduler": {**shipped("scheduler", "random"), **scheduler}, "train": train,
        "devices": {**shipped("devices", "cpu"), "count": args.slots},
        "gpus_per_trial": 1, "trial_timeout_s": 600, "checkpoint_every": args.checkpoint_every, "progress": "none",
        "target": None, "profile": None, "resume": None, "unshare": True, **shipped_backend(),
    }


def run_executor(args: argparse.Namespace, out: Path) -> float:
    from nasalloc.execute.run import settings_from
    from nasalloc.execute.search import run_search

    raw = run_config(args, {"n_trials": args.trials, "max_epochs": args.epochs},
                     {"name": "synthetic", "entrypoint": ENTRY, "space": {"lr": {"type": "float", "low": 0.01, "high": 0.02}},
                      "params": train_params(args)})
    summary = run_search(settings_from(raw), out)
    return float(summary["makespan_s"])


def fixed_cost(args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(seconds per trial job, seconds per epoch) of pure executor work (toy, no sleep)."""
    from nasalloc.execute.run import settings_from
    from nasalloc.execute.search import run_search

    spans = {}
    n = 20
    for epochs in (1, 11):
        raw = run_config(args, {"n_trials": n, "max_epochs": epochs},
                         {"name": "toy", "entrypoint": "nasalloc.execute.trainers.toy:train",
                          "space": {"quality": {"type": "float", "low": 0.1, "high": 1.0}},
                          "params": {"epoch_s": 0.0, "steps_per_epoch": 1}})
        spans[epochs] = float(run_search(settings_from(raw), out / f"fixed_{epochs}")["makespan_s"])
    jobs_per_slot = n / args.slots
    per_epoch = (spans[11] - spans[1]) / (10 * jobs_per_slot)
    per_job = spans[1] / jobs_per_slot - per_epoch
    return per_job, per_epoch


def bare_worker(slot: int, n_slots: int, trials: list[int], epochs: int, params: dict[str, Any], result: str) -> None:
    """One bare process: pinned like an executor worker, trains its trials back to back."""
    import torch

    from nasalloc.execute.api import Decision, TrainingContext
    from nasalloc.execute.worker import resolve_entrypoint

    ncpu = os.cpu_count() or 1
    threads = max(1, ncpu // n_slots)
    os.sched_setaffinity(0, {(slot * threads + i) % ncpu for i in range(threads)})
    torch.set_num_threads(threads)
    fn = resolve_entrypoint(ENTRY)

    class Link:
        def report(self, epoch: int, metric: Any, extra: Any) -> tuple[Decision, bool]:
            return (Decision.CONTINUE if epoch < epochs else Decision.STOP), False

        def checkpointed(self, epoch: int) -> None:
            pass

    # Barrier: start the clock only when every bare process has finished importing (an
    # importing neighbour would steal cycles, as the executor's workers never do).
    folder = Path(result).parent
    (folder / f"ready_{slot}").touch()
    while sum(1 for _ in folder.glob("ready_*")) < n_slots:
        time.sleep(0.005)
    t0 = time.time()
    for trial in trials:
        ctx = TrainingContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), trial=trial,
                              config={**params, "lr": 0.015}, start_epoch=0, until_epoch=epochs,
                              checkpoint_dir=folder / f"checkpoints_{trial}", link=Link())
        fn(ctx.config, ctx)
    Path(result).write_text(json.dumps({"start": t0, "end": time.time()}))


def run_bare(args: argparse.Namespace, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for slot in range(args.slots):
            trials = list(range(slot, args.trials, args.slots))
            spec = json.dumps({"slot": slot, "n_slots": args.slots, "trials": trials, "epochs": args.epochs,
                               "params": train_params(args), "result": str(out / f"bare_{slot}.json")})
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.slots)))
            procs.append(subprocess.Popen([sys.executable, __file__, "--bare-worker", spec], env=env))
        for p in procs:
            if p.wait() != 0:
                raise RuntimeError("a bare worker failed")
    finally:  # on failure or interrupt: no bare worker outlives the benchmark (or writes into its removed folder)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    spans = [json.loads((out / f"bare_{s}.json").read_text()) for s in range(args.slots)]
    # Each bare process starts its clock after its own imports: the makespan is the longest span.
    return max(s["end"] - s["start"] for s in spans)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--samples", type=int, default=24576, help="synthetic n_samples (sets the epoch time)")
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--checkpoint-every", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--bare-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_worker:
        spec = json.loads(args.bare_worker)
        bare_worker(spec["slot"], spec["n_slots"], spec["trials"], spec["epochs"], spec["params"], spec["result"])
        return
    # Everything the runs write (journals, checkpoints, logs: ~20 MB) goes into one temporary
    # folder that is removed however the benchmark ends: done, failed, Ctrl-C or SIGTERM.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    with tempfile.TemporaryDirectory(prefix="nasalloc-bench-", ignore_cleanup_errors=True) as tmp:
        measure(args, Path(tmp))


def measure(args: argparse.Namespace, work: Path) -> None:
    """Run both sides `args.repeats` times, alternating their order, then the fixed cost."""
    rows = []
    for r in range(args.repeats):
        if r % 2 == 0:  # alternate the order so drifting machine load hits both sides
            bare = run_bare(args, work / f"bare_{r}")
            executor = run_executor(args, work / f"exec_{r}")
        else:
            executor = run_executor(args, work / f"exec_{r}")
            bare = run_bare(args, work / f"bare_{r}")
        epoch_s = bare / (args.epochs * -(-args.trials // args.slots))
        rows.append((bare, executor))
        print(f"repeat {r}: bare {bare:.2f} s, executor {executor:.2f} s, ratio {executor / bare:.3f} "
              f"(~{epoch_s:.2f} s per epoch; {args.trials} trials x {args.epochs} epochs on {args.slots} CPU slots)", flush=True)
    ratios = sorted(e / b for b, e in rows)
    median = ratios[len(ratios) // 2]
    print(f"executor/bare makespan ratio: {median:.3f} (overhead {100 * (median - 1):+.1f}%; median of {len(rows)})")
    per_job, per_epoch = fixed_cost(args, work)
    e = args.epochs
    print(f"executor fixed cost: {1000 * per_job:.1f} ms per trial job + {1000 * per_epoch:.1f} ms per epoch "
          f"(report, decision, checkpoint every {args.checkpoint_every}, journal) -> "
          f"{100 * (per_job + e * per_epoch) / e:.2f}% of {e} epochs of 1 s")


if __name__ == "__main__":
    main()
