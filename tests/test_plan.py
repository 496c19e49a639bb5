"""One search through the loop: recommend writes plan.yaml, `run plan=PATH` runs exactly that
search (or refuses in one line), and `validate` refuses to rank runs of different searches."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from nasalloc import cli
from nasalloc.cli import COMMANDS, _compose
from nasalloc.execute import run as run_cmd
from nasalloc.execute.run import RUN_CONFIG
from nasalloc.sim.cluster import ClusterSpec, machine, parse_allocation
from nasalloc.sim.config import shipped
from nasalloc.sim.errors import UserError
from nasalloc.sim.plan import Plan, mapping_line, read_plan, write_plan
from nasalloc.validate import validate as validate_cmd

# A small search, every number chosen here (not read from the code that writes the plan).
SMALL = ["scheduler=asha", "n_trials=5", "scheduler.max_epochs=3", "scheduler.eta=2", "profile=digits_cpu",
         "cluster=single_node", "cluster.gpus=2", "cluster.gpus_per_node=2", "allocations=[1,2]", "adaptive=false",
         "seeds=[3,5]", "workers=1", "plots=false"]


@pytest.fixture(scope="module")
def recommended(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recommend")
    assert cli.main(["recommend", *SMALL, f"out_dir={out}"]) == 0
    return out


def _toy_plan(tmp_path: Path, gpus_per_trial=1, cluster=ClusterSpec("two", 2, 2), n_trials=4, name="plan.yaml") -> Path:
    """A plan for the toy trainer's search, written as recommend writes one."""
    sched = {**shipped("scheduler", "asha"), "n_trials": n_trials, "max_epochs": 3, "eta": 3}
    path = tmp_path / name
    write_plan(path, Plan(scheduler=sched, gpus_per_trial=gpus_per_trial, elastic={"min": 0.25, "max": None}, seed=7,
                          profile="digits_cpu", cluster=cluster, predicted={}))
    return path


CONF = Path(__file__).resolve().parents[1] / "conf"


def test_recommend_with_a_training_function_simulates_its_space_and_plans_it(tmp_path):
    out = tmp_path / "recommend"
    assert cli.main(["recommend", *SMALL, "train=digits", f"out_dir={out}"]) == 0
    digits = yaml.safe_load((CONF / "train" / "digits.yaml").read_text())
    plan = read_plan(out / "plan.yaml")
    assert plan.train == {key: digits[key] for key in ("name", "entrypoint", "space", "params")}
    assert plan.fixed_keys[-1] == "train"
    raw = OmegaConf.to_container(_compose(COMMANDS["recommend"], [*SMALL, "train=digits"]), resolve=True)
    from nasalloc.sim import recommend as recommend_cmd

    assert set(recommend_cmd.load(OmegaConf.create(raw)).workload.space.names) == set(digits["space"])
    # run takes the plan's training function, and refuses another one on the command line
    raw = OmegaConf.to_container(_compose(COMMANDS["run"], [f"plan={out}", "train=toy"]), resolve=True)
    assert run_cmd.load(OmegaConf.create(raw)).train.entrypoint == digits["entrypoint"]
    assert cli.main(["run", f"plan={out}", "train=toy", f"out_dir={tmp_path / 'run'}"]) == 2


def test_recommend_writes_the_plan_of_the_recommended_search(recommended, capsys):
    plan = yaml.safe_load((recommended / "plan.yaml").read_text())
    rec = json.loads((recommended / "recommendation.json").read_text())["recommended"]
    assert plan["scheduler"]["name"] == "asha"
    assert (plan["scheduler"]["n_trials"], plan["scheduler"]["max_epochs"], plan["scheduler"]["eta"]) == (5, 3, 2)
    assert plan["scheduler"]["variant"] == "stopping"  # conf/scheduler/asha.yaml, the setting not overridden
    assert plan["scheduler"]["mode"] == "max"  # the synthetic workload's val_accuracy
    assert str(plan["gpus_per_trial"]) == rec["gpus_per_trial"]
    assert plan["seed"] == 3  # the first of seeds=[3,5]
    assert plan["profile"] == "digits_cpu"
    assert plan["cluster"] == {"name": "single_node", "gpus": 2, "gpus_per_node": 2}
    assert plan["predicted"]["makespan_s"]["mean"] == rec["makespan_s"]["mean"]
    assert plan["train"] is None  # no train=NAME: the run trains its own


def test_run_with_the_plan_takes_its_search_and_says_how_it_maps(recommended):
    raw = OmegaConf.to_container(_compose(COMMANDS["run"], [f"plan={recommended}", "devices.count=2"]), resolve=True)
    settings = run_cmd.load(OmegaConf.create(raw))
    assert settings.scheduler.name == "asha"
    assert (settings.scheduler.n_trials, settings.scheduler.max_epochs, settings.scheduler.eta) == (5, 3, 2)
    assert settings.seed == 3
    assert settings.raw["profile"] == "digits_cpu" and settings.profile.name == "digits_cpu"
    assert settings.raw["plan"] == str((recommended / "plan.yaml").resolve())
    assert "planned for 2 devices (single_node) -> here 2 cpu devices: the planned size" in settings.plan_note


def test_mapping_line_counts_trials_at_once_on_both_sizes(tmp_path):
    # k = 1/2: two trials per device; 16 planned devices hold 32, the 2 here hold 4
    plan = read_plan(_toy_plan(tmp_path, gpus_per_trial="1/2", cluster=ClusterSpec("big", 16, 4)))
    line = mapping_line(plan, parse_allocation("1/2", machine(2)), 2, "cpu", "digits_cpu")
    assert "planned for 16 devices in nodes of 4 (big) -> here 2 cpu devices: 4 trial(s) at once instead of 32" in line
    assert "\n" not in line


def test_run_refuses_a_plan_whose_allocation_needs_more_devices(tmp_path, capsys):
    plan = _toy_plan(tmp_path, gpus_per_trial=4, cluster=ClusterSpec("eight", 8, 8))
    out = tmp_path / "run"
    assert cli.main(["run", f"plan={plan}", "devices.count=2", "train=toy", f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"plan={plan} (made for 8 devices of eight): gpus_per_trial=4: not allowed" in err
    assert not out.exists()


@pytest.mark.parametrize("override", ["scheduler.n_trials=9", "scheduler=hyperband", "seed=1", "gpus_per_trial=2",
                                      "profile=resnet50_a100", "elastic.max=2"])
def test_run_refuses_overrides_of_what_the_plan_fixes(tmp_path, capsys, override):
    plan = _toy_plan(tmp_path)
    assert cli.main(["run", f"plan={plan}", override, f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nasalloc run: {override}: plan= fixes") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_broken_plan_is_one_line_naming_it(tmp_path):
    path = _toy_plan(tmp_path)
    data = yaml.safe_load(path.read_text())
    del data["seed"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"^plan=.*: seed: missing"):
        read_plan(path)
    data["seed"] = 1
    data["scheduler"]["eta"] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=r"^plan=.*: scheduler.eta=1"):
        read_plan(path)
    with pytest.raises(UserError, match=r"^plan=.*nothing: no such file"):
        read_plan(tmp_path / "nothing")


@pytest.mark.slow
def test_run_plan_runs_exactly_the_planned_search(tmp_path, capsys):
    plan = _toy_plan(tmp_path, n_trials=4)
    out = tmp_path / "run"
    assert cli.main(["run", f"plan={plan}", "devices.count=2", "train=toy", "progress=none", f"out_dir={out}"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"plan {plan}: asha, 4 trials of up to 3 epochs, seed 7, k=1")
    saved = yaml.safe_load((out / RUN_CONFIG).read_text())
    assert saved["seed"] == 7 and saved["scheduler"]["n_trials"] == 4 and saved["plan"] == str(plan.resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 4 and summary["failed"] == 0
    epochs = [json.loads(line).get("epoch") or 0 for line in (out / "trace.jsonl").read_text().splitlines()]
    assert max(epochs) == 3


# ----- validate: one search per ranking ---------------------------------------------------

def _run_folder(root: Path, name: str, overrides: list[str]) -> Path:
    """A finished-looking run folder: its config as `nasalloc run` saves it, one result."""
    folder = root / name
    folder.mkdir()
    saved = OmegaConf.to_container(_compose(COMMANDS["run"], ["profile=digits_cpu", *overrides]), resolve=True)
    (folder / RUN_CONFIG).write_text(yaml.safe_dump(saved), encoding="utf-8")
    (folder / "trace.jsonl").write_text(
        '{"time": 0.0, "event": "start", "trial": 0, "epoch": 0, "metric": null, "devices": [0], "config": {"lr": 0.1}}\n'
        '{"time": 1.0, "event": "result", "trial": 0, "epoch": 1, "metric": 0.5, "devices": [0]}\n', encoding="utf-8")
    return folder


def _load_validate(runs: list[Path], *extra: str):
    raw = OmegaConf.to_container(_compose(COMMANDS["validate"], [f"run=[{','.join(map(str, runs))}]", *extra]),
                                 resolve=True)
    return validate_cmd.load(OmegaConf.create(raw))


@pytest.mark.parametrize("other, named", [
    (["scheduler.n_trials=30"], "scheduler.n_trials 30 there, 12 here"),
    (["scheduler=hyperband"], "scheduler 'hyperband' there, 'asha' here"),
    (["scheduler.eta=2"], "scheduler.eta 2 there, 3 here"),
    (["train=mnist1d"], "train.space.depth"),
])
def test_validate_refuses_to_rank_different_searches_unless_forced(tmp_path, other, named):
    a = _run_folder(tmp_path, "a", ["gpus_per_trial=1"])
    b = _run_folder(tmp_path, "b", ["gpus_per_trial=2", *other])
    with pytest.raises(UserError, match="^run: ") as err:
        _load_validate([a, b])
    assert named in str(err.value) and f"{b} is another search than {a}" in str(err.value)
    assert "force=true" in str(err.value) and "\n" not in str(err.value)
    assert _load_validate([a, b], "force=true").forced == str(err.value)[len("run: "):].split(";")[0]


def test_validate_ranks_one_search_at_different_allocations_and_seeds(tmp_path):
    a = _run_folder(tmp_path, "a", ["gpus_per_trial=1", "seed=0"])
    b = _run_folder(tmp_path, "b", ["gpus_per_trial=2", "seed=1"])
    assert _load_validate([a, b]).forced is None


# ----- a training function in the current folder -------------------------------------------

MYTRAIN = '''
from nasalloc.execute.api import Decision


def train(config, ctx):
    for epoch in range(ctx.start_epoch + 1, ctx.until_epoch + 1):
        ctx.step()
        if ctx.report(epoch, config["quality"] * epoch) is not Decision.CONTINUE:
            return
'''


@pytest.mark.slow
def test_an_entrypoint_in_the_current_folder_imports_without_pythonpath(tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mytrain_plan_test.py").write_text(MYTRAIN, encoding="utf-8")
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(work))])
    monkeypatch.delenv("PYTHONPATH", raising=False)
    out = tmp_path / "run"
    assert cli.main(["run", "train=toy", "train.entrypoint=mytrain_plan_test:train", "scheduler.n_trials=2",
                     "scheduler.max_epochs=2", "devices.count=1", "progress=none", f"out_dir={out}"]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 2 and summary["failed"] == 0


def test_no_empty_job_log_is_written(recommended):
    assert not list(recommended.glob("*.log"))


def test_a_resumed_run_refuses_a_plan(tmp_path):
    folder = _run_folder(tmp_path, "a", [])
    plan = _toy_plan(tmp_path)
    with pytest.raises(UserError, match=r"^plan=.*: a resumed run continues its own search"):
        run_cmd.load(OmegaConf.create({"resume": str(folder), "plan": str(plan)}))
