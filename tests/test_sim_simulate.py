"""`nasalloc simulate` end to end: files, the printed summary, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

from nasalloc.cli import main
from nasalloc.sim.trace import read_trace


def run(args, capsys):
    code = main(["simulate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_simulation_writes_trace_summary_plots(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, out, err = run([f"out_dir={out_dir}"], capsys)
    assert code == 0, err
    for name in ("trace.jsonl", "summary.json", "gantt.png", "best_so_far.png"):
        assert (out_dir / name).is_file(), name
    summary = json.loads((out_dir / "summary.json").read_text())
    for key in ("makespan_s", "best_metric", "time_to_target_s", "gpu_utilization", "trials", "epochs_trained",
                "device_hours", "scheduler", "gpus_per_trial", "best_test_metric"):
        assert key in summary
    assert summary["scheduler"] == "asha" and summary["gpus_per_trial"] == 1
    events = read_trace(out_dir / "trace.jsonl")
    assert events[0].event == "start" and events[0].config
    assert out.strip().splitlines()[-1] == f"output: {out_dir.resolve()}"
    assert "makespan" in out


def test_same_seed_same_trace_file(tmp_path, capsys):
    for name in ("a", "b"):
        assert run([f"out_dir={tmp_path / name}", "plots=false", "scheduler=hyperband", "gpus_per_trial=[1,2,4]", "seed=3"], capsys)[0] == 0
    assert (tmp_path / "a" / "trace.jsonl").read_bytes() == (tmp_path / "b" / "trace.jsonl").read_bytes()


def test_sweep_over_allocations(tmp_path, capsys):
    """Each job of a `-m` sweep is the simulation its own overrides give alone (same seed)."""
    common = ["plots=false", "profile=alexnet_p100_10gbe", "cluster=dgx1_10gbe"]
    code, out, err = run(["-m", f"out_dir={tmp_path / 'sweep'}", *common, "gpus_per_trial=1,4"], capsys)
    assert code == 0, err
    for job, k in enumerate((1, 4)):
        assert run([f"out_dir={tmp_path / f'alone_{k}'}", *common, f"gpus_per_trial={k}"], capsys)[0] == 0
        swept = json.loads((tmp_path / "sweep" / str(job) / "summary.json").read_text())
        alone = json.loads((tmp_path / f"alone_{k}" / "summary.json").read_text())
        assert swept["gpus_per_trial"] == k and swept == alone
        assert (tmp_path / "sweep" / str(job) / "trace.jsonl").read_bytes() == (tmp_path / f"alone_{k}" / "trace.jsonl").read_bytes()


def test_target_is_reported(tmp_path, capsys):
    code, out, _ = run([f"out_dir={tmp_path / 'r'}", "plots=false", "target=0.5"], capsys)
    assert code == 0
    assert "time to val_accuracy >= 0.5" in out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["target"] == 0.5


@pytest.mark.parametrize("args, message", [
    (["gpus_per_trial=3"], "gpus_per_trial=3: not allowed on 16 GPUs (4 per node); allowed: 1/m"),
    (["gpus_per_trial=0.3"], "gpus_per_trial=0.3: not allowed"),
    (["gpus_per_trial=[1,2,32]"], "gpus_per_trial=[1, 2, 32]: 32 is not allowed"),
    (["cluster.gpus=6"], "cluster.gpus=6: must be a multiple of gpus_per_node=4"),
    (["workload=nope"], "workload=nope: no such option; allowed: replay, synthetic"),
    (["workload.name=nope"], "workload.name='nope': unknown workload"),
    (["workload=replay"], "workload.path: required"),
    (["workload=replay", "workload.path=/no/such/trace.jsonl"], "workload.path=/no/such/trace.jsonl: no such file"),
    (["profile=nope"], "profile=nope: neither a shipped profile (alexnet_p100_10gbe"),
    (["target=1.5"], "target=1.5: outside val_accuracy's range [0.0, 1.0]"),
    (["target=abc"], "target='abc': must be a number"),
    (["scheduler.mode=min"], "scheduler.mode=min: the workload's metric val_accuracy is mode=max"),
    (["scheduler=foo"], "scheduler=foo: no such option; allowed: asha, bohb, hyperband, random"),
    (["seed=-1"], "seed=-1: must be an integer >= 0"),
    (["nope=1"], "nope=1: no such setting"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    out_dir = tmp_path / "run"
    code, out, err = run([f"out_dir={out_dir}", *args], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("nasalloc simulate: "), err
    assert message in err, err
    assert not out_dir.exists()


@pytest.mark.parametrize("content, message", [
    ("name: x\n", "missing 'workload'"),
    ("name: [unclosed\n", "not valid YAML"),
    ("name: x\nworkload: {samples_per_epoch: 10, batch_per_device: 2}\nstep_time: {t_compute_s: -1}\n", "step_time.t_compute_s=-1: must be > 0"),
])
def test_malformed_profile_file(tmp_path, capsys, content, message):
    path = tmp_path / "profile.yaml"
    path.write_text(content)
    code, _, err = run([f"out_dir={tmp_path / 'run'}", f"profile={path}"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_malformed_replay_file(tmp_path, capsys):
    path = tmp_path / "trace.jsonl"
    path.write_text('{"time": 0, "event": "start", "trial": 0}\n{"time": 1, "event": "bogus", "trial": 0}\n')
    code, _, err = run([f"out_dir={tmp_path / 'run'}", "workload=replay", f"workload.path={path}"], capsys)
    assert code == 2 and "trace.jsonl:2: event='bogus'" in err, err
    assert not (tmp_path / "run").exists()


def test_replay_of_a_recorded_trace(tmp_path, capsys):
    assert run([f"out_dir={tmp_path / 'a'}", "plots=false", "scheduler.n_trials=20"], capsys)[0] == 0
    code, out, err = run([f"out_dir={tmp_path / 'b'}", "plots=false", "workload=replay",
                          f"workload.path={tmp_path / 'a' / 'trace.jsonl'}", "scheduler.n_trials=20"], capsys)
    assert code == 0, err
    assert "recorded curves" in out
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["replay_recorded_trials"] == 20
