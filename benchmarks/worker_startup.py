"""Worker start-up: the fork server (torch imported once) against one Python per worker.

Two figures, each measured for both ways, alternating, in one run (targets:
8 slots ready in <= 3 s on 2 cores; a retry starting within 0.5 s):

- cold start: N warm workers on CPU slots, from nothing to every worker connected and ready
  (`WarmBackend(..., ForkServerSpawner(...)).wait_ready()`, what `worker_startup_s` in
  summary.json measures);
- replacement: one worker killed and a new one ready on its slot (what a retry after a failed
  job waits for before its job starts).

The reference is one Python importing what the fork server imports: the fork server's start
cannot take less, so "new ready / one import" near 1 means the eight workers add little.

"old" is the way before the fork server: one ``python -m nasalloc.execute.worker`` process
per slot, each importing torch itself, started with the same arguments and environment and
connecting the same way. Wall time depends on what else runs on the machine, so the CPU time
of all processes involved (the benchmark's children, waited for) is printed beside it, and
the ratio old/new is taken within each round.

    .venv/bin/python benchmarks/worker_startup.py [--workers 8 --rounds 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

from nasalloc.execute.backend import WarmBackend, worker_env
from nasalloc.execute.devices import Slot, rank_threads
from nasalloc.execute.local_spawner import ForkServerSpawner

PRELOAD = "nasalloc.execute.trainers.digits:train"


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def new_way(n: int, log_dir: Path) -> tuple[float, float, float]:
    """-> (seconds until n workers are ready, seconds to replace one, CPU seconds of all)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    backend = WarmBackend([Slot(0, i) for i in range(n)], "cpu", ForkServerSpawner(log_dir=log_dir), preload=[PRELOAD])
    try:
        backend.wait_ready()
        ready = time.perf_counter() - t0
        time.sleep(0.5)  # the spare is forked after the last worker; let it settle as in a run
        w = backend._workers[Slot(0, n - 1)]
        t1 = time.perf_counter()
        backend._stop(w)
        backend._spawn(w.slot)
        backend.wait_ready()
        replace = time.perf_counter() - t1
    finally:
        backend.shutdown()
    return ready, replace, _children_cpu() - cpu0


def old_way(n: int, log_dir: Path) -> tuple[float, float, float]:
    """The same with one Python process per worker (the spawn before the fork server)."""
    cpu0 = _children_cpu()
    tmp = Path(tempfile.mkdtemp(prefix="nasalloc-bench-"))
    authkey = secrets.token_bytes(16)
    listener = Listener(str(tmp / "w.sock"), family="AF_UNIX", authkey=authkey)
    hellos: list = []
    arrived = threading.Condition()

    def accept() -> None:
        while True:
            try:
                conn = listener.accept()
                hello = conn.recv()
            except OSError:
                return
            with arrived:
                hellos.append((hello, conn))
                arrived.notify_all()

    threading.Thread(target=accept, daemon=True).start()
    threads = rank_threads(None, 1, os.cpu_count() or 1)
    env = worker_env(os.environ, device_kind="cpu", device=0, threads=threads, slots_share_cores=n > 1,
                     authkey_hex=authkey.hex(), preload=PRELOAD)

    def spawn(i: int) -> subprocess.Popen:
        log = open(log_dir / f"old_{i}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen([sys.executable, "-m", "nasalloc.execute.worker", str(tmp / "w.sock"), str(threads),
                                     "", "cpu", f"old.{i}"], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        finally:
            log.close()

    def wait_for(count: int) -> None:
        with arrived:
            if not arrived.wait_for(lambda: len(hellos) >= count, timeout=300):
                raise RuntimeError(f"old way: {len(hellos)} of {count} workers ready after 300 s")

    procs = []
    try:
        t0 = time.perf_counter()
        procs = [spawn(i) for i in range(n)]
        wait_for(n)
        ready = time.perf_counter() - t0
        time.sleep(0.5)
        t1 = time.perf_counter()
        procs[-1].kill()
        procs[-1].wait()
        procs.append(spawn(n))
        wait_for(n + 1)
        replace = time.perf_counter() - t1
    finally:
        for _, conn in hellos:
            try:
                conn.send({"op": "exit"})
            except OSError:
                pass  # the killed one
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        listener.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return ready, replace, _children_cpu() - cpu0


def one_import() -> tuple[float, float, float]:
    """The reference: one Python importing what the fork server imports (the least any start
    can take). -> (seconds, 0, CPU seconds)."""
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, torch._dynamo, torch.distributed, nasalloc.execute.worker"],
                   check=True)
    return time.perf_counter() - t0, 0.0, _children_cpu() - cpu0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="nasalloc-bench-logs-"))
    rows: dict[str, list[tuple[float, float, float]]] = {"import": [], "old": [], "new": []}
    try:
        for r in range(args.rounds):
            order = ("import", "old", "new") if r % 2 == 0 else ("new", "old", "import")
            for way in order:
                if way == "import":
                    result = one_import()
                    print(f"round {r + 1} one import of torch: {result[0]:.2f} s, CPU {result[2]:.1f} s", flush=True)
                else:
                    result = (old_way if way == "old" else new_way)(args.workers, logs)
                    print(f"round {r + 1} {way}: {args.workers} workers ready {result[0]:.2f} s, replacement ready "
                          f"{result[1]:.3f} s, CPU {result[2]:.1f} s (load average {os.getloadavg()[0]:.1f})", flush=True)
                rows[way].append(result)
    finally:
        shutil.rmtree(logs, ignore_errors=True)

    def med(way: str, i: int) -> float:
        return statistics.median(x[i] for x in rows[way])

    ratios = [o[0] / n[0] for o, n in zip(rows["old"], rows["new"])]
    print(f"\n{args.workers} CPU workers on {os.cpu_count()} cores, median of {args.rounds} rounds:")
    print(f"  ready:       old {med('old', 0):.2f} s, new {med('new', 0):.2f} s (old/new per round: "
          + ", ".join(f"{x:.1f}" for x in ratios) + ")")
    print(f"  replacement: old {med('old', 1):.3f} s, new {med('new', 1):.3f} s")
    print(f"  CPU time:    old {med('old', 2):.1f} s, new {med('new', 2):.1f} s")
    per_import = [n[0] / i[0] for n, i in zip(rows["new"], rows["import"])]
    print(f"  new ready / one torch import ({med('import', 0):.2f} s, CPU {med('import', 2):.1f} s) per round: "
          + ", ".join(f"{x:.2f}" for x in per_import))


if __name__ == "__main__":
    main()
