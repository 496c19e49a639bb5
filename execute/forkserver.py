"""A fork server for the warm workers: Python and torch imported once, every worker forked.

Why: a worker that starts as ``python -m nasalloc.execute.worker`` imports torch itself, and
eight of them doing so at once on 2 cores took 13 s (benchmarks/worker_startup.py; ``import torch`` alone is
1.4 s of CPU here, torch._dynamo, which the first optimizer step imports, another 1 s). The
backend starts this server once instead; it imports torch, torch._dynamo, torch.distributed
and the job code, and forks each worker from that state (a fork costs milliseconds). It
also keeps one **spare**: a child forked ahead of need, in its own session, waiting to be
told what it will be, so a replacement worker (the retry after a failed job) does not even
wait for the fork.

CUDA safety: the server never initialises CUDA: it calls nothing in ``torch.cuda`` and does
not import the user's training function (whose module may ask ``torch.cuda.is_available()``
at import, which initialises the driver and makes every forked child's CUDA unusable). Each
child sets its own environment first (CUDA_VISIBLE_DEVICES naming its GPU, the auth key),
then runs `worker.main`, which imports the training function, pins its cores, sets its
threads and, on a GPU, creates the CUDA context - all after the fork. Settings that a
library reads once, when it loads (OMP_WAIT_POLICY and OMP_NUM_THREADS for OpenMP and
OpenBLAS), come from the server's own environment: the backend gives it its workers'
environment, the same for every worker of one backend but for CUDA_VISIBLE_DEVICES. The
server computes nothing, so no OpenMP thread pool exists in it to be broken by a fork.

Lifetime: the server exits when the executor's end of its socket closes (the executor ended
or was killed), first killing the process group of every worker it forked. Workers also
watch their parent (this server, `worker._watch_parent`), so a killed server leaves no
worker behind either. Only the server signals its children: a pid it has not reaped yet
cannot have been reused by another process.

Protocol (pickled tuples over a socketpair, `ForkServer` is the executor's end):
    -> ("spawn", id, argv, env, log)    fork a worker (the spare) that runs worker.main(argv)
    <- ("spawned", id, pid)
    -> ("kill", id)                     SIGKILL the worker's process group
    <- ("exited", id, returncode)       a worker ended (returncode as subprocess gives it)
    <- ("ready", -1)                    once, when the imports are done
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any


class ServerGone(RuntimeError):
    """The fork server exited: no worker can be started or replaced any more."""


# ----- the executor's end ---------------------------------------------------------------------
class ForkedProcess:
    """A worker started by the fork server, as the warm-worker backend sees any worker
    (`backend.WorkerProcess`): its exit status, a wait, a stop, its pid and its log."""

    def __init__(self, server: ForkServer, ident: int, log: Path | None):
        self._server = server
        self.ident = ident
        self.log = log  # where its own output goes (outside jobs)
        self.pid: int | None = None  # known once the server answered (`wait_pid`)
        self.returncode: int | None = None
        self._ended = threading.Event()
        self._forked = threading.Event()

    def wait_pid(self, timeout: float = 30.0) -> int | None:
        """Its pid, waiting up to `timeout` s for the server's answer (None if none came)."""
        self._forked.wait(timeout)
        return self.pid

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` s for it to end -> its exit status (None: still running)."""
        self._ended.wait(timeout)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL its process group (DataLoader children included), through the server."""
        if self.returncode is None:
            self._server.send(("kill", self.ident))

    def stop(self) -> None:
        """Kill it and wait (up to 10 s) until the server saw it end. Without its server a
        worker ends by itself (its parent watchdog), so a gone server is no error here."""
        try:
            self.kill()
        except ServerGone:
            return
        self.wait(10.0)

    def _exited(self, code: int) -> None:
        self.returncode = code
        self._ended.set()


class ForkServer:
    """Start the server (``python -m nasalloc.execute.forkserver``) with environment `env`
    (see the module doc) and its output to `log`; `spawn` forks workers from it."""

    def __init__(self, env: dict[str, str], log: Path | None = None):
        ours, theirs = socket.socketpair()
        out: Any = subprocess.DEVNULL
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            out = open(log, "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nasalloc.execute.forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True,  # a Ctrl-C at the terminal is the executor's to handle
            )
        finally:
            theirs.close()
            if out is not subprocess.DEVNULL:
                out.close()
        self.log = log
        self._sock = ours  # kept for `close`: shutdown() ends the reader's recv, close() would not
        self._conn = Connection(os.dup(ours.fileno()))
        self._procs: dict[int, ForkedProcess] = {}
        self._next = 0
        self._gone = False
        self.ready = False  # imports done (before that it has no child)
        self._lock = threading.Lock()
        threading.Thread(target=self._read_loop, daemon=True).start()

    def send(self, msg: tuple) -> None:
        if self._gone:
            raise ServerGone(self.gone_message())
        try:
            self._conn.send(msg)
        except (OSError, ValueError):
            raise ServerGone(self.gone_message()) from None

    def spawn(self, argv: list[str], env: dict[str, str], log: Path | None) -> ForkedProcess:
        """Have the server's spare run ``worker.main(argv)`` with environment `env` (replacing
        the server's), its stdout and stderr appended to `log`; -> its handle (pid set once the
        server answered, within milliseconds once the server is up)."""
        with self._lock:
            ident = self._next
            self._next += 1
            proc = ForkedProcess(self, ident, log)
            self._procs[ident] = proc
        self.send(("spawn", ident, list(argv), dict(env), None if log is None else str(log)))
        return proc

    def _read_loop(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            op, ident = msg[0], msg[1]
            if op == "ready":
                self.ready = True
                continue
            proc = self._procs.get(ident)
            if proc is None:
                continue
            if op == "spawned":
                proc.pid = int(msg[2])
                proc._forked.set()
            elif op == "exited":
                proc._exited(int(msg[2]))
                with self._lock:
                    self._procs.pop(ident, None)
        self._gone = True
        self._conn.close()
        # the server killed its workers before exiting, or died and its workers' watchdogs end them
        for proc in list(self._procs.values()):
            proc._forked.set()
            if proc.returncode is None:
                proc._exited(-signal.SIGKILL)

    def gone_message(self) -> str:
        code = self.proc.poll()
        where = f" (log: {self.log})" if self.log else ""
        return f"the workers' fork server exited (status {code}){where}"

    @property
    def alive(self) -> bool:
        return not self._gone and self.proc.poll() is None

    def close(self, timeout: float = 10.0) -> None:
        """End the server: it kills every worker's process group, then exits (at once if it
        is still importing, e.g. on Ctrl-C during start-up: it has no child yet)."""
        if not self.ready:
            self.proc.kill()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # the server reads EOF (the reader thread too)
        except OSError:
            pass
        self._sock.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----- the server ------------------------------------------------------------------------------
class _Server:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.children: dict[int, int | None] = {}  # pid -> spawn id (None: the spare)
        self.spare: tuple[int, Connection] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes `wait` through the wake-up fd
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the executor decides; EOF ends the server

    def serve(self) -> None:
        self._fork_spare()
        while True:
            ready = wait([self.conn, self._wake_r])
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            self._reap()
            if self.conn in ready:
                try:
                    self._handle(self.conn.recv())
                except (EOFError, OSError):  # the executor is gone
                    break
        self._shutdown()

    def _handle(self, msg: tuple) -> None:
        op, ident = msg[0], msg[1]
        if op == "spawn":
            _, _, argv, env, log = msg
            if self.spare is None:
                self._fork_spare()
            assert self.spare is not None
            pid, pipe = self.spare
            self.spare = None
            try:
                pipe.send((argv, env, log))
            except OSError:  # the spare died unseen: fork another for this worker
                pipe.close()
                self._fork_spare()
                pid, pipe = self.spare  # type: ignore[misc]
                self.spare = None
                pipe.send((argv, env, log))
            pipe.close()
            self.children[pid] = ident
            self.conn.send(("spawned", ident, pid))
            self._fork_spare()  # the next worker (a retry) finds one ready
        elif op == "kill":
            for pid, owner in self.children.items():
                if owner == ident:
                    _killpg(pid)

    def _fork_spare(self) -> None:
        r, w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the spare
            os.close(w)
            self._become_spare(r)  # never returns
        os.close(r)
        self.children[pid] = None
        self.spare = (pid, Connection(w, readable=False))

    def _become_spare(self, r: int) -> None:
        code = 1
        try:
            os.setsid()  # its own process group: the worker is killed with its DataLoader children
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as in any Python process
            os.close(self._wake_r)
            os.close(self._wake_w)
            self.conn.close()
            if self.spare is not None:
                self.spare[1].close()
            pipe = Connection(r, writable=False)
            try:
                argv, env, log = pipe.recv()
            except (EOFError, OSError):  # the server ended before needing it
                os._exit(0)
            pipe.close()
            os.environ.clear()
            os.environ.update(env)  # CUDA_VISIBLE_DEVICES first of all, before anything sees CUDA
            _redirect_output(log)
            from nasalloc.execute.worker import main

            main(argv)  # ends the process itself
            code = 0
        except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ident = self.children.pop(pid, None)
            if self.spare is not None and self.spare[0] == pid:
                self.spare[1].close()
                self.spare = None
            if ident is not None:
                try:
                    self.conn.send(("exited", ident, os.waitstatus_to_exitcode(status)))
                except OSError:
                    pass

    def _shutdown(self) -> None:
        if self.spare is not None:
            self.spare[1].close()
        for pid in list(self.children):
            _killpg(pid)
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _redirect_output(log: str | None) -> None:
    """Point fds 0-2 as `subprocess.Popen` would have: stdin /dev/null, stdout and stderr
    appended to the worker's log (or /dev/null)."""
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if log else null
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    for fd in {null, out}:
        os.close(fd)


def import_shared() -> None:
    """The expensive imports, once for every worker. Nothing here may touch CUDA (a test
    checks that no ``torch.cuda`` function is called). torch._dynamo is imported by the first
    optimizer step of any training function (~1 s of CPU in each worker otherwise)."""
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401
    import torch.distributed  # noqa: F401

    import nasalloc.execute.api  # noqa: F401
    import nasalloc.execute.worker  # noqa: F401


def main(argv: list[str]) -> None:
    conn = Connection(int(argv[0]))
    import_shared()
    conn.send(("ready", -1))  # until now nothing was forked: the executor may simply kill this process
    _Server(conn).serve()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the interpreter's own teardown with torch loaded takes seconds, and frees nothing we need


if __name__ == "__main__":
    main(sys.argv[1:])
