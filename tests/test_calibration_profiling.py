"""The bookkeeping of profiling runs, on hand-made launcher results (no processes)."""

import numpy as np
import pytest

from nasalloc.calibration.import_csv import read_timings
from nasalloc.calibration.measurements import Measurements
from nasalloc.calibration.probe import OPTIONS_KEY, _ProbeContext, wrap_config
from nasalloc.calibration.profiling import _boundary_rest, _durations, _overlapping_durations
from nasalloc.execute.launch import RanksResult


def result(stamps, reports=()):
    """A RanksResult whose rank 0 stepped at `stamps`; reports: (steps done, extra) pairs."""
    r = RanksResult(ok=True, info="", wall_s=0.0, step_times=[list(stamps)])
    r.reports = [(0.0, i + 1, 0.5, {"probe_steps": float(s), **extra}) for i, (s, extra) in enumerate(reports)]
    return r


def test_warmup_and_epoch_boundary_intervals_are_left_out():
    # 10 ms steps; an epoch ends after step 6 and evaluation takes 50 ms before step 7
    stamps = [0.01 * i for i in range(1, 7)] + [0.06 + 0.05 + 0.01 * i for i in range(1, 5)]
    r = result(stamps, reports=[(6, {"probe_eval_s": 0.05})])
    d = _durations(r, 0, [6], warmup=2)
    assert len(d) == len(stamps) - 1 - 2 - 1
    np.testing.assert_allclose(d, 0.01)
    # the boundary's rest: 60 ms interval - 50 ms eval - one 10 ms step = 0
    assert _boundary_rest(r, warmup=2) == [pytest.approx(0.0, abs=1e-12)]


def test_sharing_uses_only_the_window_where_all_runs_were_stepping():
    a = result([0.0, 0.02, 0.04, 0.06, 0.08, 0.10])  # runs from 0.00 to 0.10
    b = result([0.05, 0.07, 0.09, 0.11, 0.13])  # starts late
    d = _overlapping_durations([a, b], warmup=0)
    # window [0.05, 0.10]: a's (0.06, 0.08), (0.08, 0.10); b's (0.05, 0.07), (0.07, 0.09)
    assert len(d) == 4
    np.testing.assert_allclose(d, 0.02)


def test_sharing_slowdown_prefers_the_reference_measured_next_to_it():
    m = Measurements(step_samples={1: [0.010, 0.010]}, share_samples={2: [0.030, 0.030]}, share_reference={2: [0.015]})
    assert m.sharing_slowdown() == {1: 1.0, 2: pytest.approx(2.0)}
    m.share_reference = {}
    assert m.sharing_slowdown()[2] == pytest.approx(3.0)
    assert m.to_dict()["sharing_step_time_samples_s"] == {2: [0.03, 0.03]}


def test_probe_context_hides_its_options_and_adds_timings_to_reports(tmp_path):
    calls = []

    class FakeCtx:
        rank, world_size, device, steps, checkpoint_dir = 0, 1, None, 0, tmp_path

        def step(self):
            self.steps += 1

        def report(self, epoch, metric, state=None, **extra):
            calls.append(extra)
            return "continue"

    config = wrap_config("pkg.mod:train", {"lr": 0.1}, checkpoints=1)
    assert config[OPTIONS_KEY]["entrypoint"] == "pkg.mod:train"
    ctx = _ProbeContext(FakeCtx(), {"lr": 0.1}, checkpoints=1, grad_bytes=lambda: 400.0)
    ctx.step()
    ctx.step()
    assert ctx.report(1, 0.5, state=lambda: {"w": [1, 2]}, test_metric=0.4) == "continue"
    ctx.report(2, 0.6, state={"w": [1]})
    first, second = calls
    assert first["probe_steps"] == 2 and first["probe_eval_s"] >= 0 and first["test_metric"] == 0.4
    assert first["probe_checkpoint_save_s"] > 0 and first["probe_checkpoint_restore_s"] > 0
    assert "probe_checkpoint_save_s" not in second  # only the first `checkpoints` epochs are timed
    assert first["probe_grad_bytes"] == 400.0
    assert ctx.world_size == 1 and ctx.config == {"lr": 0.1}
    assert not list(tmp_path.glob("probe_*.pt"))  # the timed checkpoint is removed


def test_csv_batch_fraction_follows_the_workloads_scaling_unless_given(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("k,step_time_s,batch_fraction\n1,0.1,\n2,0.06,\n4,0.04,0.3\n")
    m = read_timings(csv, lambda k: 1.0 / k)
    assert m.batch_fraction == {1: 1.0, 2: 0.5, 4: 0.3}
    assert m.source == f"csv:{csv}"
