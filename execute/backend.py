"""Where ranks run: the boundary between the search loop and processes.

The search loop (and calibration's launcher) only say "run this trial as k ranks on these
slots", "here is the decision", "kill it", and read back events: `Report`, `Checkpointed`,
`Ended`, `Failed` (the `Backend` protocol). `WarmBackend` implements that with warm workers
(`worker.py`), one per device slot, each connected to the executor over one connection it
opens itself. Where a worker runs and how it is started, watched and stopped is its
`Spawner`'s part, and nothing else is:

- `local_spawner.ForkServerSpawner`: processes on this machine, forked by a fork server
  (`forkserver.py`) that imported torch once, so eight of them are up in about the time one
  ``import torch`` takes and a replaced worker is up in a fraction of a second; they
  connect over a Unix socket.
- `ray_backend.RaySpawner`: warm actors on the nodes of a Ray cluster, running the same
  worker code, connected over TCP.

Jobs, decisions, the failure rule, timeouts and the replacement of workers are this
module's, written once for both. So is the environment every worker starts with
(`worker_env`): each spawner applies it where its workers start.

Failure rule: if any rank of a group crashes, raises, dies or stays silent past the job's
`timeout_s`, the whole group is torn down — every worker of the group is killed with its
process group (DataLoader children included) and replaced by a fresh warm worker — and one
`Failed` event is emitted. Other groups never notice. The one exception: a one-rank job that
raised on a CPU slot keeps its worker (nobody can be stuck in a collective with it, and the
process is as good as before). On a GPU it is replaced all the same, since a failed CUDA job
can leave the worker's CUDA context unusable (a device-side assert poisons it for good), and
every later trial on that slot would fail too (`keeps_worker_after_failure`).
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any, Protocol

from nasalloc.execute.devices import Slot, cuda_visible_device
from nasalloc.execute.worker import AUTHKEY_ENV, PRELOAD_ENV
from nasalloc.sim.errors import UserError

WORKER_START_TIMEOUT_S = 120.0


class WorkersDidNotStart(RuntimeError):
    """Workers died or stayed silent while starting (`WarmBackend.wait_ready`, `WarmBackend.poll`);
    the message is one line naming how many were up, the likely cause and where their logs are."""


class StartInterrupted(Exception):
    """`wait_ready` was asked to stop (Ctrl-C / SIGTERM) before every worker was up."""


@dataclass
class GroupSpec:
    """One job of one trial: k ranks on `slots` (rank i on slots[i])."""

    trial: int
    config: dict[str, Any]
    entrypoint: str
    slots: list[Slot]
    start_epoch: int
    until_epoch: int
    checkpoint_dir: Path
    log_path: Path | None = None
    checkpoint_every: int = 1
    timeout_s: float = 600.0  # longest silence (no report) before the group is declared hung
    attempt: int = 0
    record_steps: bool = False
    max_steps: int | None = None
    require_decision: bool = True  # returning while told CONTINUE is an error (search runs)


@dataclass
class Report:
    group: int
    epoch: int
    metric: float
    extra: dict[str, Any]


@dataclass
class Checkpointed:
    group: int
    epoch: int


@dataclass
class Ended:
    group: int
    ranks: list[dict[str, Any]]  # each rank's "done" message: wall_s, steps, step_times


@dataclass
class Failed:
    group: int
    info: str


Event = Report | Checkpointed | Ended | Failed


class Backend(Protocol):
    """What the search loop (`loop.SearchLoop`) and calibration's launcher need of the ranks:
    groups of k ranks started on slots, told decisions, killed, and their events read."""

    def start_group(self, spec: GroupSpec) -> int: ...

    def decide(self, gid: int, decision: str, save: bool) -> None: ...

    def kill_group(self, gid: int, info: str) -> None: ...

    def running(self) -> list[int]: ...

    def poll(self, timeout: float) -> list[Event]: ...

    def wait_ready(self, timeout: float = ..., stop: threading.Event | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> None: ...

    def shutdown(self) -> None: ...


def keeps_worker_after_failure(device_kind: str, ranks: int) -> bool:
    """Whether a warm worker serves the next job after its job failed (see the module doc).

    Only a one-rank job on a CPU slot: with several ranks the others may be stuck in a
    collective, and on a GPU the failed job may have left the CUDA context unusable.
    """
    return device_kind == "cpu" and ranks == 1


def worker_env(base: Mapping[str, str], *, device_kind: str, device: int, threads: int, slots_share_cores: bool,
               authkey_hex: str, preload: str, loopback: bool = True) -> dict[str, str]:
    """The environment of the warm worker for `device`: `base` (the one it starts from: the
    executor's for a forked worker, its node's for a Ray actor) plus

    - thread counts for torch's OpenMP/MKL pools (`rank_threads`);
    - OMP_WAIT_POLICY=PASSIVE where several workers use the same cores (trials sharing a
      device): spin-waiting OpenMP threads would burn the cores the others need;
    - on a GPU, CUDA_VISIBLE_DEVICES naming only its GPU (entry `device` of an inherited
      CUDA_VISIBLE_DEVICES, `cuda_visible_device`; on Ray, entry 0 of the one Ray gave the
      actor), so the worker always uses ``cuda:0``;
    - with `loopback` (every rank on this machine), gloo and nccl on the loopback interface;
    - the auth key and the entrypoints to preload (read by `worker.main` and the Ray actor).
    """
    env = dict(base)
    env[AUTHKEY_ENV] = authkey_hex
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if loopback:
        env.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
    env[PRELOAD_ENV] = preload
    if slots_share_cores:
        # A 16-trial search at k=1/2 on one 2-core CPU slot (synthetic trainer, 2 threads per
        # worker) took 33.8 s spinning and 1.12 s passive. Not for one worker per slot: the same
        # search at k=1 took 1.17 s spinning and 3.2-3.6 s passive (its small parallel regions
        # pay the sleep/wake-up).
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if device_kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_device(device, base.get("CUDA_VISIBLE_DEVICES"))
    return env


@dataclass(frozen=True)
class WorkerSetup:
    """What every warm worker of one backend starts with, whichever spawner starts it."""

    device_kind: str
    threads: int  # torch threads of each rank (the spawner's `rank_threads`)
    slots_share_cores: bool  # some device has several worker slots (trials share it)
    authkey: bytes  # authenticates each worker's connection to the executor
    preload: str  # ";"-separated entrypoints a worker imports before it says it is ready

    def env(self, base: Mapping[str, str], device: int, *, loopback: bool = True) -> dict[str, str]:
        """The environment of the worker for `device`, started from `base` (`worker_env`)."""
        return worker_env(base, device_kind=self.device_kind, device=device, threads=self.threads,
                          slots_share_cores=self.slots_share_cores, authkey_hex=self.authkey.hex(),
                          preload=self.preload, loopback=loopback)


class WorkerProcess(Protocol):
    """A started warm worker as the backend sees it, wherever it runs (a process forked here,
    a Ray actor on some node)."""

    log: Path | None  # where its own output goes outside jobs (None: not a file on this machine)

    def poll(self) -> int | None:
        """Its exit status once it has ended; None while it is alive."""
        ...

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for it to end -> `poll()`."""
        ...

    def stop(self) -> None:
        """End it now, with its children; never raises (it may be gone already)."""
        ...

    def wait_pid(self) -> int | None:
        """Its process id on this machine (None: it runs on another, or was never started)."""
        ...


class Spawner(Protocol):
    """How `WarmBackend`'s workers are started, watched and stopped, and where their ranks
    meet: everything that differs between running them here and on a Ray cluster.

    The backend calls `rank_threads`, then `open` once, `spawn` for every slot and again for
    each replacement, `rendezvous` when a group starts and `end_rendezvous` when it ends,
    and `close` once at the end (also after a failed `open`).
    """

    # The likely cause of a worker that was started and never connected, as a question; part
    # of the one-line `WorkersDidNotStart` the user reads.
    not_started_hint: str
    logs: Path | None  # the folder of the workers' own logs, named in start-up errors (None: none here)

    def rank_threads(self, requested: int | None, slots: list[Slot]) -> int:
        """Torch threads of each rank: `requested`, or by default a node's cores over the
        devices it holds (`devices.rank_threads`)."""
        ...

    def open(self, slots: list[Slot], setup: WorkerSetup) -> Listener:
        """Reserve what the workers of `slots` need and listen where they will connect,
        authenticated with `setup.authkey`; -> the listener (the backend accepts on it and
        closes it)."""
        ...

    def spawn(self, slot: Slot, token: str) -> WorkerProcess:
        """Start the worker for `slot` with its environment (`WorkerSetup.env`); set up, it
        connects to the listener and says `token` in its "ready" message."""
        ...

    def node(self, slot: Slot) -> int:
        """The node that `slot`'s device is on (ranks on one node count LOCAL_RANK together)."""
        ...

    def rendezvous(self, gid: int, first: WorkerProcess, timeout: float) -> dict[str, Any]:
        """Where the ranks of group `gid` meet, led by rank 0's worker `first` (asked for at
        most `timeout` s): master_addr, master_port and a store_path or an init_method."""
        ...

    def end_rendezvous(self, gid: int) -> None:
        """Remove what group `gid`'s rendezvous left behind (the group ended or was torn down)."""
        ...

    def gone(self) -> str | None:
        """Why no worker can be started any more (one line), or None while they can."""
        ...

    def close(self) -> None:
        """Stop every worker it started that still runs and release what `open` reserved."""
        ...


@dataclass
class _Worker:
    slot: Slot
    proc: WorkerProcess
    token: str  # says which worker a connection's "ready" comes from
    conn: Connection | None = None
    job: int | None = None  # group id it serves
    pending: dict[str, Any] | None = None  # job message to send once ready
    start_error: str | None = None  # what went wrong setting up its device (CUDA warm-up), if anything
    spawned: float = field(default_factory=time.monotonic)  # when it was started (a replacement: when it replaced one)

    def log_note(self) -> str:
        """" (log: PATH)" naming its own log, or "" where it has none here."""
        return f" (log: {self.proc.log})" if self.proc.log else ""


@dataclass
class _Group:
    spec: GroupSpec
    last_activity: float
    undelivered: int = 0  # ranks whose worker is still starting; the silence clock waits for them
    done: dict[int, dict[str, Any]] = field(default_factory=dict)


class WarmBackend:
    """Warm workers on device slots, started by `spawner`; gloo on CPU slots, nccl on GPUs."""

    def __init__(self, slots: list[Slot], device_kind: str, spawner: Spawner, *,
                 threads_per_rank: int | None = None, preload: list[str] | None = None):
        if device_kind not in ("cpu", "cuda"):
            raise ValueError(f"device_kind={device_kind!r}: allowed: cpu, cuda")
        self.device_kind = device_kind
        self.slots = sorted(slots)
        self.spawner = spawner
        self.setup = WorkerSetup(device_kind, spawner.rank_threads(threads_per_rank, self.slots),
                                 slots_share_cores=len(self.slots) > len({s.device for s in self.slots}),
                                 authkey=secrets.token_bytes(16), preload=";".join(preload or []))
        self._arrivals: queue.Queue = queue.Queue()
        self._closed = False
        self._listener: Listener | None = None
        self._workers: dict[Slot, _Worker] = {}
        self._groups: dict[int, _Group] = {}
        self._next_group = 0
        self._spawned = 0
        self._events: list[Event] = []
        # a worker a job waits for must connect within this after its start (read here, so a test can shorten it)
        self.worker_start_timeout_s = WORKER_START_TIMEOUT_S
        try:
            self._listener = spawner.open(self.slots, self.setup)
            threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True).start()
            for s in self.slots:
                self._spawn(s)
        except BaseException:
            self.shutdown()
            raise

    # ----- workers -------------------------------------------------------------------------
    def _accept_loop(self, listener: Listener) -> None:
        while not self._closed:
            try:
                conn = listener.accept()
                hello = conn.recv()
            except (OSError, EOFError):
                if self._closed:
                    return
                continue
            except Exception:  # noqa: BLE001 - a bad handshake must not kill the acceptor
                continue
            self._arrivals.put((hello, conn))

    def _spawn(self, slot: Slot) -> None:
        token = f"{slot.device}.{slot.share}.{self._spawned}"
        self._spawned += 1
        self._workers[slot] = _Worker(slot, self.spawner.spawn(slot, token), token)

    def _take_arrivals(self) -> None:
        while True:
            try:
                hello, conn = self._arrivals.get_nowait()
            except queue.Empty:
                return
            w = next((w for w in self._workers.values() if w.token == hello.get("token")), None)
            if w is None:
                conn.close()
                continue
            w.conn, w.start_error = conn, hello.get("error")
            if w.pending is not None:
                self._send(w, w.pending)
                g = self._groups.get(w.pending["job"])
                if g is not None:
                    g.undelivered -= 1
                    g.last_activity = time.monotonic()
                w.pending = None

    def ready_count(self) -> int:
        """Workers connected and ready (for start-up progress)."""
        self._take_arrivals()
        return sum(w.conn is not None for w in self._workers.values())

    def wait_ready(self, timeout: float = WORKER_START_TIMEOUT_S, stop: threading.Event | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> None:
        """Block until every worker is connected.

        `WorkersDidNotStart` (one line) if a worker dies while starting or they are not all up
        within `timeout` s; `StartInterrupted` as soon as `stop` is set (a signal handler sets
        it: Ctrl-C). `on_progress(ready, total)` is called whenever the count changes. The
        caller shuts the backend down after either, which leaves no process behind.

        A worker that could not set up its GPU (CUDA warm-up) still connects, so that the
        error is read here, once, as one line naming its log (UserError), instead of as a
        failure of every trial.
        """
        deadline = time.monotonic() + timeout
        total, shown = len(self._workers), -1
        while True:
            ready = self.ready_count()
            if ready != shown and on_progress is not None:
                on_progress(ready, total)
            shown = ready
            if ready == total:
                break
            if stop is not None and stop.is_set():
                raise StartInterrupted(f"interrupted while starting the workers ({ready} of {total} ready)")
            for w in self._workers.values():
                if w.conn is None and w.proc.poll() is not None:
                    raise WorkersDidNotStart(f"the worker for device {w.slot.device} exited with status "
                                             f"{w.proc.poll()} while starting{w.log_note()}")
            gone = self.spawner.gone()
            if gone is not None:
                raise WorkersDidNotStart(gone)
            if time.monotonic() > deadline:
                where = f"; their logs: {self.spawner.logs}" if self.spawner.logs else ""
                raise WorkersDidNotStart(f"{total - ready} of {total} workers did not start within {timeout:.0f} s "
                                         f"({self.spawner.not_started_hint}){where}")
            time.sleep(0.02)
        for w in self._workers.values():
            if w.start_error:
                raise UserError(f"devices={self.device_kind}: the worker for device {w.slot.device} could not set it up: "
                                f"{w.start_error}{w.log_note()}")

    def _stop(self, w: _Worker) -> None:
        w.proc.stop()
        if w.conn is not None:
            w.conn.close()

    def _send(self, w: _Worker, msg: dict[str, Any]) -> None:
        try:
            w.conn.send(msg)  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass  # the worker died; its EOF shows up in the next poll

    # ----- the backend interface -----------------------------------------------------------
    def start_group(self, spec: GroupSpec) -> int:
        """Start `spec` on its slots (queued until the slots' workers are ready); -> group id."""
        gid = self._next_group
        self._next_group += 1
        self._groups[gid] = _Group(spec, time.monotonic())
        meet = self.spawner.rendezvous(gid, self._workers[spec.slots[0]].proc, self.worker_start_timeout_s)
        for rank, slot in enumerate(spec.slots):
            w = self._workers[slot]
            if w.job is not None:
                raise RuntimeError(f"slot {slot} is already running group {w.job}")
            w.job = gid
            msg = {
                "op": "job", "job": gid, "trial": spec.trial, "config": spec.config, "entrypoint": spec.entrypoint,
                "rank": rank, "world_size": len(spec.slots), "local_rank": self._local_rank(spec.slots, rank),
                "start_epoch": spec.start_epoch, "until_epoch": spec.until_epoch,
                "checkpoint_dir": str(spec.checkpoint_dir), "checkpoint_every": spec.checkpoint_every,
                "log_path": None if spec.log_path is None else str(spec.log_path), **meet,
                "pg_backend": "nccl" if self.device_kind == "cuda" else "gloo",
                "device_kind": self.device_kind, "pg_timeout_s": max(30.0, spec.timeout_s),
                "attempt": spec.attempt, "record_steps": spec.record_steps, "max_steps": spec.max_steps,
                "require_decision": spec.require_decision,
            }
            if w.conn is None:
                w.pending = msg
                self._groups[gid].undelivered += 1
            else:
                self._send(w, msg)
        return gid

    def _local_rank(self, slots: list[Slot], rank: int) -> int:
        """LOCAL_RANK as torchrun sets it: 0 on a GPU (each worker sees only its own GPU); on
        CPU slots, the rank's place among the group's ranks on the same node."""
        if self.device_kind == "cuda":
            return 0
        node = self.spawner.node(slots[rank])
        return sum(1 for s in slots[:rank] if self.spawner.node(s) == node)

    def decide(self, gid: int, decision: str, save: bool) -> None:
        """Send the scheduler's answer to every rank of the group (ranks wait in `report`)."""
        g = self._groups.get(gid)
        if g is None:
            return
        g.last_activity = time.monotonic()
        for slot in g.spec.slots:
            w = self._workers[slot]
            if w.conn is not None:
                self._send(w, {"op": "decision", "decision": decision, "save": save})

    def kill_group(self, gid: int, info: str) -> None:
        """Tear the group down now (replacing its workers) and emit `Failed`."""
        g = self._groups.pop(gid, None)
        if g is None:
            return
        for slot in g.spec.slots:
            self._stop(self._workers[slot])
            self._spawn(slot)
        self.spawner.end_rendezvous(gid)
        self._events.append(Failed(gid, info))

    def running(self) -> list[int]:
        return list(self._groups)

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` s for something to happen; -> events in arrival order.
        `WorkersDidNotStart` when a worker a job waits for has not connected within
        `worker_start_timeout_s` of its start, with the spawner's likely cause (here: an
        overloaded machine; on Ray: a lost node that none replaced)."""
        self._take_arrivals()
        conns = {w.conn: w for w in self._workers.values() if w.conn is not None}
        starting = any(w.conn is None for w in self._workers.values())
        if not self._events:
            for c in wait(list(conns), timeout=min(timeout, 0.05) if starting else timeout):
                self._read(conns[c])  # type: ignore[index]
        self._take_arrivals()
        for w in list(self._workers.values()):  # a worker dead before connecting
            if w.conn is None and w.proc.poll() is not None:
                self._worker_died(w, f"worker exited with status {w.proc.poll()} while starting")
        now = time.monotonic()
        for w in self._workers.values():
            if w.conn is None and w.pending is not None and now - w.spawned > self.worker_start_timeout_s:
                raise WorkersDidNotStart(f"the worker for device {w.slot.device} was not ready "
                                         f"{self.worker_start_timeout_s:.0f} s after it was started, and a trial waits "
                                         f"for it ({self.spawner.not_started_hint})")
        for gid, g in list(self._groups.items()):
            if g.undelivered == 0 and now - g.last_activity > g.spec.timeout_s:
                self.kill_group(gid, f"no report for {g.spec.timeout_s:g} s (trial_timeout_s): rank hung")
        events, self._events = self._events, []
        return events

    def _read(self, w: _Worker) -> None:
        while w.conn is not None:
            try:
                if not w.conn.poll():
                    return
                msg = w.conn.recv()
            except (EOFError, OSError):
                self._worker_died(w, f"rank on device {w.slot.device} died (exit status {w.proc.wait(10.0)})")
                return
            self._handle(w, msg)

    def _worker_died(self, w: _Worker, info: str) -> None:
        if w.job is not None and w.job in self._groups:
            self.kill_group(w.job, info)  # replaces this worker too
        else:
            self._stop(w)
            self._spawn(w.slot)

    def _handle(self, w: _Worker, msg: dict[str, Any]) -> None:
        gid = msg.get("job")
        g = self._groups.get(gid)  # type: ignore[arg-type]
        if g is None:
            return  # a straggler from a group already torn down
        op = msg.get("op")
        if op == "report":
            g.last_activity = time.monotonic()
            self._events.append(Report(gid, int(msg["epoch"]), float(msg["metric"]), dict(msg.get("extra") or {})))
        elif op == "checkpoint":
            g.last_activity = time.monotonic()
            self._events.append(Checkpointed(gid, int(msg["epoch"])))
        elif op == "done":
            w.job = None
            if not msg["ok"]:
                if keeps_worker_after_failure(self.device_kind, len(g.spec.slots)):
                    del self._groups[gid]
                    self.spawner.end_rendezvous(gid)
                    self._events.append(Failed(gid, f"rank {msg['rank']}: {msg['info']}"))
                    return
                w.job = gid  # so kill_group replaces it as well
                self.kill_group(gid, f"rank {msg['rank']}: {msg['info']}")
                return
            g.done[int(msg["rank"])] = msg
            if len(g.done) == len(g.spec.slots):
                del self._groups[gid]
                self.spawner.end_rendezvous(gid)
                self._events.append(Ended(gid, [g.done[r] for r in sorted(g.done)]))

    def shutdown(self) -> None:
        """Stop every worker (asking the idle ones to exit first, for up to 2 s), release what
        the spawner reserved and stop listening."""
        idle = [w for w in self._workers.values() if w.conn is not None and w.job is None]
        for w in idle:
            self._send(w, {"op": "exit"})
        deadline = time.monotonic() + 2.0
        for w in idle:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        self._closed = True
        if self._listener is not None:
            self._listener.close()  # before the spawner removes where it listens (a Unix socket's folder)
        try:
            self.spawner.close()  # stops the workers still running
        finally:
            for w in self._workers.values():
                if w.conn is not None:
                    w.conn.close()

    def worker_pids(self) -> list[int]:
        """The pids of the workers running on this machine (a worker just forked is waited
        for: milliseconds)."""
        pids = [w.proc.wait_pid() for w in self._workers.values()]
        return [p for p in pids if p is not None]

    def __enter__(self) -> WarmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
