"""A Ray cluster of several "nodes" on this one machine, for trying `backend=ray` (and for
nasalloc's own tests and benchmarks) without a real cluster.

Why a module of its own: `ray.cluster_utils.Cluster` works on a developer's machine for
reasons that do not hold on a fresh one. It writes the cluster's address to
``<system temp>/ray/ray_current_cluster`` whatever ``temp_dir`` its nodes get, and that
folder exists only where Ray has run before; it reads an auth token from ``~/.ray`` unless
one is in the environment; and on a machine with a network address the driver looks for
the cluster there, not on the loopback the nodes bind to. `local_ray_cluster` sets each of
those so that nothing outside its own temporary folder is read or written, and removes
that folder afterwards.

Ray reads its environment when it is imported: call `prepare_ray_environment` before
anything imports `ray` (tests/conftest.py does for the suite).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Ray puts a node's sockets at <temp_dir>/session_<date>_<time>_<pid>/sockets/plasma_store
# (about 78 characters below our folder), and a Unix socket path must fit in 107 bytes.
_LONGEST_ROOT = 24

_ENVIRONMENT = {
    # token authentication with a token made here, so nothing reads or writes ~/.ray/auth_token
    "RAY_AUTH_MODE": "token",
    # Ray's own address lookup answers the loopback, where the nodes are, not the machine's
    # network address
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def prepare_ray_environment() -> None:
    """Set what Ray reads at import for a cluster on the loopback (values already set are
    kept). Raises RuntimeError if `ray` was imported first: the settings would not apply."""
    missing = [name for name in (*_ENVIRONMENT, "RAY_AUTH_TOKEN") if name not in os.environ]
    if missing and "ray" in sys.modules:
        raise RuntimeError(f"prepare_ray_environment() must run before `ray` is imported (unset: {', '.join(missing)})")
    for name, value in _ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))


def _short_temp_root() -> str:
    """The system temp folder if Ray's socket paths fit below it, else /tmp."""
    root = tempfile.gettempdir()
    return root if len(root) <= _LONGEST_ROOT else "/tmp"


@contextmanager
def local_ray_cluster(nodes: int, slots: int, slot_resource: str = "cpu_slot") -> Iterator[Any]:
    """`nodes` Ray nodes on 127.0.0.1, each with `slots` CPUs and `slots` of `slot_resource`
    (what `backend=ray` takes as a device on a CPU-only cluster); yields the
    `ray.cluster_utils.Cluster` (its `address` is what `ray.address` takes; `node_args` adds
    one more node like the others). On exit the driver is disconnected, every node stopped
    and the cluster's folder removed."""
    prepare_ray_environment()
    import ray
    from ray.cluster_utils import Cluster

    folder = Path(tempfile.mkdtemp(prefix="nr-", dir=_short_temp_root()))
    ray_temp = folder / "ray"  # Ray's default temp dir under RAY_TMPDIR: where the address file goes
    ray_temp.mkdir()
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(folder)  # inherited by every node, worker and subprocess started here
    node = {"node_ip_address": "127.0.0.1", "temp_dir": str(ray_temp), "num_cpus": slots,
            "resources": {slot_resource: slots}}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.node_args = node
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(folder, ignore_errors=True)
