"""`nasalloc <command> [hydra overrides]`: dispatch to one Hydra app per command.

Before Hydra creates an output folder, every job the command line describes (each point of a
`-m` sweep) is composed and loaded here. Bad input therefore ends as one line on stderr
and exit status 2, with nothing written. Then the command runs as an ordinary `@hydra.main`
app, so overrides, `-m` sweeps, `--cfg job`, `--help` and the `.hydra/` record all work; each
job is handed the settings loaded for it here, so a job is loaded once (for `run`: one Ray
connection, one import of the training function, one memory probe).

A command module provides two functions:
    load(cfg: DictConfig) -> typed settings   (raises UserError on bad values)
    main(settings, out_dir: Path) -> None     (does the work, writes into out_dir)
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    summary: str


COMMANDS = {
    c.name: c
    for c in (
        Command("simulate", "nasalloc.sim.simulate", "simulate one search at one allocation (simpy) -> trace, summary, plots"),
        Command("recommend", "nasalloc.sim.recommend", "simulate every allocation over many seeds and recommend one"),
        Command("calibrate", "nasalloc.calibration.calibrate", "profile your training at a few allocations and fit profile.yaml"),
        Command("run", "nasalloc.execute.run", "run the search for real with one allocation (DDP, journaled)"),
        Command("validate", "nasalloc.validate.validate", "compare a real run with the simulator's prediction"),
    )
}

# Hydra flags that only print something: no job runs, so nothing is validated first.
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}
_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
                     "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}


class UsageError(Exception):
    """A problem with the command line itself (printed as one line, exit 2)."""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: nasalloc <command> [key=value ...] [-m] [hydra flags]",
        "",
        "Decide how many GPUs each trial of an early-stopping search should get.",
        "",
        "commands:",
    ]
    lines += [f"  {c.name:<{width}}  {c.summary}" for c in COMMANDS.values()]
    lines += [
        "",
        "Each command is a Hydra app: `nasalloc recommend cluster.gpus=32 scheduler=hyperband`,",
        "`nasalloc simulate -m gpus_per_trial=1,2,4`, `nasalloc <command> --cfg job` shows all settings,",
        "`out_dir=PATH` chooses the output folder, `seed=N` the random seed.",
    ]
    return "\n".join(lines)


def _error(command: str | None, message: str) -> int:
    prefix = f"nasalloc {command}" if command else "nasalloc"
    print(f"{prefix}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _split_args(args: list[str]) -> tuple[list[str], bool, bool]:
    """-> (overrides, multirun?, info-only?) from the arguments after the command."""
    overrides: list[str] = []
    multirun = info = False
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            info = info or flag in _INFO_FLAGS or flag in ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")
            skip = flag in _FLAGS_WITH_VALUE and "=" not in arg
        else:
            overrides.append(arg)
    return overrides, multirun, info


def _expand_sweeps(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Every job's override list; a `-m` sweep `a=1,2 b=x,y` gives four."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for text, ov in zip(overrides, parsed):
        if multirun and ov.is_sweep_override():
            key = ov.get_key_element()
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([text])
    return [list(combo) for combo in itertools.product(*choices)] if choices else [[]]


def _compose(command: Command, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="nasalloc.conf", version_base="1.3"):
        return compose(config_name=command.name, overrides=overrides)


def _explain_hydra_error(exc: Exception, overrides: list[str]) -> str:
    """One line for Hydra's multi-line composition errors."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        allowed = ", ".join(sorted(exc.options or [])) or "(none)"
        if group:
            return f"{group}={option}: no such option; allowed: {allowed}"
        return f"{exc.missing_cfg_file}: no such config; allowed: {allowed}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {str(exc).splitlines()[0]}"
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    if "Could not override" in text or "not in struct" in text:
        key = first.split("'")[1] if "'" in first else first
        given = next((o for o in overrides if o.split("=", 1)[0].lstrip("+~") == key), key)
        return f"{given}: no such setting (list them with --cfg job)"
    if "Could not append to config" in text:
        return f"{first} (list the settings with --cfg job)"
    return first


def _load_module(command: Command) -> Any:
    if importlib.util.find_spec(command.module) is None:
        raise UsageError(f"not available in this version yet ({command.summary}); available: "
                         + ", ".join(c.name for c in COMMANDS.values() if importlib.util.find_spec(c.module)))
    return importlib.import_module(command.module)


def _refuse_renamed(command: Command, overrides: list[str]) -> None:
    """An override that uses an old setting or module name: one line naming the new one.

    Checked before composing (also for --cfg and -m), because Hydra would only report the
    old key as unknown. The table of renamed names is `nasalloc.sim.config.RENAMED_KEYS`.
    """
    from nasalloc.sim.config import renamed_key, renamed_module

    for text in overrides:
        key, _, value = text.partition("=")
        key = key.lstrip("+~")
        new = renamed_key(command.name, key)
        if new is not None:
            raise UsageError(f"{key}: renamed; use {new}")
        module = renamed_module(value) if key.endswith("entrypoint") else None
        if module is not None:
            raise UsageError(f"{key}={value}: module renamed; use {key}={module}")


def _refuse_plan_overrides(command: Command, overrides: list[str]) -> None:
    """`nasalloc run plan=PATH` runs the plan's search: an override of a setting the plan
    fixes (`nasalloc.sim.plan.Plan.fixed_keys`) would make it another search, so it is refused."""
    from nasalloc.sim.plan import overridden_plan_key

    if command.name != "run":
        return
    clash = overridden_plan_key(overrides)
    if clash is not None:
        text, plan = clash
        raise UsageError(f"{text}: plan= fixes {', '.join(plan.fixed_keys)} (the search it planned); leave "
                         f"{text.split('=', 1)[0]} out, or run without plan=")


def _implied_groups(args: list[str]) -> list[str]:
    """`workload.path=PATH` names a recorded search, which only the replay workload reads:
    choose `workload=replay` for it unless a workload is chosen explicitly, so
    `nasalloc recommend workload.path=~/ray_results/my_search` answers as it reads."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and not a.startswith("-")]
    if "workload.path" in keys and "workload" not in keys:
        return ["workload=replay", *args]
    return args


def _job_key(cfg: Any) -> str:
    """A composed job config as text, unresolved (`${now:...}` stays as written) and without
    Hydra's own node: the same for this module's compose and for the one Hydra makes for the
    job, so the job finds the settings `validate` loaded for it."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(node, dict)
    node.pop("hydra", None)
    return json.dumps(node, sort_keys=True, default=str)


def validate(command: Command, module: Any, args: list[str]) -> dict[str, Any]:
    """Compose and load every job of the command line; raise UserError/UsageError if bad.

    -> the loaded settings of each job, by `_job_key` (empty for flags that run no job)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides, multirun, info = _split_args(args)
    _refuse_renamed(command, overrides)
    _refuse_plan_overrides(command, overrides)
    loaded: dict[str, Any] = {}
    if info:
        return loaded
    try:
        jobs = _expand_sweeps(overrides, multirun)
    except HydraException as exc:
        raise UsageError(_explain_hydra_error(exc, overrides)) from None
    for job in jobs:
        try:
            cfg = _compose(command, job)
        except (HydraException, OmegaConfBaseException) as exc:
            raise UsageError(_explain_hydra_error(exc, job)) from None
        loaded[_job_key(cfg)] = module.load(cfg)
    return loaded


def _hydra_app(command: Command, module: Any, loaded: dict[str, Any]) -> Any:
    """The command as a Hydra app; a job whose settings `validate` loaded runs with those,
    any other (flags that skip validation, such as --config-dir) is loaded here."""
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from nasalloc.sim.errors import UserError

    @hydra.main(config_path="pkg://nasalloc.conf", config_name=command.name, version_base="1.3")
    def task(cfg: DictConfig) -> None:
        out_dir = Path(HydraConfig.get().runtime.output_dir)
        try:
            settings = loaded.get(_job_key(cfg))
            module.main(module.load(cfg) if settings is None else settings, out_dir)
        except UserError as exc:
            sys.stderr.write(f"nasalloc {command.name}: {exc}\n")
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            if not _holds_only_hydra_record(out_dir):
                raise  # what the command wrote stays (a run's folder is resumable)
            shutil.rmtree(out_dir, ignore_errors=True)
            sys.stderr.write(f"nasalloc {command.name}: interrupted (nothing written)\n")
            sys.exit(EXIT_INTERRUPTED)

    return task


def _holds_only_hydra_record(folder: Path) -> bool:
    """True when `folder` holds nothing but the `.hydra/` record Hydra wrote before the command
    began: a Ctrl-C at that moment would otherwise leave a folder that looks like output
    (and that `nasalloc run resume=` refuses as not a run folder)."""
    try:
        return {p.name for p in folder.iterdir()} <= {".hydra"}
    except OSError:
        return False


def _cwd_importable() -> None:
    """Make the current folder importable, as `python -m` does (and, like it, not under
    PYTHONSAFEPATH), so `train.entrypoint=mytrain:train` finds ./mytrain.py: the `nasalloc`
    script starts with its own folder on sys.path instead. Appended, so a file here cannot
    shadow an installed package in this process. The warm workers start in this folder with
    `python -m`, which puts it on their path as well."""
    if getattr(sys.flags, "safe_path", False):
        return
    cwd = os.getcwd()
    if not any(os.path.abspath(p or ".") == cwd for p in sys.path):
        sys.path.append(cwd)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else EXIT_USAGE
    if args[0] in ("--version", "-V"):
        from nasalloc import __version__

        print(f"nasalloc {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        return _error(None, f"unknown command {name!r}; allowed: {', '.join(COMMANDS)}")
    command = COMMANDS[name]
    rest = _implied_groups(rest)
    _cwd_importable()
    from nasalloc.sim.errors import UserError

    try:
        module = _load_module(command)
        loaded = validate(command, module, rest)
    except (UserError, UsageError) as exc:
        return _error(name, str(exc))
    except KeyboardInterrupt:
        _error(name, "interrupted (nothing written)")
        return EXIT_INTERRUPTED
    saved = sys.argv
    sys.argv = [f"nasalloc {name}", *rest]
    try:
        _hydra_app(command, module, loaded)()
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:  # a command that handles Ctrl-C itself (run) says more, and exits 130 itself
        _error(name, "interrupted")
        return EXIT_INTERRUPTED
    finally:
        sys.argv = saved
    return 0
