"""Turn a composed Hydra/OmegaConf node into a typed, validated dataclass, once, at the entry.

OmegaConf does the structural work (unknown keys, type conversion); each dataclass checks its
own ranges in `__post_init__` by raising `ValueError`. Both kinds of failure come out as one
`UserError` line that names the full key, e.g. ``scheduler.eta=1: must be an integer >= 2``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nasalloc.sim.errors import UserError

T = TypeVar("T")


def to_typed(schema: type[T], node: Any, key: str) -> T:
    """Validate `node` (a DictConfig or plain mapping) against dataclass `schema`.

    `key` is where the node sits in the whole config (``"scheduler"``), used in messages.
    Range checks live in the dataclass's `__post_init__` and raise
    ``ValueError("field: message")``; the field name is prefixed with `key` here.
    """
    if node is None:
        node = {}
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise UserError(f"{key}: expected a mapping of settings, got {node!r}")
    allowed = [f.name for f in dataclasses.fields(schema)]  # type: ignore[arg-type]
    unknown = sorted(set(node) - set(allowed))
    if unknown:
        raise UserError(f"{key}.{unknown[0]}: unknown setting; allowed: {', '.join(allowed)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        full_key = getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?"
        value = node.get(str(full_key).split(".")[0], None) if isinstance(full_key, str) else None
        msg = str(getattr(exc, "msg", exc)).splitlines()[0]
        shown = f"={value!r}" if value is not None else ""
        raise UserError(f"{key}.{full_key}{shown}: {msg}") from None
    except ValueError as exc:
        text = str(exc)
        raise UserError(f"{key}.{text}" if text and not text.startswith(key) else text) from None


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless `condition`; used in dataclass `__post_init__`."""
    if not condition:
        raise ValueError(message)
