"""Turn a composed Hydra/OmegaConf node into a typed, validated dataclass, once, at the entry.

`to_typed` refuses unknown and missing keys and a bool, int or float setting of another type
(`check_scalar`); OmegaConf does the rest of the structural work (lists, mappings); each
dataclass checks its own ranges in `__post_init__` by raising `ValueError` (`require`,
`require_choice`). Every failure comes out as one `UserError` line that names the full key,
e.g. ``scheduler.eta=1: must be an integer >= 2``. `number` is the one reader of numbers in
recorded files (CSV cells, Ray Tune results), with messages of the same shape.

Each command reads its whole composed config through one schema (`SimulateConf`,
`RecommendConf`, `RunConf`, `CalibrateConf`, `ValidateConf`, beside each command's `load`):
top-level values are checked there; each group (scheduler, cluster, train, ...) stays a
mapping that its own schema reads, so its messages name the group's key. The CLI loads every
job once and hands the settings to the job (`nasalloc/cli.py`).

One source for every default: the shipped YAML in conf/. The dataclasses that settings fill
declare types and checks but no defaults (a field defaulting to None is one a config may
lack: Hydra's `out_dir`, a group not chosen, a key a saved run predates; None means "not
given", and code that needs the value refuses it), and code reads settings with `required`, never
`cfg.get(key, default)`; a value written in two places drifts apart (a calibration time
limit of 12 s in the YAML and 15 s in code once). Code that builds a config without Hydra
(recommend's list of schedulers, tests, benchmarks) starts from `shipped(group, name)`.

Also the one table of renamed settings (`RENAMED_KEYS`, `RENAMED_MODULES`): the CLI refuses an
old name on the command line, naming the new one, and a saved config of an older version is
translated (`upgrade_saved`), so old runs stay resumable; so is one without a setting added
since (`ADDED_KEYS`, with the value that says how the older version ran).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nasalloc.sim.errors import UserError

T = TypeVar("T")


def to_typed(schema: type[T], node: Any, key: str = "") -> T:
    """Validate `node` (a DictConfig or plain mapping) against dataclass `schema`.

    `key` is where the node sits in the whole config (``"scheduler"``; ``""`` for a command's
    whole config), used in messages. A field typed bool, int or float (or Optional of one)
    takes only a value of that type (`check_scalar`): OmegaConf alone would read
    ``plots=1`` as true and ``seed="3"`` as 3. Range checks live in the dataclass's
    `__post_init__` and raise ``ValueError("field: message")`` (`require`, `require_choice`);
    the field name is prefixed with `key` here.
    """
    if node is None:
        node = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise UserError(f"{key or 'settings'}: expected a mapping of settings, got {node!r}")
    where = f"{key}." if key else ""
    fields = dataclasses.fields(schema)  # type: ignore[arg-type]
    allowed = [f.name for f in fields]
    unknown = sorted(set(node) - set(allowed), key=str)
    if unknown:
        raise UserError(f"{where}{unknown[0]}: unknown setting; allowed: {', '.join(allowed)}")
    missing = [f.name for f in fields if f.name not in node
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{where}{missing[0]}: {MISSING_MESSAGE}")
    hints = typing.get_type_hints(schema)
    for f in fields:
        if f.name in node:
            check_scalar(f"{where}{f.name}", node[f.name], hints[f.name])
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        full_key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        value = node.get(str(full_key).split(".")[0], None) if isinstance(full_key, str) else None
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        shown = f"={value!r}" if value is not None else ""
        raise UserError(f"{where}{full_key}{shown}: {msg}") from None
    except ValueError as exc:
        text = str(exc)
        raise UserError(f"{where}{text}" if key and text and not text.startswith(key) else text) from None


_SCALARS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number"}


def check_scalar(name: str, value: Any, hint: Any) -> None:
    """UserError ``name=value: must be an integer`` (a number, true or false; "or null" when
    the hint is Optional) unless `value` has the type `hint` names; hints other than bool,
    int, float and their Optional are not checked here. The one check of a setting's type:
    an integer is not true, true is not 1, and a number is never NaN."""
    args = typing.get_args(hint)
    optional = type(None) in args and len(args) == 2
    kind = next(a for a in args if a is not type(None)) if optional else hint
    if kind not in _SCALARS or (optional and value is None):
        return
    if kind is bool:
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
        ok = ok and not (isinstance(value, float) and math.isnan(value))
    if not ok:
        raise UserError(f"{name}={value!r}: must be {_SCALARS[kind]}" + (" or null" if optional else ""))


def number(name: str, value: Any, *, minimum: float | None = None, above: float | None = None) -> float:
    """`value` (a number, or a number's text as in a CSV cell) as a finite float, at least
    `minimum` / more than `above`; otherwise the UserError ``name=value: must be a number >= 0``.
    The one reader of numbers in recorded files (a setting's number comes typed, `check_scalar`)."""
    bound = f" >= {minimum:g}" if minimum is not None else f" > {above:g}" if above is not None else ""
    if value is None or value == "":
        raise UserError(f"{name}={value!r}: missing; must be a number{bound}")
    try:
        x = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        x = math.nan
    if not math.isfinite(x) or (minimum is not None and x < minimum) or (above is not None and x <= above):
        why = "negative; " if x < 0 else ""
        raise UserError(f"{name}={value!r}: {why}must be a {'finite ' if bound else ''}number{bound}")
    return x


MISSING_MESSAGE = "missing; every setting is required (the shipped YAML holds the defaults; see --cfg job)"


def required(node: Any, key: str, where: str = "") -> Any:
    """The value of setting `key` of a composed config (or saved run config) `node`.

    A missing key is a one-line UserError instead of a fallback written in code: the
    defaults live in the shipped YAML only. `where` prefixes the key in the message."""
    if node is None or key not in node:
        raise UserError(f"{where}{key}: {MISSING_MESSAGE}")
    return node[key]


def shipped(group: str, name: str) -> dict[str, Any]:
    """The shipped option conf/<group>/<name>.yaml as a plain mapping: every setting of that
    option with its default, for code that builds a config without composing one."""
    from importlib import resources

    text = (resources.files("nasalloc.conf") / group / f"{name}.yaml").read_text(encoding="utf-8")
    return OmegaConf.to_container(OmegaConf.create(text), resolve=True)  # type: ignore[return-value]


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless `condition`; used in dataclass `__post_init__`."""
    if not condition:
        raise ValueError(message)


def require_choice(name: str, value: Any, allowed: typing.Iterable[str], note: str = "") -> None:
    """``ValueError("name='x': allowed: a, b (note)")`` unless `value` is one of `allowed`."""
    allowed = list(allowed)
    require(value in allowed, f"{name}={value!r}: allowed: {', '.join(allowed)}" + (f" ({note})" if note else ""))


# Settings renamed so that one concept has one name, per command: old key (or old group) ->
# new key. Hydra would only say "Could not override" for an old name; the CLI looks here first.
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "calibrate": {"workload": "train"},  # the training function; `workload` is the simulator's curve model
    "run": {"devices.threads_per_slot": "devices.threads_per_rank"},
}
# Modules renamed: an entrypoint naming the old module ("module:function") is refused on the
# command line and translated in a saved config.
RENAMED_MODULES: dict[str, str] = {"nasalloc.execute.workloads": "nasalloc.execute.trainers"}
# Top-level settings added since, per command, with the value that says what an older version
# did (not a default: a new config always has the key from the YAML); a saved config without
# the key gets it, so an old run resumes and validates as it ran.
ADDED_KEYS: dict[str, dict[str, Any]] = {
    "run": {"unshare": False},  # older runs never moved a trial off a shared device
}


def renamed_key(command: str, key: str) -> str | None:
    """The current name of setting `key` of `command` if it (or a group above it) was renamed."""
    for old, new in RENAMED_KEYS.get(command, {}).items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return None


def renamed_module(entrypoint: str) -> str | None:
    """`entrypoint` with a renamed module replaced by its current name; None if not renamed."""
    for old, new in RENAMED_MODULES.items():
        if entrypoint.startswith((old + ".", old + ":")):
            return new + entrypoint[len(old):]
    return None


def upgrade_saved(command: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved config of `command` with renamed keys moved to their current names
    and renamed entrypoint modules replaced; a key present under both names keeps the new one."""
    out = copy.deepcopy(raw)
    for old, new in RENAMED_KEYS.get(command, {}).items():
        *old_path, old_leaf = old.split(".")
        parent = _node_at(out, old_path)
        if parent is None or old_leaf not in parent:
            continue
        value = parent.pop(old_leaf)
        *new_path, new_leaf = new.split(".")
        target = _node_at(out, new_path)
        if target is not None:
            target.setdefault(new_leaf, value)
    for key, value in ADDED_KEYS.get(command, {}).items():
        out.setdefault(key, value)
    train = out.get("train")
    if isinstance(train, dict) and isinstance(train.get("entrypoint"), str):
        train["entrypoint"] = renamed_module(train["entrypoint"]) or train["entrypoint"]
    return out


def _node_at(root: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: Any = root
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None
