"""benchmarks/executor_overhead.py writes ~20 MB of journals, checkpoints and logs; none of
it may stay in the temp folder, whether the benchmark finishes, fails or is interrupted."""

import importlib.util
import signal
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "executor_overhead.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("executor_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("ending", [None, RuntimeError("a bare worker failed"), KeyboardInterrupt()])
def test_the_work_folder_is_removed_however_the_benchmark_ends(tmp_path, monkeypatch, ending):
    bench = _benchmark()
    seen = []

    def measure(args, work):  # stands in for the runs: writes what they write, then ends as told
        seen.append(work)
        (work / "exec_0" / "checkpoints").mkdir(parents=True)
        (work / "exec_0" / "checkpoints" / "epoch_00001.pt").write_bytes(b"x" * 4096)
        if ending is not None:
            raise ending

    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["executor_overhead.py"])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        if ending is None:
            bench.main()
        else:
            with pytest.raises(type(ending)):
                bench.main()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen and seen[0].parent == tmp_path and seen[0].name.startswith("nasalloc-bench-")
    assert list(tmp_path.iterdir()) == []
