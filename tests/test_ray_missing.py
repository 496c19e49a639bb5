"""A user without Ray who asks for backend=ray: one line saying how to install it, exit 2
(no Ray needed for this test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("command", ["run", "calibrate"])
def test_without_ray_backend_ray_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    """A Python where `import ray` fails (a module named ray that raises ImportError comes
    first on the path) asked for backend=ray: one line saying how to install it, exit 2."""
    fake = tmp_path / "noray"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('No module named ray')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "nasalloc", command, "backend=ray", f"out_dir={tmp_path / 'out'}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nasalloc[ray]'" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
