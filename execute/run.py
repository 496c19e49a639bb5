"""`nasalloc run`: run the search for real with one allocation, journaled and resumable.

    nasalloc run                                   # short ASHA search of `digits` on 2 CPU slots
    nasalloc run gpus_per_trial=2                  # every trial as a 2-rank gloo DDP group
    nasalloc run gpus_per_trial=[1,2] scheduler=hyperband   # more devices after the first rung
    nasalloc run devices=cuda devices.ids=[0,1,2,3] train=synthetic
    nasalloc run resume=outputs/run/2026-01-01_12-00-00     # continue a killed run
    nasalloc run plan=outputs/recommend/2026-01-01_12-00-00/plan.yaml   # the search recommend planned
    nasalloc run backend=ray ray.address=auto      # on the nodes of a Ray cluster (execute/ray_backend.py)

`load` validates everything (scheduler, space, devices, allocation, that the entrypoint
imports) before any folder exists; `main` starts the warm workers, runs `SearchLoop` and
writes trace.jsonl, summary.json, plots, logs/ into the run folder, and machine.yaml (where it
ran, for `nasalloc validate`); with a `profile=` measured on another machine it says so in one
line first. A resumed run uses the saved `run_config.yaml` of that folder (other overrides are
ignored) and appends to its trace.
With `plan=PATH` the plan's scheduler, allocation, seed, profile and (if it names one) training
function replace the run's own (`sim/plan.py`; the CLI refuses overrides of them), the
allocation is checked against the devices present, and the run starts by saying in one line
how the planned cluster maps to them.

`read_run_config` is the one reader of that file (for `resume=` here, and for `nasalloc
validate`, which may run on another machine): it checks values only (`parse_run_config`);
`settings_here` adds what depends on this machine (devices, entrypoint, profile).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from nasalloc.execute.devices import device_name
from nasalloc.execute.worker import check_entrypoint
from nasalloc.sim.cluster import ELASTIC, Allocation, ClusterSpec, machine
from nasalloc.sim.profile import Profile
from nasalloc.sim.config import require, require_choice, required, to_typed, upgrade_saved
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_allocation, format_duration
from nasalloc.sim.plan import TrainConfig, mapping_line, read_plan
from nasalloc.sim.provenance import foreign_line, this_machine
from nasalloc.sim.schedulers import scheduler_config
from nasalloc.sim.space import SearchSpace

RUN_CONFIG = "run_config.yaml"
MACHINE = "machine.yaml"  # where the run ran (sim/provenance.py), for `nasalloc validate`
RAN_ON = "ran_on"  # run_config.yaml of a backend=ray run: the cluster's devices and gpus_per_node (not a setting)


@dataclass
class DevicesConfig:
    """One of conf/devices/*.yaml, the one place the defaults are written (none here)."""

    kind: str  # cpu: CPU slots with gloo | cuda: GPUs with nccl
    count: int  # cpu: number of slots; cuda: used when ids is null (first `count` GPUs, 0 = all)
    ids: list[int] | None  # cuda: GPU indices; cpu: slot ids (null: 0..count-1)
    threads_per_rank: int  # torch threads per rank; 0 = cores / slots (at least 1)

    def __post_init__(self) -> None:
        require_choice("kind", self.kind, ("cpu", "cuda"))
        require(self.count >= 0, f"count={self.count}: must be >= 0")
        require(self.kind != "cpu" or bool(self.ids) or self.count > 0, "count=0: need at least one CPU slot")
        require(not self.ids or len(set(self.ids)) == len(self.ids), f"ids={self.ids}: an id appears twice")
        require(self.threads_per_rank >= 0, f"threads_per_rank={self.threads_per_rank}: must be >= 0")


BACKENDS = ("local", "ray")


@dataclass
class RayConfig:
    """The `ray` block of conf/run.yaml (read for backend=ray)."""

    address: str | None  # "auto" or HOST:PORT of a running cluster; null: start a local Ray instance
    slot_resource: str  # the custom resource that is one CPU slot on a CPU-only cluster

    def __post_init__(self) -> None:
        require(self.address is None or (isinstance(self.address, str) and self.address != ""),
                f"address={self.address!r}: auto, HOST:PORT or null")
        require(isinstance(self.slot_resource, str) and self.slot_resource != "",
                f"slot_resource={self.slot_resource!r}: the name of a custom Ray resource")


PROGRESS = ("auto", "rich", "plain", "none")


@dataclass
class RunConf:
    """conf/run.yaml as composed, or a run folder's run_config.yaml (`upgrade_saved`): the
    one schema of a run's settings; the defaults are written in the YAML only. The groups
    stay mappings, each read by its own schema in `parse_run_config`, so a message names the
    group's key (``devices.count=0: ...``)."""

    scheduler: dict[str, Any]  # `scheduler_config`
    train: dict[str, Any]  # `TrainConfig`
    devices: dict[str, Any]  # `DevicesConfig`
    gpus_per_trial: Any  # a number, "1/4", a per-rung list or elastic (`resolve_allocation`)
    unshare: bool
    trial_timeout_s: float
    checkpoint_every: int
    target: Optional[float]
    profile: Optional[str]
    progress: str
    backend: str
    ray: dict[str, Any]  # `RayConfig`
    storage: Optional[str]
    seed: int
    # Absent where a run config was built without composing one (tests, benchmarks), or
    # saved (resume= is not; out_dir and plan are), or saved by a local run (ran_on):
    elastic: Optional[dict[str, Any]] = None  # read for gpus_per_trial=elastic only, and required then
    resume: Optional[str] = None  # `load` requires it in a composed config
    plan: Optional[str] = None  # `load` requires it in a composed config
    out_dir: Optional[str] = None  # Hydra's output folder: Hydra reads it
    ran_on: Optional[dict[str, Any]] = None  # RAN_ON: the Ray cluster a backend=ray run ran on

    def __post_init__(self) -> None:
        require(self.trial_timeout_s > 0, f"trial_timeout_s={self.trial_timeout_s:g}: must be a number of seconds > 0")
        require(self.checkpoint_every >= 1, f"checkpoint_every={self.checkpoint_every}: must be an integer >= 1")
        require_choice("progress", self.progress, PROGRESS)
        require_choice("backend", self.backend, BACKENDS)
        require(self.storage != "", "storage='': a folder every node sees, or null for the run folder")


@dataclass
class RunConfig:
    """A run's configuration checked value by value, but not against this machine.

    The composed config of a new run and the `run_config.yaml` saved in a run folder both
    become one of these (`parse_run_config`, `read_run_config`). Reading stops here on
    purpose: `nasalloc validate` re-simulates a run on another machine, where the training
    entrypoint need not import and the run's GPUs need not exist. `settings_here` adds the
    checks against this machine before anything runs.
    """

    scheduler: Any
    space: SearchSpace
    train: TrainConfig
    devices: DevicesConfig
    gpus_per_trial: Any  # as given (a number, "1/4", a per-rung list); checked against a device count by the user of it
    trial_timeout_s: float
    checkpoint_every: int
    target: float | None
    seed: int
    progress: str
    profile: str | None  # the profile the run was planned with (recorded for `nasalloc validate`)
    unshare: bool  # k = 1/m: move a sharing trial to an idle device when `profile` says it pays
    raw: dict[str, Any]  # the mapping it was read from, saved as run_config.yaml for resume
    backend: str  # local | ray
    ray: RayConfig
    storage: Path | None  # checkpoints (and trial logs) go here; None: the run folder
    cluster: ClusterSpec | None  # backend=ray: the nodes it ran on, as its run folder records them (`RAN_ON`)

    def device_count(self) -> int | None:
        """Devices the config itself names (its ids, else its count); None for `devices=cuda`
        with count 0, which means every GPU present on the machine that ran it."""
        if self.devices.ids:
            return len(self.devices.ids)
        if self.cluster is not None:
            return self.cluster.gpus
        return self.devices.count or None


@dataclass
class RunSettings:
    """Everything `main` needs, validated."""

    scheduler: Any
    space: SearchSpace
    train: TrainConfig
    devices: DevicesConfig
    device_ids: list[int]
    allocation: Allocation
    gpus_per_trial: Any
    trial_timeout_s: float
    checkpoint_every: int
    target: float | None
    seed: int
    progress: str
    resume: Path | None
    raw: dict[str, Any]  # the composed config, saved for resume
    unshare: bool  # as RunConfig.unshare
    profile: Profile | None  # the planning profile (the elastic and unshare policies decide with it)
    backend: str  # local | ray
    ray: RayConfig
    storage: Path | None  # None: the run folder
    cluster: ClusterSpec  # the devices as placement sees them (this machine: one node)
    cpus_per_node: int  # backend=ray: the fewest CPUs of a node (threads of a rank on a CPU slot)
    plan_note: str | None = None  # with plan=PATH: how the planned cluster maps to these devices (printed first)

    def storage_dir(self, run_dir: Path) -> Path:
        """Where checkpoints and trial logs go (every node must see it with backend=ray)."""
        return self.storage if self.storage is not None else Path(run_dir)


def _device_ids(dev: DevicesConfig) -> list[int]:
    if dev.kind == "cpu":
        return list(dev.ids) if dev.ids else list(range(dev.count))
    import torch

    present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if present == 0:
        raise UserError("devices=cuda: no CUDA GPU is visible here; use devices=cpu")
    ids = list(dev.ids) if dev.ids else list(range(dev.count or present))
    bad = [i for i in ids if not 0 <= i < present]
    if bad:
        raise UserError(f"devices.ids={ids}: GPU {bad[0]} does not exist; {present} present (0..{present - 1})")
    return ids


def _check_capacity(config: RunConfig, ids: list[int], allocation: Allocation) -> None:
    """Refuse, before anything starts, more warm workers than this machine can hold (a few per
    core on CPU slots; memory at a worker's size, measured as this process now that it has
    imported the training function, as a worker does)."""
    from nasalloc.execute.devices import available_memory_bytes, check_capacity, process_rss_bytes, usable_cores

    what = f"devices.ids={list(config.devices.ids)}" if config.devices.ids else f"devices.count={len(ids)}"
    if allocation.slots_per_device > 1:
        what += f" with gpus_per_trial={format_allocation(allocation.label)}"
    check_capacity(what, config.devices.kind, len(ids), allocation.slots_per_device, cores=usable_cores(),
                   worker_bytes=process_rss_bytes(), available_bytes=available_memory_bytes())


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Check a plain config mapping (composed Hydra config or saved run_config.yaml) value by
    value; nothing here looks at this machine (see `RunConfig`)."""
    for key in ("scheduler", "train", "devices"):
        if not isinstance(raw.get(key), dict):  # a group left out (`~train`) or set to null
            raise UserError(f"{key}: missing; pick one, e.g. {key}=" + {"scheduler": "asha", "train": "digits", "devices": "cpu"}[key])
    conf = to_typed(RunConf, raw)
    train = to_typed(TrainConfig, conf.train, "train")
    cluster = None
    if conf.ran_on is not None:  # a record of what a Ray run ran on, written by `main`
        cluster = to_typed(ClusterSpec, {"name": "the run's Ray cluster", **conf.ran_on}, RAN_ON)
    return RunConfig(
        scheduler=scheduler_config(conf.scheduler), space=SearchSpace.from_config(train.space, "train.space"),
        train=train, devices=to_typed(DevicesConfig, conf.devices, "devices"), gpus_per_trial=conf.gpus_per_trial,
        trial_timeout_s=conf.trial_timeout_s, checkpoint_every=conf.checkpoint_every, target=conf.target,
        seed=conf.seed, progress=conf.progress, profile=conf.profile, unshare=conf.unshare, raw=raw,
        backend=conf.backend, ray=to_typed(RayConfig, conf.ray, "ray"),
        storage=None if conf.storage is None else Path(conf.storage).expanduser().resolve(), cluster=cluster,
    )


def shipped_backend() -> dict[str, Any]:
    """The `backend`, `ray` and `storage` settings as conf/run.yaml ships them, for code that
    builds a run config without composing one (tests, benchmarks)."""
    from importlib import resources

    text = (resources.files("nasalloc.conf") / "run.yaml").read_text(encoding="utf-8")
    run = yaml.safe_load(text)
    return {k: run[k] for k in ("backend", "ray", "storage")}


def require_run_folder(folder: str | Path, key: str) -> Path:
    """`folder` as a Path if it holds a run of `nasalloc run` (`key` names the setting in the error)."""
    path = Path(folder).expanduser()
    if not (path / "trace.jsonl").is_file() or not (path / RUN_CONFIG).is_file():
        raise UserError(f"{key}={folder}: not a run folder (needs trace.jsonl and {RUN_CONFIG} from `nasalloc run`)")
    return path


def read_run_config(folder: Path) -> RunConfig:
    """The one reader of a run folder's run_config.yaml: `resume=` continues from it and
    `nasalloc validate` re-simulates it; runs of an older version (renamed settings) still
    read. Errors are one line naming the file."""
    path = Path(folder) / RUN_CONFIG
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a mapping of settings")
    raw = upgrade_saved("run", raw)  # settings renamed since it was written get their current names
    for key, value in shipped_backend().items():  # saved before backend=ray existed: it ran as these ship
        raw.setdefault(key, value)
    try:
        return parse_run_config(raw)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def settings_here(config: RunConfig, resume: Path | None = None, allocation_key: str = "gpus_per_trial") -> RunSettings:
    """The settings to run `config` on this machine: its devices exist, the allocation fits
    them, the training entrypoint imports and the recorded profile loads. `allocation_key`
    names the allocation in the error when it does not fit."""
    from nasalloc.sim.elastic import resolve_allocation
    from nasalloc.sim.profile import load_profile

    cpus_per_node = 0
    if config.backend == "ray":  # the cluster's devices, numbered node by node
        from nasalloc.execute import ray_backend

        ray_backend.connect(config.ray.address, config.devices.kind, config.ray.slot_resource,
                            config.devices.count or 1)
        found = ray_backend.discover(config.devices.kind, config.ray.slot_resource)
        cluster, cpus_per_node = found.spec, found.cpus_per_node
        was = config.cluster
        if was is not None and (was.gpus, was.gpus_per_node) != (cluster.gpus, cluster.gpus_per_node):
            raise UserError(f"backend=ray: the run ran on {was.nodes} nodes of {was.gpus_per_node} devices, the cluster "
                            f"now has {cluster.nodes} of {cluster.gpus_per_node}; resume it on the same shape of cluster")
        ids = list(range(cluster.gpus))
    else:
        ids = _device_ids(config.devices)
        cluster = machine(len(ids))
    # the profile is recorded for `nasalloc validate` (a typo should fail now), and the
    # elastic policy decides with it
    profile = None if config.profile is None else load_profile(config.profile)
    elastic = required(config.raw, "elastic") if config.gpus_per_trial == ELASTIC else None
    allocation = resolve_allocation(config.gpus_per_trial, cluster, profile, elastic, key=allocation_key)
    check_entrypoint(config.train.entrypoint)
    if config.backend == "local":  # a Ray cluster's nodes hold their own workers
        _check_capacity(config, ids, allocation)
    return RunSettings(
        scheduler=config.scheduler, space=config.space, train=config.train, devices=config.devices, device_ids=ids,
        allocation=allocation, gpus_per_trial=allocation.label, trial_timeout_s=config.trial_timeout_s,
        checkpoint_every=config.checkpoint_every, target=config.target, seed=config.seed, progress=config.progress,
        resume=resume, raw=config.raw, profile=profile, unshare=config.unshare, backend=config.backend, ray=config.ray,
        storage=config.storage, cluster=cluster, cpus_per_node=cpus_per_node,
    )


def settings_from(raw: dict[str, Any], resume: Path | None = None) -> RunSettings:
    """Validate a plain config mapping and check it against this machine."""
    return settings_here(parse_run_config(raw), resume)


def load(cfg: DictConfig) -> RunSettings:
    raw = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(raw, dict)
    raw.pop("hydra", None)
    resume = required(raw, "resume")
    if resume:
        folder = require_run_folder(str(resume), "resume")
        if raw.get("plan") is not None:  # the other settings are ignored on resume; a plan would mislead
            raise UserError(f"plan={raw['plan']}: a resumed run continues its own search ({folder / RUN_CONFIG}); "
                            "leave plan= out")
        return settings_here(read_run_config(folder), resume=folder)
    out_dir = raw.get("out_dir")
    if out_dir and (Path(str(out_dir)) / "trace.jsonl").exists():
        raise UserError(f"out_dir={out_dir}: already holds a run (trace.jsonl); continue it with resume={out_dir} "
                        "or choose another out_dir")
    plan_given = required(raw, "plan")
    if plan_given is None:
        return settings_from(raw)
    plan = read_plan(str(plan_given))
    assert plan.path is not None
    raw = {**raw, **plan.run_settings(), "plan": str(plan.path.resolve())}
    made_for = f"plan={plan_given} (made for {plan.cluster.gpus} devices of {plan.cluster.name})"
    settings = settings_here(parse_run_config(raw), allocation_key=f"{made_for}: gpus_per_trial")
    assert settings.profile is not None  # a plan names its profile
    note = mapping_line(plan, settings.allocation, len(settings.device_ids), settings.devices.kind, settings.profile.name)
    return dataclasses.replace(settings, plan_note=note)


def main(settings: RunSettings, out_dir: Path) -> None:
    from nasalloc.execute.backend import StartInterrupted, WorkersDidNotStart
    from nasalloc.execute.search import run_search

    if settings.plan_note is not None:
        print(settings.plan_note, flush=True)
    run_dir = settings.resume if settings.resume is not None else Path(out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    here = machine_here(settings.devices.kind, settings.device_ids)
    if settings.resume is None:
        saved = {k: v for k, v in settings.raw.items() if k not in ("resume",)}
        if settings.backend == "ray":  # `nasalloc validate` and `resume=` need the shape it ran on
            saved[RAN_ON] = {"gpus": settings.cluster.gpus, "gpus_per_node": settings.cluster.gpus_per_node}
        (run_dir / RUN_CONFIG).write_text(yaml.safe_dump(saved, sort_keys=False), encoding="utf-8")
        (run_dir / MACHINE).write_text(yaml.safe_dump(here, sort_keys=False), encoding="utf-8")
    if settings.profile is not None:
        line = foreign_line(settings.profile.name, settings.profile.provenance, here)
        if line:
            print(line, flush=True)
    try:
        summary = run_search(settings, run_dir)
    except (StartInterrupted, WorkersDidNotStart) as exc:
        # the workers are stopped; the folder is resumable (run_config.yaml, a trace, maybe empty)
        sys.stderr.write(f"nasalloc run: {exc}; continue with: nasalloc run resume={run_dir}\n")
        sys.exit(130 if isinstance(exc, StartInterrupted) else 1)
    _print_summary(summary, run_dir)
    if summary.get("interrupted"):
        sys.stderr.write(f"nasalloc run: interrupted; continue with: nasalloc run resume={run_dir}\n")
        sys.exit(130)


def machine_here(kind: str, device_ids: list[int]) -> dict[str, Any]:
    """This machine's provenance record (sim/provenance.py), its device named as calibration names it."""
    return this_machine(device_name(kind, device_ids[0] if device_ids else 0), how="nasalloc run")


def read_machine(folder: Path) -> dict[str, Any] | None:
    """Where the run in `folder` ran (its machine.yaml); None for a run that did not record it."""
    try:
        data = yaml.safe_load((Path(folder) / MACHINE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return dict(data) if isinstance(data, dict) else None


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    def fmt(key: str, v: Any) -> str:
        if key == "gpus_per_trial" and v is not None:
            return format_allocation(v)
        if key.endswith("_s") and v is not None:
            return format_duration(v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    keys = ("scheduler", "gpus_per_trial", "devices", "trials", "completed", "stopped", "failed", "epochs_trained",
            "best_metric", "best_test_metric", "best_trial", "makespan_s", "time_to_target_s", "gpu_utilization")
    if summary.get("shared_while_idle_s"):  # only trials sharing a device can; as `simulate` shows it
        keys += ("shared_while_idle_s",)
    lines = [f"  {k:<17} {fmt(k, summary.get(k))}" for k in keys]
    print("nasalloc run: done\n" + "\n".join(lines) + f"\n  output            {run_dir}", flush=True)



__all__ = ["BACKENDS", "RayConfig", "RunConf", "RunConfig", "RunSettings", "DevicesConfig", "TrainConfig", "load", "main", "parse_run_config",
           "read_run_config", "require_run_folder", "shipped_backend", "settings_from", "settings_here"]
