"""A small CNN on scikit-learn's 8x8 handwritten digits (1797 images, shipped as .npz).

Search space (conf/train/digits.yaml): lr (log-uniform), width (channels of the first conv
layer, the second has twice as many), momentum. Metric: validation accuracy (300 images);
test accuracy (297 images) goes into the trace as test_metric. An epoch over the 1197
training images takes ~0.1-0.3 s on one CPU core.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasalloc.execute.api import TrainingContext
from nasalloc.execute.trainers._common import fit, split

DATA = Path(__file__).resolve().parents[1] / "data" / "digits.npz"


@lru_cache(maxsize=1)
def load_data() -> dict[str, torch.Tensor]:
    with np.load(DATA) as f:
        x = torch.tensor(f["images"], dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(f["labels"], dtype=torch.long)
    return split(x, y, n_val=300, n_test=297)


def build(width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    w = int(width)
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.ReLU(),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * 16, 10),
    )


def train(config: dict[str, Any], ctx: TrainingContext) -> None:
    model = build(int(config.get("width", 16)), int(config.get("seed", 0)) * 7919 + ctx.trial)
    fit(config, ctx, model, load_data())
