"""Search spaces: what a scheduler samples new trial configurations from.

A space is a mapping of parameter name -> domain, written in config as

    space:
      lr:        {type: float, low: 1.0e-4, high: 0.1, log: true}
      width:     {type: int, low: 16, high: 256, log: true}
      optimizer: {type: categorical, choices: [sgd, adam]}

Sampling always goes through a `numpy.random.Generator` handed in by the caller (one per run,
derived from the run's seed), never the global numpy state. Model-based searchers (BOHB) work
in the unit cube: `to_unit` / `from_unit` map configurations to vectors in [0, 1]^d, with a
categorical stored as its choice index (see `Domain.is_categorical`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nasalloc.sim.errors import UserError

Config = dict[str, Any]

_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Domain:
    """One parameter's range; `low`/`high` are inclusive, `log` samples log-uniformly."""

    name: str
    type: str
    low: float = 0.0
    high: float = 1.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    # The unit-cube mapping's constants, computed once: every trial's configuration goes
    # through `to_unit` / `from_unit` (the simulator's workload, BOHB), and recomputing two
    # logarithms per call was a visible share of a simulation. Same arithmetic, same floats.
    _categorical: bool = field(init=False, repr=False, compare=False)
    _lo: float = field(init=False, repr=False, compare=False)  # ends of the mapped range (an int's widened by 1/2)
    _hi: float = field(init=False, repr=False, compare=False)
    _origin: float = field(init=False, repr=False, compare=False)  # log(lo) on a log scale, else lo
    _span: float = field(init=False, repr=False, compare=False)  # log(hi) - log(lo) on a log scale, else hi - lo

    def __post_init__(self) -> None:
        lo, hi = float(self.low), float(self.high)
        if self.type == "int":  # widen by half a step so every integer gets an equal share
            lo, hi = lo - 0.5, hi + 0.5
            if self.log:
                lo = max(lo, 0.5)
        if self.log and self.type != "categorical":
            origin, span = math.log(lo), math.log(hi) - math.log(lo)
        else:
            origin, span = lo, hi - lo
        for key, value in (("_categorical", self.type == "categorical"), ("_lo", lo), ("_hi", hi), ("_origin", origin),
                           ("_span", span)):
            object.__setattr__(self, key, value)

    @property
    def is_categorical(self) -> bool:
        return self._categorical

    def sample(self, rng: np.random.Generator) -> Any:
        if self._categorical:
            return self.choices[int(rng.integers(len(self.choices)))]
        return self.from_unit(float(rng.random()))

    def to_unit(self, value: Any) -> float:
        """Position of `value` in [0, 1]; for a categorical, its choice index (as float)."""
        if self._categorical:
            return float(self.choices.index(value))
        if self._hi == self._lo:
            return 0.5
        if self.log:
            return (math.log(float(value)) - self._origin) / self._span
        return (float(value) - self._lo) / self._span

    def from_unit(self, u: float) -> Any:
        """Inverse of `to_unit`; for a categorical, `u` is rounded to a choice index."""
        if self._categorical:
            return self.choices[int(min(max(round(u), 0), len(self.choices) - 1))]
        u = min(max(u, 0.0), 1.0)
        if self.log:
            x = math.exp(self._origin + u * self._span)
        else:
            x = self._lo + u * self._span
        if self.type == "int":
            return int(min(max(round(x), int(self.low)), int(self.high)))
        return x


class SearchSpace:
    """An ordered set of domains; iteration order is the config's key order."""

    def __init__(self, domains: list[Domain]):
        self.domains = domains
        self.names = [d.name for d in domains]

    def __len__(self) -> int:
        return len(self.domains)

    def sample(self, rng: np.random.Generator) -> Config:
        return {d.name: d.sample(rng) for d in self.domains}

    def to_unit(self, config: Mapping[str, Any]) -> np.ndarray:
        return np.array([d.to_unit(config[d.name]) for d in self.domains], dtype=float)

    def from_unit(self, vector: np.ndarray) -> Config:
        return {d.name: d.from_unit(float(u)) for d, u in zip(self.domains, vector)}

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None, key: str = "space") -> SearchSpace:
        """Build from the config mapping shown in the module docstring; bad entries -> UserError."""
        if not node:
            raise UserError(f"{key}: the search space is empty; give at least one parameter")
        domains = []
        for name, spec in node.items():
            where = f"{key}.{name}"
            if not isinstance(spec, Mapping):
                raise UserError(f"{where}: expected {{type: float|int|categorical, ...}}, got {spec!r}")
            kind = spec.get("type")
            if kind not in _TYPES:
                raise UserError(f"{where}.type={kind!r}: allowed: {', '.join(_TYPES)}")
            allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
            extra = sorted(set(spec) - allowed)
            if extra:
                raise UserError(f"{where}.{extra[0]}: unknown for a {kind} parameter; allowed: {', '.join(sorted(allowed))}")
            if kind == "categorical":
                choices = spec.get("choices")
                if not isinstance(choices, (list, tuple)) or len(choices) == 0:
                    raise UserError(f"{where}.choices: must be a non-empty list")
                domains.append(Domain(str(name), kind, choices=tuple(choices)))
                continue
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{where}: needs numeric low and high") from None
            log = bool(spec.get("log", False))
            if not low <= high:
                raise UserError(f"{where}: low={low} must not exceed high={high}")
            if log and low <= 0:
                raise UserError(f"{where}.low={low}: a log-scaled range must be positive")
            if kind == "int" and (low != int(low) or high != int(high)):
                raise UserError(f"{where}: an int parameter needs integer low and high")
            domains.append(Domain(str(name), kind, low=low, high=high, log=log))
        return cls(domains)
