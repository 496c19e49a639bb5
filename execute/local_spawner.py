"""Warm workers on this machine: the `backend.Spawner` of ``backend=local``.

Every worker is forked by one fork server (`forkserver.py`) that imported torch once, and
connects to the executor over a Unix socket in a folder of the backend's own (its name holds
the executor's pid, so the next executor removes it if this one was SIGKILLed:
`remove_stale_socket_dirs`). The ranks of a group meet through a FileStore in that folder.
The fork server's own environment is its workers' (what libraries read once, when they load,
is the same for all of them); each worker sets its GPU after the fork. On CPU slots each
worker is pinned to cores of its own when they are enough for every device.

A worker that never connects most likely waits for CPU time: the hint says so.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from multiprocessing.connection import Listener
from pathlib import Path
from typing import Any

from nasalloc.execute.backend import WorkerProcess, WorkerSetup, worker_env
from nasalloc.execute.devices import Slot, rank_threads
from nasalloc.execute.forkserver import ForkedProcess, ForkServer
from nasalloc.execute.worker import AUTHKEY_ENV

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


class ForkServerSpawner:
    """Workers forked on this machine; their own output goes to `log_dir` (if given), one
    file per slot and one for the fork server. `pin_cpus`: pin each CPU worker to cores of
    its own where the machine has enough for every device."""

    not_started_hint = "is the machine overloaded?"

    def __init__(self, *, log_dir: Path | None = None, pin_cpus: bool = True):
        self.logs = log_dir
        self._pin_cpus = pin_cpus
        self._pin = False
        self._tmp: Path | None = None
        self._setup: WorkerSetup | None = None
        self.server: ForkServer | None = None

    def rank_threads(self, requested: int | None, slots: list[Slot]) -> int:
        return rank_threads(requested, len({s.device for s in slots}), os.cpu_count() or 1)

    def open(self, slots: list[Slot], setup: WorkerSetup) -> Listener:
        """The socket folder, the fork server (its imports start at once) and the listener."""
        remove_stale_socket_dirs()
        devices = len({s.device for s in slots})
        self._pin = self._pin_cpus and setup.device_kind == "cpu" and devices * setup.threads <= (os.cpu_count() or 1)
        self._setup = setup
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{os.getpid()}-"))
        # The server's environment is its workers', less what is each worker's own (the auth
        # key; on a GPU, CUDA_VISIBLE_DEVICES, set by each child after the fork).
        env = worker_env(os.environ, device_kind="cpu", device=0, threads=setup.threads,
                         slots_share_cores=setup.slots_share_cores, authkey_hex="", preload=setup.preload)
        env.pop(AUTHKEY_ENV)
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"  # a stray is_available() there: no CUDA init
        self.server = ForkServer(env, None if self.logs is None else self.logs / "forkserver.log")
        return Listener(str(self._socket()), family="AF_UNIX", authkey=setup.authkey)

    def _socket(self) -> Path:
        assert self._tmp is not None
        return self._tmp / "w.sock"

    def spawn(self, slot: Slot, token: str) -> ForkedProcess:
        assert self.server is not None and self._setup is not None
        setup = self._setup
        cpus = ""
        if self._pin:
            first = (slot.device * setup.threads) % (os.cpu_count() or 1)
            cpus = ",".join(str(first + i) for i in range(setup.threads))
        log = None
        if self.logs is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
            log = self.logs / f"worker_{slot.device}_{slot.share}.log"
        return self.server.spawn([str(self._socket()), str(setup.threads), cpus, setup.device_kind, token],
                                 setup.env(os.environ, slot.device), log)

    def node(self, slot: Slot) -> int:
        return 0  # every slot is on this machine

    def rendezvous(self, gid: int, first: WorkerProcess, timeout: float) -> dict[str, Any]:
        """A FileStore in the backend's folder (one machine)."""
        return {"master_addr": "127.0.0.1", "master_port": _free_port(), "store_path": str(self._store(gid))}

    def _store(self, gid: int) -> Path:
        assert self._tmp is not None
        return self._tmp / f"store_{gid}"

    def end_rendezvous(self, gid: int) -> None:
        try:
            self._store(gid).unlink()
        except OSError:
            pass

    def gone(self) -> str | None:
        if self.server is None or self.server.alive:
            return None
        return self.server.gone_message()

    def close(self) -> None:
        """End the fork server, which kills every worker's process group (at once if it is
        still importing, e.g. on Ctrl-C during start-up: nothing is forked yet), and remove
        the socket folder."""
        if self.server is not None:
            self.server.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
