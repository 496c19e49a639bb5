"""What the README tells a user matches the code: the one example of the training API, and
what the cost column counts."""

from __future__ import annotations

import ast
import csv
import json
import re
import textwrap
from pathlib import Path

from nasalloc import cli
from nasalloc.execute import api

ROOT = Path(__file__).resolve().parents[1]


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    examples = [b for b in blocks if "def train(" in b]
    assert len(examples) == 1, "the README shows one training function"
    return examples[0]


def _api_example() -> str:
    doc = api.__doc__ or ""
    after = doc.split("::\n\n", 1)[1]
    lines = []
    for line in after.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip() + "\n"


def test_the_readme_and_the_api_show_one_example():
    assert _readme_example() == _api_example()


def test_the_example_uses_only_what_the_training_context_has(tmp_path):
    ctx = api.TrainingContext(rank=0, world_size=1, local_rank=0, device="cpu", trial=0, config={}, start_epoch=0,
                              until_epoch=1, checkpoint_dir=tmp_path, link=None)  # type: ignore[arg-type]
    tree = ast.parse(_api_example())
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id == "ctx"}
    assert used >= {"start_epoch", "until_epoch", "report", "step", "load_checkpoint"}
    assert all(hasattr(ctx, name) for name in used), sorted(n for n in used if not hasattr(ctx, n))
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
             and n.value.id == "Decision"}
    assert all(hasattr(api.Decision, n) for n in names)


SEARCH = ["scheduler=asha", "n_trials=8", "scheduler.max_epochs=3", "profile=digits_cpu", "cluster=single_node",
          "cluster.gpus=2", "cluster.gpus_per_node=2", "allocations=[\"1/2\",1,2]", "adaptive=false", "seeds=3",
          "workers=1", "plots=false", "cost.per_gpu_hour=3.0"]


def test_cluster_billing_makes_cost_proportional_to_makespan(tmp_path, capsys):
    """cost.billing=cluster bills all GPUs for the makespan: cost = price x GPUs x hours, so on
    one cluster size objective=cost recommends what objective=makespan does."""
    chosen = {}
    for objective in ("makespan", "cost"):
        out = tmp_path / objective
        assert cli.main(["recommend", *SEARCH, f"objective={objective}", f"out_dir={out}"]) == 0
        chosen[objective] = json.loads((out / "recommendation.json").read_text())["recommended"]["gpus_per_trial"]
        with open(out / "sweep.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                assert abs(float(row["cost"]) - 3.0 * 2 * float(row["makespan_s"]) / 3600.0) < 1e-12
    assert chosen["cost"] == chosen["makespan"]
    assert "cost: 3 per GPU-hour x all GPUs for the whole makespan (cost.billing=cluster)" in capsys.readouterr().out
