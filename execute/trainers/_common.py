"""The training loop the built-in training functions share: DDP wrapping, sharding, report, resume.

Sharding is manual and deterministic: each epoch's permutation comes from (seed, epoch), so
every rank agrees on it without communication and a resumed trial sees exactly the batches
it would have seen had it never paused. ``scaling`` picks what stays fixed when a trial gets
more ranks: ``strong`` keeps the global batch (each rank takes batch_size / world_size),
``weak`` keeps the per-rank batch (the global batch grows with k).
"""

from __future__ import annotations

from typing import Any

import torch
import torch._dynamo  # noqa: F401 - the first optimizer imports it lazily (~1.5 s); pay it when workers preload
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nasalloc.execute.api import Decision, TrainingContext


def shard(n: int, batch_size: int, ctx: TrainingContext, epoch: int, seed: int, scaling: str) -> list[torch.Tensor]:
    """This rank's index batches for one epoch (same number of batches on every rank), on the
    rank's device.

    The permutation is drawn on the CPU (a CPU generator gives the same batches on every
    device) and moved to the device once per epoch: indexing GPU data with a CPU index tensor
    would copy the index to the GPU, and wait for it, at every step.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).to(ctx.device)
    world, rank = ctx.world_size, ctx.rank
    per_rank = max(1, batch_size // world) if scaling == "strong" else batch_size
    global_batch = per_rank * world
    batches = []
    for start in range(0, n - global_batch + 1, global_batch):
        chunk = perm[start : start + global_batch]
        batches.append(chunk[rank * per_rank : (rank + 1) * per_rank])
    return batches


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / max(1, len(y))


def fit(config: dict[str, Any], ctx: TrainingContext, model: nn.Module, data: dict[str, torch.Tensor]) -> None:
    """Train `model` on data["x_train"/"y_train"], report validation accuracy each epoch.

    Config keys used: lr, momentum (0.9), weight_decay (0), batch_size (32), scaling
    (strong), seed (0). test accuracy goes into the trace as ``test_metric``.
    """
    device = ctx.device
    seed = int(config.get("seed", 0))
    model = model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=float(config["lr"]), momentum=float(config.get("momentum", 0.9)),
                          weight_decay=float(config.get("weight_decay", 0.0)))
    state = ctx.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
    net: nn.Module = model
    if dist.is_initialized() and dist.get_world_size() > 1:
        net = nn.parallel.DistributedDataParallel(model)
    x, y = data["x_train"].to(device), data["y_train"].to(device)
    xv, yv = data["x_val"].to(device), data["y_val"].to(device)
    xt, yt = data["x_test"].to(device), data["y_test"].to(device)
    batch_size, scaling = int(config.get("batch_size", 32)), str(config.get("scaling", "strong"))
    for epoch in range(ctx.start_epoch + 1, ctx.until_epoch + 1):
        for idx in shard(len(y), batch_size, ctx, epoch, seed, scaling):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
            ctx.step()
        val = accuracy(model, xv, yv) if ctx.rank == 0 else 0.0
        test = accuracy(model, xt, yt) if ctx.rank == 0 else 0.0
        decision = ctx.report(epoch, val, state=lambda: {"model": model.state_dict(), "opt": opt.state_dict()},
                              test_metric=test)
        if decision is not Decision.CONTINUE:
            return


def split(x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fixed train/val/test split (the permutation depends only on `seed`)."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = len(y) - n_val - n_test
    return {
        "x_train": x[:n_train], "y_train": y[:n_train],
        "x_val": x[n_train : n_train + n_val], "y_val": y[n_train : n_train + n_val],
        "x_test": x[n_train + n_val :], "y_test": y[n_train + n_val :],
    }
