"""An MLP on MNIST-1D-style data (Greydanus 2020), generated deterministically in code.

No download: ten smooth template signals of length 40 (fixed by a seed) are each turned
into samples by a random shift, scale, linear trend and correlated noise — the recipe of
MNIST-1D, which makes small models differ clearly in accuracy. 4000 samples: 3000 train,
500 validation, 500 test. Search space: lr, width, depth, momentum.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from nasalloc.execute.api import TrainingContext
from nasalloc.execute.trainers._common import fit, split

LENGTH = 40


@lru_cache(maxsize=2)
def make_data(n: int = 4000, seed: int = 42) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    knots = rng.normal(size=(10, 12))
    grid = np.linspace(0, 11, LENGTH)
    templates = np.stack([np.interp(grid, np.arange(12), k) for k in knots])
    y = rng.integers(0, 10, size=n)
    t = np.linspace(-1, 1, LENGTH)
    x = templates[y]
    x = np.stack([np.roll(row, s) for row, s in zip(x, rng.integers(-8, 9, size=n))])
    x = x * rng.uniform(0.7, 1.3, size=(n, 1)) + rng.normal(0, 0.4, size=(n, 1)) * t
    noise = rng.normal(0, 0.35, size=(n, LENGTH))
    x = x + (noise + np.roll(noise, 1, axis=1)) / 2  # neighbouring samples correlate
    xt = torch.tensor(x, dtype=torch.float32)
    return split(xt, torch.tensor(y, dtype=torch.long), n_val=500, n_test=500)


def build(width: int, depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = LENGTH
    for _ in range(max(1, int(depth))):
        layers += [nn.Linear(d, int(width)), nn.ReLU()]
        d = int(width)
    return nn.Sequential(*layers, nn.Linear(d, 10))


def train(config: dict[str, Any], ctx: TrainingContext) -> None:
    model = build(int(config.get("width", 64)), int(config.get("depth", 2)), int(config.get("seed", 0)) * 7919 + ctx.trial)
    fit(config, ctx, model, make_data())
