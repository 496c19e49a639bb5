"""plan.yaml: the one search `nasalloc recommend` recommends, as `nasalloc run plan=PATH` runs it.

Each command has its own defaults (recommend: 256 trials on 64 GPUs; run: 12 trials on 2 CPU
slots), so a loop written with overrides easily recommends one search and runs another. The
plan closes that gap: recommend writes every setting that makes the search the one it
simulated, and `run plan=PATH` takes exactly those, refusing command-line overrides of them.

    scheduler:       the scheduler's whole config (name, n_trials, max_epochs, eta, ...), as
                     recommend simulated it (the top-level n_trials and the metric's mode applied)
    gpus_per_trial:  the recommended allocation: 1, "1/2", [1, 2, 4] or elastic
    elastic:         its bounds {min, max} (read for gpus_per_trial=elastic)
    seed:            the first of recommend's seeds (the run's scheduler is seeded with it)
    profile:         the profile it was simulated with (a shipped name, or an absolute path)
    train:           with `recommend train=NAME`: the training function {name, entrypoint, space,
                     params}, whose search space recommend simulated; null: the run's own `train`
    cluster:         the cluster it was planned for {name, gpus, gpus_per_node}
    predicted:       what recommend predicted on that cluster (for the reader; run ignores it)

Recommend simulates learning curves (`workload`), not the training function; with
`train=NAME` it samples configurations from that function's search space (the configuration
cost model of a calibrated profile is fitted over it), and the run trains that function.

Run where the devices differ from the planned cluster, the search stays the same and only
its makespan changes; `mapping_line` says so in one line, and the allocation is checked
against the devices present (`nasalloc run` refuses when, say, k=8 meets 2 devices).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from nasalloc.sim.cluster import Allocation, ClusterSpec, parse_allocation
from nasalloc.sim.config import require, required, to_typed
from nasalloc.sim.errors import UserError
from nasalloc.sim.formatting import format_allocation
from nasalloc.sim.schedulers import scheduler_config

PLAN_FILE = "plan.yaml"
# The run settings a plan fixes: `nasalloc run plan=PATH` takes these from the plan and
# refuses them on the command line (they would make it another search than the plan's).
# With a training function in the plan, `train` too (`Plan.fixed_keys`).
PLAN_KEYS = ("scheduler", "gpus_per_trial", "elastic", "seed", "profile")
_FIELDS = (*PLAN_KEYS, "train", "cluster", "predicted")

_HEADER = ("# The search `nasalloc recommend` recommends; run exactly this search with\n"
           "#   nasalloc run plan={path}\n"
           "# (scheduler, gpus_per_trial, elastic, seed, profile and, unless null, train come from here;\n"
           "# cluster and predicted say what it was planned for; sim/plan.py)\n")


@dataclass
class TrainConfig:
    """One of conf/train/*.yaml (or the user's own): the training function `nasalloc run`
    trains, and `recommend train=NAME` names in a plan. The YAML is the one place the
    defaults are written."""

    name: str
    entrypoint: str  # "module:function" (nasalloc.execute.api)
    space: dict[str, Any]  # searched (SearchSpace syntax)
    params: dict[str, Any]  # fixed, passed to every trial

    def __post_init__(self) -> None:
        require(":" in self.entrypoint, f"entrypoint={self.entrypoint!r}: expected 'module:function'")


@dataclass(frozen=True)
class Plan:
    """A plan.yaml read back and checked (`read_plan`), or about to be written (`write_plan`)."""

    scheduler: dict[str, Any]
    gpus_per_trial: Any  # as `gpus_per_trial` takes it: 1, "1/2", [1, 2], "elastic"
    elastic: dict[str, Any]  # {min, max}
    seed: int
    profile: str
    cluster: ClusterSpec
    predicted: dict[str, Any]
    train: dict[str, Any] | None = None  # {name, entrypoint, space, params}; None: the run's own
    path: Path | None = None  # where it was read from

    @property
    def fixed_keys(self) -> tuple[str, ...]:
        """The run settings this plan fixes."""
        return PLAN_KEYS + (("train",) if self.train is not None else ())

    def run_settings(self) -> dict[str, Any]:
        """The run settings this plan fixes (`fixed_keys`), as `nasalloc run`'s config holds them."""
        out = {"scheduler": dict(self.scheduler), "gpus_per_trial": self.gpus_per_trial,
               "elastic": dict(self.elastic), "seed": self.seed, "profile": self.profile}
        if self.train is not None:
            out["train"] = dict(self.train)
        return out

    def describe(self, profile_name: str) -> str:
        s = self.scheduler
        train = "" if self.train is None else f"train {self.train['name']}, "
        return (f"{s['name']}, {s['n_trials']} trials of up to {s['max_epochs']} epochs, seed {self.seed}, "
                f"k={_shown(self.gpus_per_trial)}, {train}profile {profile_name}")


def _shown(value: Any) -> str:
    return value if value == "elastic" else format_allocation(value)


def allocation_value(alloc: Allocation) -> Any:
    """`alloc` as `gpus_per_trial` takes it in YAML: whole k as int, 1/m as the string "1/m"."""
    if alloc.is_elastic:
        return "elastic"

    def one(k: Fraction) -> Any:
        return int(k) if k >= 1 else f"1/{k.denominator}"

    values = [one(k) for k in alloc.schedule]
    return values[0] if alloc.is_static else values


def profile_reference(given: str) -> str:
    """How a plan names its profile: a file as an absolute path (the plan may be run from
    another folder), a shipped profile by its name."""
    path = Path(given).expanduser()
    return str(path.resolve()) if path.is_file() else given


def write_plan(path: Path, plan: Plan) -> None:
    """Write plan.yaml atomically (a reader never sees half a plan)."""
    data = {name: getattr(plan, name) for name in _FIELDS}
    data["cluster"] = dataclasses.asdict(plan.cluster)
    text = _HEADER.format(path=Path(path).resolve()) + yaml.safe_dump(data, sort_keys=False)
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def read_plan(given: str | Path) -> Plan:
    """plan.yaml checked value by value; one-line UserError naming `plan=` and the problem."""
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / PLAN_FILE  # a recommend output folder names its plan
    key = f"plan={given}"
    if not path.is_file():
        raise UserError(f"{key}: no such file (give the {PLAN_FILE} that `nasalloc recommend` wrote, or its folder)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        raise UserError(f"{key}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise UserError(f"{key}: not a plan (expected a mapping with {', '.join(_FIELDS)})")
    try:
        values = {name: required(raw, name) for name in _FIELDS}
        scheduler = values["scheduler"]
        if not isinstance(scheduler, dict):
            raise UserError(f"scheduler={scheduler!r}: expected the scheduler's settings")
        scheduler_config(scheduler)  # every setting present and valid
        cluster = to_typed(ClusterSpec, values["cluster"], "cluster")
        elastic = values["elastic"]
        if not isinstance(elastic, dict):
            raise UserError(f"elastic={elastic!r}: expected {{min, max}}")
        elastic = {"min": required(elastic, "min", "elastic."), "max": required(elastic, "max", "elastic.")}
        if values["gpus_per_trial"] != "elastic":
            parse_allocation(values["gpus_per_trial"], cluster)  # it was made for that cluster
        seed = values["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"seed={seed!r}: must be an integer")
        if not isinstance(values["profile"], str) or not values["profile"]:
            raise UserError(f"profile={values['profile']!r}: must be a shipped profile's name or a path")
        train = values["train"]
        if train is not None:
            train = dataclasses.asdict(to_typed(TrainConfig, train, "train"))
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None
    return Plan(scheduler=dict(scheduler), gpus_per_trial=values["gpus_per_trial"], elastic=elastic, seed=seed,
                profile=values["profile"], cluster=cluster, predicted=dict(values["predicted"] or {}), train=train,
                path=path)


def overridden_plan_key(overrides: list[str]) -> tuple[str, Plan] | None:
    """The first command-line override that a `plan=PATH` among `overrides` would contradict
    (a setting the plan fixes, or a key under one), with the plan; None if there is no plan
    or no conflict. Reads the plan (UserError if it is unusable)."""
    keys = [(o.split("=", 1)[0].lstrip("+~"), o) for o in overrides if "=" in o]
    given = [o.split("=", 1)[1] for key, o in keys if key == "plan"]
    if not given or given[-1].strip() in ("", "null"):
        return None
    plan = read_plan(given[-1])
    for key, text in keys:
        if any(key == name or key.startswith(name + ".") for name in plan.fixed_keys):
            return text, plan
    return None


def trials_at_once(alloc: Allocation, devices: int) -> int:
    """How many jobs start side by side on `devices` at the allocation's first k."""
    k = alloc.schedule[0]
    return devices * k.denominator if k < 1 else devices // int(k)


def mapping_line(plan: Plan, here: Allocation, devices: int, kind: str, profile_name: str) -> str:
    """One line: the plan, and how its cluster maps to the `devices` present here."""
    c = plan.cluster
    nodes = "" if c.gpus <= c.gpus_per_node else f" in nodes of {c.gpus_per_node}"
    head = f"plan {plan.path}: {plan.describe(profile_name)}; planned for {c.gpus} devices{nodes} ({c.name}) -> here {devices} {kind} devices"
    now = trials_at_once(here, devices)
    # elastic: every job starts at the most efficient k, which may differ with the device count
    planned = None if here.is_elastic else trials_at_once(here, c.gpus)
    if c.gpus == devices:
        return f"{head}: the planned size, {now} trial(s) at once"
    at_once = f"{now} trial(s) at once" + ("" if planned is None else f" instead of {planned}")
    return (f"{head}: {at_once}; the same search, but the predicted makespan was for {c.gpus} devices "
            f"(`nasalloc validate run=<this run>` predicts it for these {devices})")


__all__ = ["PLAN_FILE", "PLAN_KEYS", "Plan", "allocation_value", "mapping_line", "overridden_plan_key",
           "profile_reference", "read_plan", "trials_at_once", "write_plan"]
