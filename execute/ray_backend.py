"""`backend=ray`: the search's ranks as warm Ray actors across the nodes of a Ray cluster.

The search itself is unchanged: `loop.SearchLoop` drives the one dispatch core
(`sim/dispatch.py`), which places each trial with `sim/cluster.DevicePool` on the cluster's
devices numbered node by node (device d sits on node d // gpus_per_node), the same rule the
simulator places by. This module only gives those device numbers a home in the cluster:

- **Devices.** The cluster's GPUs, or on a CPU-only cluster, CPU slots declared as a custom
  resource on each node (``ray start --resources='{"cpu_slot": 2}'``; the name is
  `ray.slot_resource`). Every node holding some must hold the same number (`discover`).
- **Reservation.** One placement group per node (STRICT_PACK) with one bundle per worker
  slot: ``{GPU: 1/m}`` (1/m of a GPU when trials share one, as a fractional GPU) or
  ``{cpu_slot: 1/m}``. The run holds the devices it plans with for its whole life, so a
  trial's devices are free whenever the dispatch core says they are.
- **Ranks.** One warm actor per worker slot, created in its node's bundle, reused by trial
  after trial like the local backend's warm workers. Each runs the local worker's own code
  (`worker.prepare`, `worker.serve`, `worker.run_job`) and talks to the executor over a
  `multiprocessing.connection` on TCP with an auth key. The backend is `backend.WarmBackend`
  with this module's `RaySpawner`: everything done with the workers (job messages,
  decisions, failure rule, timeouts, replacement of a failed group's workers) is the same
  code as for the local workers, and so is their environment (`backend.worker_env`, applied
  by each actor to its node's environment). On a GPU, Ray sets CUDA_VISIBLE_DEVICES of each
  actor to its GPU, so the worker uses ``cuda:0`` and nccl exactly as locally (the local GPU
  check covers this path).
- **Rendezvous.** A TCP store at the rank-0 actor's node address on a port that actor finds
  free (nccl on GPUs, gloo on CPU slots); RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
  MASTER_PORT are set as torchrun sets them.

Clean-up: `shutdown` kills the actors and removes the placement groups; if the executor is
killed instead, Ray removes both itself, since neither is detached (they belong to the
executor's Ray job).

A lost node takes its actors with it: their trial fails and is retried by the dispatch core
(elsewhere if devices are free); the lost node's placement group is re-placed by Ray when a
node with the room joins, and its actors start there. If none joins, a trial sent to those
devices waits for actors that never start: once they have not started within
`worker_start_timeout_s` (`backend.WORKER_START_TIMEOUT_S`), the run ends with one line
(`WorkersDidNotStart`) naming a lost node as the likely cause (`RaySpawner.not_started_hint`),
the folder resumable on a cluster of the same shape. (Going on with
the remaining devices would need the dispatch core to drop devices from its pool mid-search.)
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from nasalloc.execute.backend import WorkerProcess, WorkerSetup
from nasalloc.execute.devices import Slot, rank_threads
from nasalloc.sim.cluster import ClusterSpec
from nasalloc.sim.errors import UserError

INSTALL_HINT = "backend=ray needs Ray, which is not installed here; install it with: pip install 'nasalloc[ray]'"
PLACEMENT_TIMEOUT_S = 60.0
REACH_TIMEOUT_S = 5.0  # ray.address=HOST:PORT must accept a TCP connection within this (Ray itself retries for minutes)


def import_ray() -> Any:
    """The `ray` module, or a one-line UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RayCluster:
    """What a run sees of the cluster: its devices as placement counts them, and each node's
    CPUs (for the threads of a rank on a CPU slot)."""

    spec: ClusterSpec
    cpus_per_node: int


@dataclass(frozen=True)
class RayTarget:
    """Where a `RaySpawner` puts its ranks: the connected cluster as `discover` found it, and
    the resource that is one CPU slot there (calibration's `Launcher` builds its spawner from
    this)."""

    cluster: RayCluster
    slot_resource: str

    def describe(self, device_kind: str) -> str:
        """E.g. "Ray, 3 nodes of 2 cpu_slot" (for a profile's provenance and progress lines)."""
        spec = self.cluster.spec
        return f"Ray, {spec.nodes} nodes of {spec.gpus_per_node} {device_resource(device_kind, self.slot_resource)}"


def device_resource(device_kind: str, slot_resource: str) -> str:
    """The Ray resource that is one device: a GPU, or a CPU slot's custom resource."""
    return "GPU" if device_kind == "cuda" else slot_resource


def connect(address: str | None, device_kind: str, slot_resource: str, count: int) -> None:
    """Join the cluster at `address` ("auto" or HOST:PORT), or with no address start a local
    Ray instance holding `count` devices (CPU slots as `slot_resource`; GPUs as Ray finds them)."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if address and address != "auto" and "://" not in address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address:
        kwargs["address"] = address
    else:
        kwargs["include_dashboard"] = False
        if device_kind == "cpu":
            kwargs["resources"] = {slot_resource: count}
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise UserError(f"ray.address={address}: cannot join a Ray cluster there ({str(exc).splitlines()[0]})") from None


def _check_reachable(address: str) -> None:
    """A one-line UserError unless HOST:PORT accepts a TCP connection within `REACH_TIMEOUT_S`:
    `ray.init` would otherwise retry an unreachable address for minutes before failing."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"ray.address={address}: expected auto or HOST:PORT (the head node's GCS, e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"ray.address={address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                        "with `ray start --head`, or give its address (ray.address=auto on one of its nodes)") from None


def discover(device_kind: str, slot_resource: str) -> RayCluster:
    """The connected cluster's devices: every alive node with some of the device resource,
    all holding the same whole number of it (placement packs by node)."""
    ray = import_ray()
    res = device_resource(device_kind, slot_resource)
    per_node = [(n["Resources"].get(res, 0.0), n["Resources"].get("CPU", 1.0)) for n in ray.nodes() if n["Alive"]]
    per_node = [(d, c) for d, c in per_node if d > 0]
    if not per_node:
        where = "GPU" if res == "GPU" else f"custom resource {res!r} (ray start --resources='{{\"{res}\": 2}}')"
        raise UserError(f"backend=ray devices={device_kind}: no node of the Ray cluster offers a {where}")
    counts = sorted({d for d, _ in per_node})
    if len(counts) > 1 or counts[0] != int(counts[0]):
        raise UserError(f"backend=ray: nodes offer {', '.join(f'{c:g}' for c in counts)} {res} each; placement "
                        "needs the same whole number on every node")
    gpn = int(counts[0])
    return RayCluster(ClusterSpec(name=f"Ray cluster ({len(per_node)} nodes)", gpus=gpn * len(per_node), gpus_per_node=gpn),
                      cpus_per_node=int(min(c for _, c in per_node)))


def no_delay(conn: Connection) -> Connection:
    """Send small messages at once on this TCP connection (TCP_NODELAY). With Nagle's
    algorithm a report waits for the ACK of the previous message, which the peer delays:
    measured here, 45 ms per epoch against 6.5 ms on the local backend's Unix socket."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.close()  # closes the duplicate only
    return conn


class _NoDelayListener(Listener):
    """A TCP listener whose accepted connections send at once (`no_delay`)."""

    def accept(self) -> Connection:
        return no_delay(super().accept())


class RankActor:
    """One warm worker slot on a node: set up once (`worker.prepare`), then serves the
    executor's jobs over TCP (`worker.serve`) until told to exit. Created by `RaySpawner`
    with `max_concurrency=2`, so `rendezvous_address` answers while `serve` runs."""

    def __init__(self, setup: WorkerSetup):
        import ray

        from nasalloc.execute.worker import PRELOAD_ENV, prepare, take_authkey

        ip = ray.util.get_node_ip_address()
        # Before torch is imported: thread pools read these at start. Its GPU is entry 0 of
        # the CUDA_VISIBLE_DEVICES Ray set; on a loopback address every node is on this
        # machine, and gloo/nccl must use the loopback too.
        os.environ.update(setup.env(os.environ, 0, loopback=ip.startswith("127.")))
        self._authkey = take_authkey()
        self.device_kind = setup.device_kind
        self.ip = ip
        self.hello = prepare(setup.threads, "", setup.device_kind, os.environ.get(PRELOAD_ENV, ""))

    def rendezvous_address(self) -> tuple[str, int]:
        """This actor's node address and a TCP port free there now (for a rendezvous led by
        this actor; asked each time, since a lost node's actors come back on another node)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            return self.ip, s.getsockname()[1]

    def serve(self, address: tuple[str, int], token: str) -> None:
        from nasalloc.execute.worker import serve

        conn = no_delay(Client(address, family="AF_INET", authkey=self._authkey))
        conn.send({**self.hello, "token": token})  # the token: which worker this is
        serve(conn, self.device_kind)


class ActorWorker:
    """A rank actor as the backend sees a worker (`backend.WorkerProcess`): it has ended
    once its `serve` call has returned or failed (the actor died: crash, node lost, killed)."""

    log: Path | None = None  # its output is in Ray's logs, on its node

    def __init__(self, actor: Any, serving: Any):
        self.actor, self.serving = actor, serving
        self.returncode: int | None = None
        self.stopped = False

    def poll(self) -> int | None:
        import ray

        if self.returncode is None and ray.wait([self.serving], timeout=0)[0]:
            try:
                ray.get(self.serving)
                self.returncode = 0
            except Exception:  # noqa: BLE001 - the actor died
                self.returncode = 1
        return self.returncode

    def wait(self, timeout: float) -> int | None:
        """Wait a little (never more than 2 s: a lost node's actors take Ray a while to
        declare dead, and the connection's end already said so) -> the exit status, if known."""
        import ray

        ray.wait([self.serving], timeout=min(2.0, timeout))
        return self.poll()

    def stop(self) -> None:
        import ray

        self.stopped = True
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def wait_pid(self) -> int | None:
        return None  # a process of some node's raylet, maybe not this machine's


class RaySpawner:
    """Warm workers as actors in the cluster `discover` found: one placement group per node
    (STRICT_PACK, a bundle per worker slot) held for the whole run, one actor per slot in
    its node's bundle, connected to a TCP listener at this node's address."""

    not_started_hint = "was a node lost, and none with the room joined in its place?"
    logs: Path | None = None  # each actor's output is in Ray's logs, on its node

    def __init__(self, cluster: RayCluster, slot_resource: str):
        self._ray = import_ray()
        self._actor_class = self._ray.remote(RankActor)
        self._cluster = cluster
        self._slot_resource = slot_resource
        self._gpn = cluster.spec.gpus_per_node
        self._m = 1  # worker slots per device
        self._actor_resources: dict[str, Any] = {}
        self._groups_pg: list[Any] = []
        self._actors: list[ActorWorker] = []  # every actor not stopped (pruned at each spawn)
        self._setup: WorkerSetup | None = None
        self._address: tuple[str, int] | None = None

    def rank_threads(self, requested: int | None, slots: list[Slot]) -> int:
        return rank_threads(requested, self._gpn, self._cluster.cpus_per_node)

    def open(self, slots: list[Slot], setup: WorkerSetup) -> Listener:
        """Reserve the devices (up to `PLACEMENT_TIMEOUT_S`: a one-line UserError if the
        cluster cannot), then listen at this node's address in the cluster."""
        from ray.util.placement_group import placement_group

        self._setup = setup
        self._m = 1 + max(s.share for s in slots)
        res = device_resource(setup.device_kind, self._slot_resource)
        self._actor_resources = {"num_gpus": 1 / self._m} if res == "GPU" else {"resources": {res: 1 / self._m}}
        nodes = self._cluster.spec.nodes
        for _ in range(nodes):
            self._groups_pg.append(placement_group([{res: 1 / self._m}] * (self._gpn * self._m), strategy="STRICT_PACK"))
        ready = [pg.ready() for pg in self._groups_pg]
        if len(self._ray.wait(ready, num_returns=len(ready), timeout=PLACEMENT_TIMEOUT_S)[0]) < len(ready):
            raise UserError(f"backend=ray: the cluster could not reserve {nodes} nodes of {self._gpn} {res} within "
                            f"{PLACEMENT_TIMEOUT_S:g} s (is another run holding them?)")
        listener = _NoDelayListener((self._ray.util.get_node_ip_address(), 0), family="AF_INET", authkey=setup.authkey)
        self._address = listener.address
        return listener

    def spawn(self, slot: Slot, token: str) -> ActorWorker:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        node, on_node = divmod(slot.device, self._gpn)
        actor = self._actor_class.options(
            num_cpus=0, max_concurrency=2, max_restarts=0, **self._actor_resources,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self._groups_pg[node], on_node * self._m + slot.share),
        ).remote(self._setup)
        worker = ActorWorker(actor, actor.serve.remote(self._address, token))
        self._actors = [a for a in self._actors if not a.stopped] + [worker]
        return worker

    def node(self, slot: Slot) -> int:
        return slot.device // self._gpn

    def rendezvous(self, gid: int, first: WorkerProcess, timeout: float) -> dict[str, Any]:
        """TCP at the rank-0 actor's node, on a port that actor found free there."""
        assert isinstance(first, ActorWorker)
        try:
            ip, port = self._ray.get(first.actor.rendezvous_address.remote(), timeout=timeout)
        except Exception:  # noqa: BLE001 - the actor is gone; its death fails the group
            ip, port = "127.0.0.1", 0
        return {"master_addr": ip, "master_port": port, "init_method": f"tcp://{ip}:{port}"}

    def end_rendezvous(self, gid: int) -> None:
        pass  # nothing is left of a TCP rendezvous

    def gone(self) -> str | None:
        return None  # a lost node's actors come back when a node with the room joins

    def close(self) -> None:
        """Kill the actors, then remove the placement groups."""
        try:
            for a in self._actors:
                if not a.stopped:
                    a.stop()
        finally:
            self._remove_placement_groups()

    def _remove_placement_groups(self) -> None:
        """Remove the run's placement groups and wait (up to `PLACEMENT_TIMEOUT_S`) until Ray
        has: removal is asynchronous, and a run started right after this one (a benchmark's
        next repeat) would otherwise find the devices still reserved."""
        from ray.util.placement_group import placement_group_table, remove_placement_group

        for pg in self._groups_pg:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001 - already removed
                pass
        deadline = time.monotonic() + PLACEMENT_TIMEOUT_S
        while self._groups_pg and time.monotonic() < deadline:
            try:
                self._groups_pg = [pg for pg in self._groups_pg if placement_group_table(pg).get("state") != "REMOVED"]
            except Exception:  # noqa: BLE001 - the cluster is gone: nothing is held there any more
                break
            time.sleep(0.05)
        self._groups_pg = []


def leftovers() -> tuple[list[str], list[str]]:
    """Actors of `RankActor` and placement groups still alive in the cluster (for checks
    after a run): -> (actor ids, placement group ids), read from the cluster's control store."""
    ray = import_ray()
    actors = [a for a in ray._private.state.actors().values()
              if a.get("State") != "DEAD" and "RankActor" in str(a.get("ActorClassName", ""))]
    pgs = [p for p in ray.util.placement_group_table().values() if p.get("state") not in ("REMOVED",)]
    return [a["ActorID"] for a in actors], [p["placement_group_id"] for p in pgs]


__all__ = ["INSTALL_HINT", "ActorWorker", "RankActor", "RayCluster", "RaySpawner", "RayTarget", "connect", "discover",
           "import_ray", "leftovers"]
