"""A compute-heavy MLP on random tensors, for timing on GPUs (runs tiny on CPU too).

Inputs are Gaussian vectors of size ``dim``; labels come from a fixed random teacher network,
so accuracy does improve with training and the scheduler has something to rank. The size
knobs (``n_samples``, ``dim``, ``width``, ``depth``, ``batch_size``) set the work per step;
the defaults in conf/train/synthetic.yaml are CPU-sized, raise them on a GPU.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from torch import nn

from nasalloc.execute.api import TrainingContext
from nasalloc.execute.trainers._common import fit, split


@lru_cache(maxsize=2)
def make_data(n: int, dim: int, seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w1 = torch.randn(dim, 32, generator=g) / dim**0.5
    w2 = torch.randn(32, 10, generator=g)
    y = (torch.tanh(x @ w1) @ w2).argmax(1)
    return split(x, y, n_val=max(10, n // 10), n_test=max(10, n // 10))


def build(dim: int, width: int, depth: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = dim
    for _ in range(max(1, depth)):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, 10))


def train(config: dict[str, Any], ctx: TrainingContext) -> None:
    dim = int(config.get("dim", 64))
    model = build(dim, int(config.get("width", 256)), int(config.get("depth", 3)), int(config.get("seed", 0)) * 7919 + ctx.trial)
    fit(config, ctx, model, make_data(int(config.get("n_samples", 4096)), dim))
