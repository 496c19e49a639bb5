"""scripts/gpu_check.sh gets one try on a lent GPU machine, so it must not rot between loans.

Its dry run (DEVICE=cpu: the same steps at tiny sizes on one CPU slot, without the install
from carried wheels) runs here: calibrate, recommend, the runs at k = 1/4, 1/2, 1 and
[1/2, 1] with their failed == 0 checks, validate, and the one archive that comes back.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out"), "TMPDIR": str(tmp_path), **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


@pytest.mark.parametrize("env, message", [
    ({"DEVICE": "tpu"}, "gpu_check: DEVICE=tpu: allowed: cuda, cpu"),
    ({"DEVICE": "cuda", "WHEELS": "/nonexistent"}, "gpu_check: no wheels in /nonexistent: run scripts/gpu_prepare.sh"),
    ({"DEVICE": "cpu", "BUDGET_SCALE": "0"}, "gpu_check: BUDGET_SCALE=0: allowed: a whole number >= 1"),
])
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, env: dict[str, str], message: str) -> None:
    proc = _run(tmp_path, 30, **env)
    assert proc.returncode == 2 and proc.stderr.startswith(message) and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_out_of_time_stops_with_a_message_and_still_returns_the_archive(tmp_path: Path) -> None:
    proc = _run(tmp_path, 30, DEVICE="cpu", TOTAL_S="25")
    assert proc.returncode == 1
    assert "GPU CHECK FAILED: no time left for step 'python-facts'" in proc.stdout
    with tarfile.open(tmp_path / "out" / "gpu_check.tar.gz") as tar:
        assert "./gpu_check.log" in tar.getnames()
    assert not list(tmp_path.glob("nasalloc-gpu-check.*"))  # the work folder is removed


@pytest.mark.parametrize("mode, expected", [
    ("Exclusive_Process", "NOTE: compute_mode=Exclusive_Process: the GPU admits one process at a time"),
    ("Prohibited", "GPU CHECK FAILED: compute_mode=Prohibited"),
])
def test_the_gpu_facts_are_read_and_an_exclusive_gpu_is_named(tmp_path: Path, mode: str, expected: str) -> None:
    """The cuda branch up to the first Python step, with a stand-in nvidia-smi (no GPU here:
    the check then stops at its first step that needs one, with a clear line)."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU is here; this checks the stand-in's path")
    bin_dir, wheels = tmp_path / "bin", tmp_path / "wheels"
    bin_dir.mkdir()
    wheels.mkdir()
    (wheels / "hydra_core-1.3.8-py3-none-any.whl").write_bytes(b"")
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncase \"$*\" in *--query-gpu*) echo 'NVIDIA H200, 143771 MiB, 580.159.04, {mode}, Disabled' ;;"
                   " *) echo 'NVIDIA-SMI 580.159.04' ;; esac\n")
    smi.chmod(0o755)
    proc = _run(tmp_path, 60, DEVICE="cuda", WHEELS=str(wheels), PATH=f"{bin_dir}:{os.environ['PATH']}")
    assert proc.returncode == 1
    assert f"GPU 0: NVIDIA H200, 143771 MiB, 580.159.04, {mode}, Disabled" in proc.stdout
    assert expected in proc.stdout
    if mode == "Exclusive_Process":  # it goes on, and stops where torch finds no GPU
        assert "GPU CHECK FAILED: step 'python-facts' exited with status 1" in proc.stdout
        assert "torch sees no CUDA device" in proc.stdout
    assert (tmp_path / "out" / "gpu_check.tar.gz").is_file()


@pytest.mark.slow
@pytest.mark.timeout(2000)
def test_the_dry_run_on_cpu_passes_and_returns_one_small_archive(tmp_path: Path) -> None:
    # The step budgets are the GPU machine's; a busy 2-core machine (load 20) ran one past
    # its 35 s, so here they are stretched: this test checks the steps, not the machine's speed.
    proc = _run(tmp_path, 1900, DEVICE="cpu", BUDGET_SCALE="8", TOTAL_S="1800")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "GPU CHECK PASSED (cpu)" in proc.stdout
    out = tmp_path / "out"
    assert [p.name for p in out.iterdir()] == ["gpu_check.tar.gz"]
    assert (out / "gpu_check.tar.gz").stat().st_size < 16 * 2**20  # the device tool's limit per file
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
        log = tar.extractfile("./gpu_check.log").read().decode()  # type: ignore[union-attr]
    runs = ["run_k1-4", "run_k1-2", "run_k1", "run_k1-2_then_1"]
    expected = {"./gpu_check.log", "./calibrate/profile.yaml", "./calibrate/speedup.png",
                "./recommend/recommendation.json", "./validate/validation.json", "./validate/profile_updated.yaml"}
    for run in runs:
        expected |= {f"./{run}/{f}" for f in ("summary.json", "trace.jsonl", "gantt.png", "logs/trial_0000.log")}
    assert expected <= names, sorted(expected - names)
    assert not [n for n in names if "checkpoints" in n or n.endswith(".pt")]
    for run in runs:
        assert f"{run}: trials 8, failed 0" in log
    assert re.search(r"run_k1-2_then_1: trials 8, failed 0, .* resumed from a checkpoint [1-9]", log)
    assert "nasalloc validate: profile synthetic_cpu" in log  # the commands' own output is in the log
    assert not list(tmp_path.glob("nasalloc-gpu-check.*"))
