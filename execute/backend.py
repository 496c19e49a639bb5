"""Where ranks run: the boundary between the search loop and processes.

The search loop (and calibration's launcher) only say "run this trial as k ranks on these
slots", "here is the decision", "kill it", and read back events: `Report`, `Checkpointed`,
`Ended`, `Failed` (the `Backend` protocol). `LocalBackend` implements that on one machine with
warm workers (`worker.py`), one per device slot, connected over a Unix socket. The workers are
forked by a fork server (`forkserver.py`) that imported torch once, so eight of them are up in
about the time one ``import torch`` takes, and a replaced worker is up in a fraction of a
second. `ray_backend.RayBackend` implements the protocol on a Ray cluster with the same worker
code in warm actors, connected over TCP.

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

import os
import queue
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any, Protocol

from nasalloc.execute.devices import Slot, cuda_visible_device, rank_threads
from nasalloc.execute.forkserver import ForkedProcess, ForkServer, ServerGone
from nasalloc.execute.worker import AUTHKEY_ENV, PRELOAD_ENV
from nasalloc.sim.errors import UserError

WORKER_START_TIMEOUT_S = 120.0


class WorkersDidNotStart(RuntimeError):
    """Workers died or stayed silent while starting (`LocalBackend.wait_ready`); the message
    is one line naming how many were up and where their logs are."""


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


@dataclass
class _Worker:
    slot: Slot
    proc: ForkedProcess
    token: str  # says which worker a connection's "ready" comes from
    conn: Connection | None = None
    pid: int | None = None
    job: int | None = None  # group id it serves
    pending: dict[str, Any] | None = None  # job message to send once ready
    start_error: str | None = None  # what went wrong setting up its device (CUDA warm-up), if anything
    log: Path | None = None  # where its own output goes (outside jobs)
    spawned: float = field(default_factory=time.monotonic)  # when it was started (a replacement: when it replaced one)


@dataclass
class _Group:
    spec: GroupSpec
    store: Path
    last_activity: float
    undelivered: int = 0  # ranks whose worker is still starting; the silence clock waits for them
    done: dict[int, dict[str, Any]] = field(default_factory=dict)


def keeps_worker_after_failure(device_kind: str, ranks: int) -> bool:
    """Whether a warm worker serves the next job after its job failed (see the module doc).

    Only a one-rank job on a CPU slot: with several ranks the others may be stuck in a
    collective, and on a GPU the failed job may have left the CUDA context unusable.
    """
    return device_kind == "cpu" and ranks == 1


def worker_env(base: Mapping[str, str], *, device_kind: str, device: int, threads: int, slots_share_cores: bool,
               authkey_hex: str, preload: str) -> dict[str, str]:
    """The environment of the warm worker for `device`: `base` (the executor's) plus

    - thread counts for torch's OpenMP/MKL pools (`rank_threads`);
    - OMP_WAIT_POLICY=PASSIVE where several workers use the same cores (trials sharing a
      device): spin-waiting OpenMP threads would burn the cores the others need;
    - on a GPU, CUDA_VISIBLE_DEVICES naming only its GPU (an entry of an inherited
      CUDA_VISIBLE_DEVICES, `cuda_visible_device`), so the worker always uses ``cuda:0``;
    - the auth key and the entrypoints to preload (read by `worker.main`).
    """
    env = dict(base)
    env[AUTHKEY_ENV] = authkey_hex
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1",
               GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
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


SOCKET_DIR_PREFIX = "nasalloc-"  # + the executor's pid + "-": the worker sockets of one backend


def remove_stale_socket_dirs(tmp: Path | None = None) -> list[Path]:
    """Remove the socket folders of executors that are gone (a SIGKILLed run cannot clean up
    after itself); the owner's pid is in the name. -> the folders removed."""
    removed = []
    for folder in Path(tmp or tempfile.gettempdir()).glob(f"{SOCKET_DIR_PREFIX}*-*"):
        pid = folder.name[len(SOCKET_DIR_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or not folder.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        except PermissionError:
            pass  # alive, someone else's
    return removed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalBackend:
    """Warm workers on this machine's device slots; gloo on CPU slots, nccl on GPUs."""

    def __init__(self, slots: list[Slot], device_kind: str, *, threads_per_rank: int | None = None,
                 worker_log_dir: Path | None = None, pin_cpus: bool = True, preload: list[str] | None = None):
        if device_kind not in ("cpu", "cuda"):
            raise ValueError(f"device_kind={device_kind!r}: allowed: cpu, cuda")
        self.device_kind = device_kind
        self.slots = sorted(slots)
        remove_stale_socket_dirs()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))
        self._authkey = secrets.token_bytes(16)
        self._listener = self._listen()
        self._arrivals: queue.Queue = queue.Queue()
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()
        ncpu = os.cpu_count() or 1
        devices = sorted({s.device for s in self.slots})
        self._threads = rank_threads(threads_per_rank, len(devices), ncpu)
        self._pin = pin_cpus and device_kind == "cpu" and len(devices) * self._threads <= ncpu
        self._slots_share_cores = len(self.slots) > len(devices)  # some device has several worker slots
        self._log_dir = worker_log_dir
        self._preload = ";".join(preload or [])
        self._workers: dict[Slot, _Worker] = {}
        self._groups: dict[int, _Group] = {}
        self._next_group = 0
        self._spawned = 0
        self._events: list[Event] = []
        self._server: ForkServer | None = None
        # a worker a job waits for must connect within this after its start (read here, so a test can shorten it)
        self.worker_start_timeout_s = WORKER_START_TIMEOUT_S
        try:
            self._server = self._start_server()
            for s in self.slots:
                self._spawn(s)
        except BaseException:
            self.shutdown()
            raise

    # ----- workers -------------------------------------------------------------------------
    NOT_BACK = "is the machine overloaded?"  # why a started worker may never connect (`poll`)

    def _start_server(self) -> ForkServer | None:
        """The fork server the workers are forked from. Its environment is its workers' (what
        libraries read once, when they load, is the same for all of them); each child sets its
        own GPU after the fork."""
        env = worker_env(os.environ, device_kind="cpu", device=0, threads=self._threads,
                         slots_share_cores=self._slots_share_cores, authkey_hex="", preload=self._preload)
        env.pop(AUTHKEY_ENV)
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # a stray is_available() there: no CUDA init
        return ForkServer(env, None if self._log_dir is None else self._log_dir / "forkserver.log")

    def _listen(self) -> Listener:
        """Where workers connect: a Unix socket in the backend's own folder."""
        return Listener(str(self._tmp / "w.sock"), family="AF_UNIX", authkey=self._authkey)

    def _rendezvous(self, gid: int, spec: GroupSpec) -> dict[str, Any]:
        """How the ranks of group `gid` meet: a FileStore in the backend's folder (one machine)."""
        return {"master_addr": "127.0.0.1", "master_port": _free_port(), "store_path": str(self._groups[gid].store)}

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
                hello = conn.recv()
            except (OSError, EOFError):
                if self._closed:
                    return
                continue
            except Exception:  # noqa: BLE001 - a bad handshake must not kill the acceptor
                continue
            self._arrivals.put((hello, conn))

    def _spawn(self, slot: Slot) -> None:
        env = worker_env(os.environ, device_kind=self.device_kind, device=slot.device, threads=self._threads,
                         slots_share_cores=self._slots_share_cores, authkey_hex=self._authkey.hex(), preload=self._preload)
        cpus = ""
        if self._pin:
            first = (slot.device * self._threads) % (os.cpu_count() or 1)
            cpus = ",".join(str(first + i) for i in range(self._threads))
        log_path = None
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self._log_dir / f"worker_{slot.device}_{slot.share}.log"
        token = f"{slot.device}.{slot.share}.{self._spawned}"
        self._spawned += 1
        assert self._server is not None
        proc = self._server.spawn([str(self._tmp / "w.sock"), str(self._threads), cpus, self.device_kind, token],
                                  env, log_path)
        self._workers[slot] = _Worker(slot, proc, token, log=log_path)

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
            w.conn, w.pid, w.start_error = conn, hello["pid"], hello.get("error")
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
                    where = f" (log: {w.log})" if w.log else ""
                    raise WorkersDidNotStart(f"the worker for device {w.slot.device} exited with status "
                                             f"{w.proc.returncode} while starting{where}")
            if self._server is not None and not self._server.alive:
                raise WorkersDidNotStart(self._server.gone_message())
            if time.monotonic() > deadline:
                where = f"; their logs: {self._log_dir}" if self._log_dir else ""
                raise WorkersDidNotStart(f"{total - ready} of {total} workers did not start within {timeout:.0f} s "
                                         f"(is the machine overloaded?){where}")
            time.sleep(0.02)
        for w in self._workers.values():
            if w.start_error:
                where = f" (log: {w.log})" if w.log else ""
                raise UserError(f"devices={self.device_kind}: the worker for device {w.slot.device} could not set it up: "
                                f"{w.start_error}{where}")

    def _kill(self, w: _Worker) -> None:
        try:
            w.proc.kill()
            w.proc.wait(timeout=10)
        except (ServerGone, subprocess.TimeoutExpired):
            pass  # without its server a worker ends by itself (its parent watchdog)
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
        store = self._tmp / f"store_{gid}"
        self._groups[gid] = _Group(spec, store, time.monotonic())
        meet = self._rendezvous(gid, spec)
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
        """LOCAL_RANK as torchrun sets it: 0 on a GPU (each worker sees only its own GPU)."""
        return 0 if self.device_kind == "cuda" else rank

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
            w = self._workers[slot]
            self._kill(w)
            self._spawn(slot)
        self._remove_store(g)
        self._events.append(Failed(gid, info))

    def running(self) -> list[int]:
        return list(self._groups)

    def poll(self, timeout: float) -> list[Event]:
        """Wait up to `timeout` s for something to happen; -> events in arrival order.
        `WorkersDidNotStart` when a worker a job waits for has not connected within
        `worker_start_timeout_s` of its start (on Ray: a lost node that none replaced)."""
        self._take_arrivals()
        conns = {w.conn: w for w in self._workers.values() if w.conn is not None}
        starting = any(w.conn is None for w in self._workers.values())
        if not self._events:
            for c in wait(list(conns), timeout=min(timeout, 0.05) if starting else timeout):
                self._read(conns[c])  # type: ignore[index]
        self._take_arrivals()
        for w in list(self._workers.values()):  # a worker dead before connecting
            if w.conn is None and w.proc.poll() is not None:
                self._worker_died(w, f"worker exited with status {w.proc.returncode} while starting")
        now = time.monotonic()
        for w in self._workers.values():
            if w.conn is None and w.pending is not None and now - w.spawned > self.worker_start_timeout_s:
                raise WorkersDidNotStart(f"the worker for device {w.slot.device} was not ready "
                                         f"{self.worker_start_timeout_s:.0f} s after it was started, and a trial waits "
                                         f"for it ({self.NOT_BACK})")
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
                code = w.proc.wait(timeout=10) if w.proc.poll() is None else w.proc.returncode
                self._worker_died(w, f"rank on device {w.slot.device} died (exit status {code})")
                return
            self._handle(w, msg)

    def _worker_died(self, w: _Worker, info: str) -> None:
        if w.job is not None and w.job in self._groups:
            self.kill_group(w.job, info)  # replaces this worker too
        else:
            self._kill(w)
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
                    self._remove_store(g)
                    self._events.append(Failed(gid, f"rank {msg['rank']}: {msg['info']}"))
                    return
                w.job = gid  # so kill_group replaces it as well
                self.kill_group(gid, f"rank {msg['rank']}: {msg['info']}")
                return
            g.done[int(msg["rank"])] = msg
            if len(g.done) == len(g.spec.slots):
                del self._groups[gid]
                self._remove_store(g)
                self._events.append(Ended(gid, [g.done[r] for r in sorted(g.done)]))

    def _remove_store(self, g: _Group) -> None:
        try:
            g.store.unlink()
        except OSError:
            pass

    def shutdown(self) -> None:
        """Stop every worker (asking first, then SIGKILL) and remove the socket folder."""
        if self._server is not None and not self._server.ready:
            self._server.close()  # still importing (a Ctrl-C right at the start): nothing forked yet
        for w in self._workers.values():
            if w.conn is not None and w.job is None:
                self._send(w, {"op": "exit"})
        deadline = time.monotonic() + 2.0
        for w in self._workers.values():
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()) if w.job is None and w.conn is not None else 0)
            except subprocess.TimeoutExpired:
                pass
            self._kill(w)
        if self._server is not None:
            self._server.close()  # kills what is left (the spare too) and exits
        self._closed = True
        self._listener.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def worker_pids(self) -> list[int]:
        """The workers' pids (a worker just forked is waited for: milliseconds)."""
        pids = [w.proc.wait_pid() for w in self._workers.values()]
        return [p for p in pids if p is not None]

    def __enter__(self) -> LocalBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
