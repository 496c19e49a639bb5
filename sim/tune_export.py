"""Handing the answer back: the recommended allocation in Ray Tune's and Syne Tune's terms.

Most users of nasalloc's answer run their searches with Ray Tune or Syne Tune, so `recommend`
writes what each of them needs to run the recommended allocation:

- `ray_tune.py`, a short snippet (Ray Tune 2.x API) with the search space, metric, scheduler
  and trial count of the simulated search and the allocation as each trial's resources:
  - k = 1/m (m trials share a GPU): a fractional GPU, ``{"cpu": 1, "gpu": 1/m}``;
  - k = 1: ``{"cpu": 1, "gpu": 1}``;
  - k > 1 (data-parallel over k GPUs): a ``PlacementGroupFactory`` with a head bundle and one
    bundle per rank, ``STRICT_PACK`` (one node) up to a node's GPUs, ``PACK`` (whole nodes)
    beyond: the placement group Ray Train's ``ScalingConfig(num_workers=k, use_gpu=True)``
    asks for, which starts the k DDP ranks;
  - an allocation that changes during a trial (a per-rung schedule) cannot be said in Ray
    Tune, whose trials keep the resources they started with: the file says so, points to
    `nasalloc run`, and configures the best fixed allocation of the same scheduler instead
    (when the sweep had one).
  The snippet is valid Python (tests `compile()` it); it runs with Ray installed, with a
  stand-in `train_fn` to replace by the user's training.
- Syne Tune: `n_workers`, the number of trials that run at once (N / k for k >= 1 with
  ``LocalBackend(num_gpus_per_trial=k)``, N x m for k = 1/m with one GPU per trial in
  rotation), in recommendation.json and the printed verdict.
"""

from __future__ import annotations

import json
from fractions import Fraction
from typing import Any

from nasalloc.sim.cluster import Allocation, ClusterSpec
from nasalloc.sim.space import Domain, SearchSpace


def concurrent_trials(k: Fraction, cluster: ClusterSpec) -> int:
    """Trials that run at once at static allocation k on the whole cluster."""
    return int(cluster.gpus * k.denominator) if k < 1 else int(cluster.gpus // k)


def syne_tune_settings(alloc: Allocation, cluster: ClusterSpec) -> dict[str, Any]:
    """Syne Tune's `n_workers` (and the LocalBackend GPUs per trial) the allocation implies;
    `n_workers` None with a note for an allocation that changes during a trial."""
    if not alloc.is_static:
        return {"n_workers": None, "num_gpus_per_trial": None,
                "note": f"gpus_per_trial={alloc}: Syne Tune keeps a trial's GPUs fixed; run it with `nasalloc run`"}
    k = alloc.schedule[0]
    n = concurrent_trials(k, cluster)
    if k < 1:
        return {"n_workers": n, "num_gpus_per_trial": 1,
                "note": f"{k.denominator} trials per GPU: LocalBackend(rotate_gpus=True) places them on the {cluster.gpus} GPUs in turn"}
    return {"n_workers": n, "num_gpus_per_trial": int(k), "note": f"LocalBackend(num_gpus_per_trial={int(k)})"}


def _domain(d: Domain) -> str:
    if d.is_categorical:
        return f"tune.choice({list(d.choices)!r})"
    if d.type == "int":
        low, high = int(d.low), int(d.high) + 1  # Ray's randint excludes the upper bound
        return f"tune.{'lograndint' if d.log else 'randint'}({low}, {high})"
    return f"tune.{'loguniform' if d.log else 'uniform'}({d.low!r}, {d.high!r})"


def _scheduler(cfg: Any) -> tuple[list[str], str, list[str]]:
    """(imports, the TuneConfig arguments for the scheduler, comments on what differs)."""
    name = cfg.name
    if name == "asha":
        notes = []
        if cfg.variant != "stopping":
            notes.append("# nasalloc simulated ASHA's promotion variant; Ray Tune ships the stopping variant only.")
        if cfg.rule != "ray":
            notes.append("# nasalloc simulated Syne Tune's rank rule; Ray Tune's ASHA stops by its quantile rule (rule=ray).")
        return (["from ray.tune.schedulers import ASHAScheduler"],
                f"scheduler=ASHAScheduler(time_attr=\"training_iteration\", max_t={cfg.max_epochs}, "
                f"grace_period={cfg.min_epochs}, reduction_factor={cfg.eta}, brackets={cfg.brackets})", notes)
    if name == "hyperband":
        return (["from ray.tune.schedulers import HyperBandScheduler"],
                f"scheduler=HyperBandScheduler(time_attr=\"training_iteration\", max_t={cfg.max_epochs}, "
                f"reduction_factor={cfg.eta})", ["# Ray's HyperBand keeps ceil(n/eta) per round (nasalloc keep=ceil)."])
    if name == "bohb":
        return (["from ray.tune.schedulers import HyperBandForBOHB", "from ray.tune.search.bohb import TuneBOHB"],
                f"scheduler=HyperBandForBOHB(time_attr=\"training_iteration\", max_t={cfg.max_epochs}, "
                f"reduction_factor={cfg.eta}), search_alg=TuneBOHB()",
                ["# TuneBOHB needs: pip install hpbandster ConfigSpace"])
    return [], "scheduler=None", ["# random search: no early stopping (Ray's default FIFO scheduler)."]


def _resources(k: Fraction, cluster: ClusterSpec) -> tuple[str, list[str]]:
    """(the with_resources argument, comments) for static allocation k."""
    if k < 1:
        return (f"{{\"cpu\": 1, \"gpu\": {float(k)!r}}}",
                [f"# {k.denominator} trials share each GPU (fractional GPU): each must fit in 1/{k.denominator} of its memory."])
    if k == 1:
        return "{\"cpu\": 1, \"gpu\": 1}", ["# one GPU per trial."]
    n = int(k)
    strategy = "STRICT_PACK" if n <= cluster.node_size else "PACK"
    where = "inside one node" if n <= cluster.node_size else f"on {n // cluster.node_size} whole nodes"
    return (f"tune.PlacementGroupFactory([{{\"CPU\": 1}}] + [{{\"CPU\": 1, \"GPU\": 1}}] * {n}, strategy=\"{strategy}\")",
            [f"# {n} GPUs per trial {where}: a head bundle and one bundle per DDP rank, the placement group",
             f"# Ray Train's ScalingConfig(num_workers={n}, use_gpu=True) asks for; start the ranks with",
             "# ray.train.torch.TorchTrainer inside train_fn, or use the trainer itself as the trainable."])


def ray_tune_snippet(*, alloc: Allocation, scheduler: Any, cluster: ClusterSpec, space: SearchSpace, metric: str,
                     mode: str, headline: str, fixed: Allocation | None = None, fixed_note: str = "") -> str:
    """`ray_tune.py` for `alloc` (module docstring). `headline`: what nasalloc predicted;
    `fixed`: the fixed allocation to configure when `alloc` changes during a trial."""
    lines = [
        f"# Ray Tune with the allocation nasalloc recommends: {headline}",
        "# Written by `nasalloc recommend` for Ray Tune 2.x. Replace train_fn with your training; it must",
        f"# call tune.report({{{json.dumps(metric)}: ...}}) once per epoch.",
    ]
    run = alloc
    if not alloc.is_static:
        lines += [
            "#",
            f"# gpus_per_trial={alloc} changes a trial's GPUs during the trial. Ray Tune cannot express that:",
            "# a trial keeps the resources it started with (ResourceChangingScheduler re-plans only from a",
            "# checkpoint, by its own rule). Run this allocation with nasalloc itself:",
            f"#     nasalloc run gpus_per_trial={alloc} scheduler={scheduler.name} ...",
        ]
        if fixed is None:
            return "\n".join(lines) + "\n"
        lines += [f"# Below: the best fixed allocation for {scheduler.name} in the same sweep, k={fixed}{fixed_note}."]
        run = fixed
    k = run.schedule[0]
    imports, sched_args, sched_notes = _scheduler(scheduler)
    resources, res_notes = _resources(k, cluster)
    space_lines = [f"    {json.dumps(d.name)}: {_domain(d)}," for d in space.domains]
    lines += [
        "",
        "from ray import tune",
        *imports,
        "",
        "",
        "def train_fn(config):",
        "    \"\"\"Stand-in training: replace with yours (one tune.report per epoch).\"\"\"",
        f"    for epoch in range(1, {scheduler.max_epochs} + 1):",
        f"        tune.report({{{json.dumps(metric)}: 0.0, \"epoch\": epoch}})",
        "",
        "",
        "# the search space nasalloc simulated (workload.space); put your own here",
        "param_space = {",
        *space_lines,
        "}",
        *res_notes,
        f"trainable = tune.with_resources(train_fn, {resources})",
        *sched_notes,
        "tuner = tune.Tuner(",
        "    trainable,",
        "    param_space=param_space,",
        f"    tune_config=tune.TuneConfig(metric={json.dumps(metric)}, mode={json.dumps(mode)}, num_samples={scheduler.n_trials},",
        f"                                max_concurrent_trials={concurrent_trials(k, cluster)},",
        f"                                {sched_args}),",
        ")",
        "",
        "if __name__ == \"__main__\":",
        "    results = tuner.fit()",
        "    print(results.get_best_result().config)",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["concurrent_trials", "ray_tune_snippet", "syne_tune_settings"]
