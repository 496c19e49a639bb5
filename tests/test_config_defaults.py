"""One source for every default: the shipped YAML in conf/.

A default written both in a dataclass and in the YAML drifts apart (a calibration time limit
of 12 s in conf/calibrate.yaml and 15 s in `ProfilingPlan`; a GPU-hour at 2.0 in
conf/recommend.yaml and 1.0 in `recommend.load`'s fallback). Two checks keep it from coming back:

- no dataclass that a setting fills has a default for a key the YAML also sets;
- no command has a fallback of its own: removing any setting from a composed default
  config makes the command's `load` fail with one line naming that setting, instead of
  quietly using a value written in code.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf

from nasalloc.calibration.calibrate import CalibrationConf, TrainConf
from nasalloc.calibration.profiling import ProfilingPlan
from nasalloc.cli import COMMANDS, _compose
from nasalloc.execute.run import RUN_CONFIG, DevicesConfig, TrainConfig
from nasalloc.sim.cluster import ClusterSpec
from nasalloc.sim.errors import UserError
from nasalloc.sim.schedulers import AshaConfig, BohbConfig, HyperBandConfig
from nasalloc.sim.schedulers.random_search import RandomConfig
from nasalloc.sim.sweep import Pricing
from nasalloc.sim.workload import MetricSpec, SyntheticConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# (dataclass, command, overrides, where its settings sit in the composed config)
SCHEMAS: list[tuple[type, str, list[str], str]] = [
    (CalibrationConf, "calibrate", [], "calibration"),
    (TrainConf, "calibrate", [], "train"),
    (ProfilingPlan, "calibrate", [], "calibration"),  # filled from calibration.* and train.*
    (ProfilingPlan, "calibrate", [], "train"),
    (Pricing, "recommend", [], "cost"),
    *[(DevicesConfig, "run", [f"devices={o}"], "devices") for o in _options("devices")],
    *[(TrainConfig, "run", [f"train={o}"], "train") for o in _options("train")],
    *[(ClusterSpec, "simulate", [f"cluster={o}"], "cluster") for o in _options("cluster")],
    (SyntheticConfig, "simulate", ["workload=synthetic"], "workload"),
    *[(MetricSpec, "simulate", [f"workload={o}"], "workload.metric") for o in _options("workload")],
    *[(cls, "simulate", [f"scheduler={name}"], "scheduler")
      for cls, name in ((AshaConfig, "asha"), (HyperBandConfig, "hyperband"), (BohbConfig, "bohb"), (RandomConfig, "random"))],
]


@pytest.mark.parametrize("schema, command, overrides, where", SCHEMAS,
                         ids=[f"{s.__name__}-{c}-{'.'.join(o) or 'default'}-{w}" for s, c, o, w in SCHEMAS])
def test_no_setting_has_a_default_in_code_and_in_the_yaml(schema, command, overrides, where):
    node: Any = OmegaConf.to_container(_compose(COMMANDS[command], overrides), resolve=True)
    for part in where.split("."):
        node = node[part]
    twice = []
    for f in dataclasses.fields(schema):
        in_code = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if in_code and f.name in node:
            code = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            twice.append(f"{schema.__name__}.{f.name} = {code!r} in code, {where}.{f.name}: {node[f.name]!r} in the YAML")
    assert not twice, "defaults written twice (keep the YAML's, drop the code's): " + "; ".join(twice)


# ----- no fallback in code -----------------------------------------------------------------
# Composed configs whose keys are removed one at a time. Inside these maps any key is the
# user's own (search spaces, training parameters, pinned fit parameters): not settings.
FREE_FORM = {"space", "params", "config", "assume"}
# Hydra's output folder: Hydra reads it, no command does.
HYDRA = {"out_dir"}


def _paths(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        path = f"{prefix}{key}"
        out.append(path)
        if isinstance(value, dict) and key not in FREE_FORM:
            out += _paths(value, path + ".")
    return out


def _without(raw: dict[str, Any], path: str) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    node = out
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    del node[leaf]
    return out


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished-looking run folder (its config as `nasalloc run` saves it, one result)."""
    folder = tmp_path_factory.mktemp("run")
    saved = OmegaConf.to_container(_compose(COMMANDS["run"], []), resolve=True)
    saved.pop("resume")
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(saved), encoding="utf-8")
    (folder / "trace.jsonl").write_text(
        '{"time": 0.0, "event": "start", "trial": 0, "epoch": 0, "metric": null, "devices": [0], "config": {"lr": 0.1}}\n'
        '{"time": 1.0, "event": "result", "trial": 0, "epoch": 1, "metric": 0.5, "devices": [0]}\n', encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> Path:
    """A plan.yaml as `nasalloc recommend` writes it."""
    from nasalloc.sim.plan import Plan, write_plan

    path = tmp_path_factory.mktemp("plan") / "plan.yaml"
    write_plan(path, Plan(scheduler={**shipped_scheduler("asha"), "n_trials": 4}, gpus_per_trial=1,
                          elastic={"min": 0.25, "max": None}, seed=0, profile="digits_cpu",
                          cluster=ClusterSpec("two", 2, 2), predicted={}))
    return path


def shipped_scheduler(name: str) -> dict[str, Any]:
    from nasalloc.sim.config import shipped

    return shipped("scheduler", name)


# the run settings a plan replaces: with plan=PATH they are read from the plan, not the config
PLANNED = {"scheduler", *(f"scheduler.{k}" for k in ("name", "n_trials", "min_epochs", "max_epochs", "eta", "variant", "rule",
                                                     "brackets", "bracket_assignment", "mode", "max_retries", "promotion")),
           "gpus_per_trial", "elastic", "elastic.min", "elastic.max", "seed", "profile"}


@pytest.mark.parametrize("command, overrides, not_read", [
    # the elastic block is read for gpus_per_trial=elastic only (and then checked here too)
    ("simulate", [], {"elastic", "elastic.min", "elastic.max"}),
    ("simulate", ["gpus_per_trial=elastic"], set()),
    ("simulate", ["workload=replay", f"workload.path={Path(__file__).resolve().parent / 'fixtures' / 'ray_tune' / 'asha_2gpu'}"],
     {"elastic", "elastic.min", "elastic.max"}),
    # a small grid (removal, not size, is tested); the seeds are `seeds`, not `seed`
    ("recommend", ["schedulers=[asha]", "seeds=1"], {"seed"}),
    # scheduler=NAME replaces the `schedulers` list (without it the list is used), and the
    # top-level n_trials and the workload's metric direction replace the scheduler's own
    ("recommend", ["scheduler=hyperband", "seeds=1", "cluster.gpus=8"],
     {"seed", "scheduler", "schedulers", "scheduler.n_trials", "scheduler.mode"}),
    # train=NAME names the training function for plan.yaml (without the group, none is named)
    ("recommend", ["scheduler=asha", "train=digits", "seeds=1", "cluster.gpus=8"],
     {"seed", "scheduler", "schedulers", "scheduler.n_trials", "scheduler.mode", "train", "workload.space"}),
    ("calibrate", ["calibration.device=cpu"], set()),
    ("run", [], {"elastic", "elastic.min", "elastic.max"}),
    ("run", ["gpus_per_trial=elastic", "profile=digits_cpu"], set()),
    ("run", ["plan=PLAN"], PLANNED),  # PLAN: the plan_file fixture
    ("validate", ["profile=digits_cpu"], {"seed"}),  # each run is re-simulated with its own seed
])
def test_every_setting_is_required_no_command_falls_back_to_a_default_of_its_own(command, overrides, not_read,
                                                                                  run_folder, plan_file):
    overrides = [o.replace("PLAN", str(plan_file)) for o in overrides]
    if command == "validate":
        overrides = [*overrides, f"run={run_folder}"]
    module = importlib.import_module(COMMANDS[command].module)
    raw = OmegaConf.to_container(_compose(COMMANDS[command], overrides), resolve=True)
    module.load(OmegaConf.create(raw))  # the complete config loads
    quiet = []
    for path in _paths(raw):
        if path in HYDRA or path in not_read:
            continue
        try:
            module.load(OmegaConf.create(_without(raw, path)))
        except UserError as exc:
            assert str(exc).startswith(path) and "\n" not in str(exc), (path, str(exc))
        else:
            quiet.append(path)
    assert not quiet, f"nasalloc {command} loads without these settings (a default in code?): {', '.join(quiet)}"
