"""What the README and docs/ tell a user matches the code: the one example of the training API,
what the cost column counts, every command shown (run here in the order shown, or listed with
the reason it cannot run here), every relative link, and measured figures quoted from
docs/results.md."""

from __future__ import annotations

import ast
import csv
import json
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

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


# ---- The user guide: every command runs, every link resolves, a quoted figure is the figure ----

PAGES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
RESULTS = ROOT / "docs" / "results.md"

# Documented speed-ups: overrides the test adds to a command, each written on the same page as
# the command (checked below), so what runs is what a reader in a hurry would run.
QUICK_CALIBRATION = ("calibration.time_limit_s=2", "calibration.configs=2", "calibration.startup_jobs=1",
                     "calibration.bootstrap=5")
SPEED_UPS: dict[str, tuple[str, ...]] = {
    "nasalloc recommend": ("seeds=1", "plots=false"),
    "nasalloc calibrate calibration.cpu_slots=2 out_dir=loop/calibrate": QUICK_CALIBRATION,
    "nasalloc calibrate calibration.cpu_slots=2 calibration.gpus_per_trial=[1,2] out_dir=cal": QUICK_CALIBRATION,
}

# Commands the docs show that cannot run inside this test, and why.
NOT_HERE: dict[str, str] = {
    "python3 -m venv .venv": "makes a virtual environment: .ci/run does it from a clean clone",
    ". .venv/bin/activate": "activates that environment: .ci/run does it",
    "pip install -c constraints-cpu.txt -e .": "installs from the package registry: .ci/run installs the same with [test,ray]",
    'pip install -c constraints-cpu.txt -e ".[test,ray]"': "installs from the package registry: .ci/run does it",
    "pip install -e .": "installs the CUDA build of torch on a GPU machine",
    "python -m pytest": "the whole suite, which this test is part of: .ci/run runs it",
    'python -m pytest -q -m "not slow"': "runs the suite from inside the suite",
    "python -m pytest -q tests/test_schedulers.py": "runs a test file from inside the suite",
    "INSTALL=0 bash scripts/gpu_check.sh": "needs an NVIDIA GPU",
    "DEVICE=cpu bash scripts/gpu_check.sh": "90 s of CPU: tests/test_gpu_check.py runs this dry run",
    """ray start --head --resources='{"cpu_slot": 2}'""": "starts a Ray head node for a cluster of several machines",
    """ray start --address=HEAD:6379 --resources='{"cpu_slot": 2}'""": "needs a Ray cluster's head address",
    "nasalloc run backend=ray ray.address=auto storage=/shared/nasalloc gpus_per_trial=[1,2,4]":
        "needs a Ray cluster address and shared storage (tests/test_ray_backend.py runs a local cluster)",
    "nasalloc calibrate backend=ray ray.address=auto out_dir=/shared/nasalloc/calibrate":
        "needs a Ray cluster address and shared storage (tests/test_ray_backend.py calibrates on a local cluster)",
    "nasalloc run backend=ray ray.address=auto profile=/shared/nasalloc/calibrate/profile.yaml gpus_per_trial=[1,2,4]":
        "needs a Ray cluster address and the profile calibrated there",
}


@dataclass
class Block:
    info: str  # the fence's info string ("sh", "csv file=steps.csv", ...); "indented" for an indented block
    lines: list[str]


def _blocks(text: str) -> list[Block]:
    """Fenced code blocks and indented (4-space) code blocks outside fences, in page order."""
    blocks: list[Block] = []
    fence: Block | None = None
    previous = ""
    for line in text.splitlines():
        if fence is not None:
            if line.startswith("```"):
                blocks.append(fence)
                fence = None
            else:
                fence.lines.append(line)
        elif line.startswith("```"):
            fence = Block(line[3:].strip(), [])
        elif line.startswith("    ") and line.strip() and not previous.strip():
            blocks.append(Block("indented", [line.strip()]))
        elif line.startswith("    ") and line.strip() and blocks and blocks[-1].info == "indented" and previous.startswith("    "):
            blocks[-1].lines.append(line.strip())
        previous = line
    assert fence is None, "an unclosed code fence"
    return blocks


def _commands(text: str) -> list[str]:
    """The commands a page shows: lines of `sh` and indented blocks (continuations joined), each
    `a && b` split into its parts."""
    out: list[str] = []
    for block in _blocks(text):
        if block.info not in ("sh", "indented"):
            continue
        joined = "\n".join(block.lines).replace("\\\n", " ")
        for line in joined.splitlines():
            line = " ".join(line.split())
            if line and not line.startswith("#"):
                out.extend(part.strip() for part in line.split(" && "))
    return out


def _files(text: str) -> dict[str, str]:
    """Files a page shows as `lang file=NAME` blocks, which its commands then read."""
    out = {}
    for block in _blocks(text):
        match = re.search(r"\bfile=(\S+)", block.info)
        if match:
            out[match.group(1)] = "\n".join(block.lines) + "\n"
    return out


def _all_commands() -> dict[str, list[str]]:
    return {page.name: _commands(page.read_text(encoding="utf-8")) for page in PAGES}


def test_every_command_is_run_or_says_why_not():
    shown = {c for cmds in _all_commands().values() for c in cmds}
    unknown = sorted(c for c in shown if c not in NOT_HERE and not c.startswith(("nasalloc ", "python benchmarks/"))
                     and c != "nasalloc")
    assert not unknown, f"commands the docs show that no test runs and NOT_HERE does not explain: {unknown}"
    stale = sorted(c for c in [*NOT_HERE, *SPEED_UPS] if c not in shown)
    assert not stale, f"listed in this test but no longer in the docs: {stale}"


def test_every_speed_up_is_documented_beside_its_command():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for command in _commands(text):
            for override in SPEED_UPS.get(command, ()):
                assert override in text, f"{page.name}: {override} is added to `{command}` but the page does not show it"


def _run_page(page: Path, work: Path, monkeypatch) -> None:
    text = page.read_text(encoding="utf-8")
    for folder in ("tests", "benchmarks"):  # the fixtures and scripts, by the relative paths the docs show
        (work / folder).symlink_to(ROOT / folder)
    for name, content in _files(text).items():
        (work / name).write_text(content, encoding="utf-8")
    monkeypatch.chdir(work)
    for command in _commands(text):
        if command in NOT_HERE:
            continue
        args = shlex.split(command) + list(SPEED_UPS.get(command, ()))
        if args[0] == "nasalloc":
            assert cli.main(args[1:]) == 0, f"{page.name}: `{command}` failed"
        else:
            proc = subprocess.run([sys.executable, *args[1:]], cwd=work, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, f"{page.name}: `{command}` failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


RUNNABLE = [p for p in PAGES if any(c not in NOT_HERE for c in _commands(p.read_text(encoding="utf-8")))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=[p.name for p in RUNNABLE])
def test_the_commands_of_a_page_run_in_order(page, tmp_path, monkeypatch, capsys):
    """Each page's commands run in one fresh folder in the order shown, so a later command reads
    what an earlier one wrote (the README's loop)."""
    _run_page(page, tmp_path, monkeypatch)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    inside = False
    out = set()
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            out.add(_slug(line.lstrip("#")))
    return out


LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _links(text: str) -> list[tuple[str, str]]:
    """Markdown links outside code blocks and inline code."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return LINK.findall(prose)


def _section(text: str, anchor: str) -> str:
    """The text under the heading with this anchor, up to the next heading of any level."""
    lines, taking, out = text.splitlines(), False, []
    for line in lines:
        if line.startswith("#"):
            taking = _slug(line.lstrip("#")) == anchor
        elif taking:
            out.append(line)
    return "\n".join(out)


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        for _, target in _links(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and anchor not in _anchors(dest.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, broken
    assert len([1 for p in PAGES for _ in _links(p.read_text(encoding="utf-8"))]) > 20  # the parser finds them


def _results_lines() -> set[str]:
    return {" ".join(line.split()) for b in _blocks(RESULTS.read_text(encoding="utf-8")) for line in b.lines}


def test_a_figure_quoted_elsewhere_is_the_figure_in_results():
    """Measured figures live in docs/results.md. A page that shows measured output shows lines of
    it verbatim, and a link into results.md whose text holds a number holds that section's number."""
    recorded = _results_lines()
    results = RESULTS.read_text(encoding="utf-8")
    differ = []
    for page in PAGES:
        if page == RESULTS:
            continue
        text = page.read_text(encoding="utf-8")
        for block in _blocks(text):
            if block.info != "text":
                continue
            for line in block.lines:
                if re.search(r"\d", line) and " ".join(line.split()) not in recorded:
                    differ.append(f"{page.name}: {line.strip()[:80]}")
        for label, target in _links(text):
            path, _, anchor = target.partition("#")
            if path.endswith("results.md") and re.search(r"\d", label):
                if label not in _section(results, anchor):
                    differ.append(f"{page.name}: [{label}]({target}) is not what that section says")
    assert not differ, differ


def test_results_name_a_date_commit_and_command_for_every_figure():
    """Every section of results.md says when (date), at which commit, and how (a command)."""
    text = RESULTS.read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert len(sections) >= 10
    for section in sections:
        title = section.splitlines()[0]
        assert re.search(r"Date 20\d\d-\d\d-\d\d, commit `[0-9a-f]{7}`", section), title
        assert "Command" in section, title
    for script in re.findall(r"python (benchmarks/\S+\.py)", text):
        assert (ROOT / script).is_file(), script


def test_readme_and_docs_hold_no_dated_notes_or_issue_numbers():
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        if page == RESULTS:
            continue
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), page.name
        assert not re.search(r"\bissue \d+|#\d+\b|load average", text, flags=re.I), page.name
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
