"""Search schedulers ("when to stop / pause / promote") and searchers ("what to try").

`make_scheduler` is the one way the simulator, the executor and the tests build them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nasalloc.sim.config import to_typed
from nasalloc.sim.errors import UserError
from nasalloc.sim.schedulers.base import (
    FINISHED,
    WAIT,
    Ask,
    Decision,
    Job,
    RandomSearcher,
    Scheduler,
    Searcher,
    Step,
    Trial,
    TrialStatus,
    rung_index,
)
from nasalloc.sim.schedulers.asha import Asha, AshaConfig
from nasalloc.sim.schedulers.bohb import BohbConfig, KDESearcher, make_bohb
from nasalloc.sim.schedulers.hyperband import HyperBand, HyperBandConfig
from nasalloc.sim.schedulers.random_search import RandomConfig, RandomSearch
from nasalloc.sim.space import SearchSpace

# name -> (config dataclass, builder(cfg, space, rng) -> Scheduler)
_REGISTRY: dict[str, tuple[type, Any]] = {
    "random": (RandomConfig, lambda cfg, space, rng: RandomSearch(cfg, RandomSearcher(space, rng))),
    "asha": (AshaConfig, lambda cfg, space, rng: Asha(cfg, RandomSearcher(space, rng), rng)),
    "hyperband": (HyperBandConfig, lambda cfg, space, rng: HyperBand(cfg, RandomSearcher(space, rng))),
    "bohb": (BohbConfig, make_bohb),
}


def scheduler_names() -> list[str]:
    return sorted(_REGISTRY)


def scheduler_config(node: Any, key: str = "scheduler") -> Any:
    """Validate a scheduler config node into its typed dataclass (UserError on bad values)."""
    name = node.get("name") if hasattr(node, "get") else None
    if name not in _REGISTRY:
        raise UserError(f"{key}.name={name!r}: unknown scheduler; allowed: {', '.join(scheduler_names())}")
    return to_typed(_REGISTRY[name][0], node, key)


def make_scheduler(cfg: Any, space: SearchSpace, rng: np.random.Generator) -> Scheduler:
    """Build a scheduler from a typed config (see `scheduler_config`)."""
    return _REGISTRY[cfg.name][1](cfg, space, rng)


__all__ = [
    "FINISHED", "WAIT", "Ask", "Decision", "Job", "RandomSearcher", "Scheduler", "Searcher",
    "Step", "Trial", "TrialStatus", "rung_index", "make_scheduler", "scheduler_config", "scheduler_names",
    "Asha", "AshaConfig", "HyperBand", "HyperBandConfig", "BohbConfig", "KDESearcher",
]
