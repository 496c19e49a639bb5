"""`nasalloc validate`: the error arithmetic on a constructed trace pair with known answers, and
reading a run folder (its run_config.yaml is read by `execute.run.read_run_config`, as for resume)."""

import json

import pytest

from nasalloc.sim.trace import TraceEvent
from nasalloc.validate.compare import compare, kendall_tau, relative_error, timings


def ev(t, event, trial, epoch=None, metric=None, devices=(0,)):
    return TraceEvent(time=t, event=event, trial=trial, epoch=epoch, metric=metric, devices=tuple(devices))


def trace(startup, epoch, save, restore, stop_second_at=2):
    """Two trials on one device each. Trial 0: 3 epochs, pauses after epoch 1 and resumes.
    Trial 1 (device 1): stopped after `stop_second_at` epochs."""
    t = 0.0
    out = [ev(t, "start", 0, 0)]
    t += startup + epoch
    out.append(ev(t, "result", 0, 1, 0.5))
    t += save
    out.append(ev(t, "pause", 0, 1))
    out.append(ev(t, "resume", 0, 1))
    t += restore + startup + epoch
    out.append(ev(t, "result", 0, 2, 0.6))
    t += epoch
    out.append(ev(t, "result", 0, 3, 0.7))
    out.append(ev(t, "complete", 0, 3))
    u = 0.0
    out.append(ev(u, "start", 1, 0, devices=(1,)))
    u += startup + epoch
    out.append(ev(u, "result", 1, 1, 0.4, devices=(1,)))
    for e in range(2, stop_second_at + 1):
        u += epoch
        out.append(ev(u, "result", 1, e, 0.4, devices=(1,)))
    out.append(ev(u, "stop", 1, stop_second_at, devices=(1,)))
    return sorted(out, key=lambda e: e.time)


def test_timings_read_back_the_constructed_costs():
    tm = timings(trace(startup=2.0, epoch=10.0, save=1.0, restore=3.0))
    assert tm.epoch_s == {1: 10.0}
    assert tm.startup_s == {1: 2.0}
    assert tm.resume_s == {1: 5.0}  # restore + start-up
    assert tm.pause_s == 1.0


def test_errors_of_a_prediction_that_is_20_percent_slow_per_epoch():
    measured = trace(startup=2.0, epoch=10.0, save=1.0, restore=3.0)
    predicted = trace(startup=2.0, epoch=12.0, save=1.0, restore=3.0)
    c = compare(predicted, measured, mode="max", n_devices=2)
    assert c.epoch_s["1"]["error"] == pytest.approx(0.2)
    assert c.startup_s["1"]["error"] == pytest.approx(0.0)
    # measured makespan: 2+10+1+3+2+10+10 = 38; predicted: 2+12+1+3+2+12+12 = 44
    assert c.makespan_s["measured"] == 38.0 and c.makespan_s["predicted"] == 44.0
    assert c.makespan_s["error"] == pytest.approx(6 / 38)
    assert c.decisions.fraction == 1.0 and c.decisions.same_best_trial


def test_a_differently_stopped_trial_shows_in_the_decision_agreement():
    c = compare(trace(2, 10, 1, 3, stop_second_at=3), trace(2, 10, 1, 3, stop_second_at=2), mode="max", n_devices=2)
    assert c.decisions.same_outcome == 1 and c.decisions.fraction == 0.5
    assert c.decisions.differing == [{"trial": 1, "predicted": ("stop", 3), "measured": ("stop", 2)}]
    assert c.decisions.epochs_predicted == c.decisions.epochs_measured + 1


def test_relative_error_and_kendall_tau_edge_cases():
    assert relative_error(None, 1.0) is None and relative_error(1.0, 0.0) is None
    assert relative_error(9.0, 10.0) == pytest.approx(-0.1)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1], [1]) is None


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "run: required"),
        (["run=/no/such/run"], "run=/no/such/run: not a run folder"),
    ],
)
def test_validate_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    from nasalloc import cli

    out = tmp_path / "never"
    assert cli.main(["validate", *args, f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_validate_needs_the_planning_profile(tmp_path, capsys):
    from nasalloc import cli

    run = tmp_path / "run"
    run.mkdir()
    (run / "trace.jsonl").write_text('{"time": 0, "event": "start", "trial": 0, "epoch": 0, "devices": [0]}\n')
    import yaml
    from omegaconf import OmegaConf

    saved = OmegaConf.to_container(cli._compose(cli.COMMANDS["run"], ["devices.count=1"]), resolve=True)
    saved.pop("resume")  # as `nasalloc run` saves it; its `profile` is null
    (run / "run_config.yaml").write_text(yaml.safe_dump(saved))
    assert cli.main(["validate", f"run={run}", f"out_dir={tmp_path / 'never'}"]) == 2
    assert "profile: give the profile the run was planned with" in capsys.readouterr().err
    assert cli.main(["validate", f"run={run}", "profile=digits_cpu", f"out_dir={tmp_path / 'never'}"]) == 2
    assert "no results recorded; nothing to validate" in capsys.readouterr().err


def test_start_up_is_read_per_trial_not_against_a_trace_wide_epoch():
    """Two trials with different epoch times (10 s and 30 s) and the same 2 s start-up: a
    trace-wide median epoch would make one start-up look negative and the other 22 s."""
    events = []
    for trial, epoch in ((0, 10.0), (1, 30.0)):
        events.append(ev(0.0, "start", trial, 0, devices=(trial,)))
        for e in range(1, 4):
            events.append(ev(2.0 + e * epoch, "result", trial, e, 0.5, devices=(trial,)))
        events.append(ev(2.0 + 3 * epoch, "complete", trial, 3, devices=(trial,)))
    tm = timings(sorted(events, key=lambda e: e.time))
    assert tm.startup_s == {1: pytest.approx(2.0)}


def test_a_one_epoch_hold_is_read_against_the_trials_own_epoch_from_its_other_holds():
    """A synchronous scheduler's first rung: one-epoch holds, paused, some resumed later.
    Trials 0 and 1 (epochs 10 s and 30 s, start-up 2 s, resume 5 s) train one epoch, pause,
    resume and train two more; trials 2 and 3 (epoch 60 s) train one epoch and stop. The
    start-up of trial 0's and 1's one-epoch holds uses their own later gaps; trials 2 and 3
    never show their epoch time, so they give no start-up sample (against a trace-wide
    median epoch of 20 s they would say 42 s)."""
    events = []
    for trial, epoch in ((0, 10.0), (1, 30.0)):
        d = (trial,)
        events += [ev(0.0, "start", trial, 0, devices=d), ev(2.0 + epoch, "result", trial, 1, 0.5, devices=d),
                   ev(2.0 + epoch, "pause", trial, 1, devices=d)]
        t = 200.0 + 5.0 + epoch
        events += [ev(200.0, "resume", trial, 1, devices=d), ev(t, "result", trial, 2, 0.6, devices=d),
                   ev(t + epoch, "result", trial, 3, 0.7, devices=d), ev(t + epoch, "complete", trial, 3, devices=d)]
    for trial in (2, 3):
        d = (trial,)
        events += [ev(100.0, "start", trial, 0, devices=d), ev(162.0, "result", trial, 1, 0.1, devices=d),
                   ev(162.0, "stop", trial, 1, devices=d)]
    tm = timings(sorted(events, key=lambda e: e.time))
    assert tm.startup_s == {1: pytest.approx(2.0)}
    assert tm.resume_s == {1: pytest.approx(5.0)}
    assert tm.samples["starts"] == 2


def test_ranking_pools_repeats_and_flags_pairs_inside_the_noise():
    from types import SimpleNamespace

    from nasalloc.validate.validate import ranking

    def run(label):
        return SimpleNamespace(spec=SimpleNamespace(allocation=label))

    def comp(pred, meas):
        return SimpleNamespace(makespan_s={"predicted": pred, "measured": meas, "error": pred / meas - 1})

    # k=1/2 and k=1 measured 4.0/4.4/4.2 vs 4.3/4.1/4.5 (not separable); k=2 clearly slower
    data = [("1/2", 4.6, 4.0), ("1", 4.4, 4.3), ("2", 11.0, 11.5), ("1/2", 4.6, 4.4), ("1", 4.4, 4.1),
            ("2", 11.0, 11.6), ("1/2", 4.6, 4.2), ("1", 4.4, 4.5), ("2", 11.0, 11.4)]
    rank = ranking([run(lab) for lab, _, _ in data], [comp(p, m) for _, p, m in data])
    assert rank["allocations"] == ["1/2", "1", "2"] and rank["repeats"] == {"1/2": 3, "1": 3, "2": 3}
    assert rank["measured_makespan_s"] == pytest.approx([4.2, 4.3, 11.5])
    assert rank["mean_makespan_error"]["1/2"] == pytest.approx(4.6 / 4.2 - 1)
    assert rank["predicted_order"] == ["1", "1/2", "2"] and rank["measured_order"] == ["1/2", "1", "2"]
    assert rank["kendall_tau"] == pytest.approx(1 / 3)
    assert [t["allocations"] for t in rank["measured_order_ties"]] == [["1/2", "1"]]
    assert rank["measured_best"] == "1/2" and rank["predicted_best"] == "1"
    # one run per allocation: no tie test, plain order
    single = ranking([run(lab) for lab, _, _ in data[:3]], [comp(p, m) for _, p, m in data[:3]])
    assert single["measured_order_ties"] == [] and single["repeats"] == {"1/2": 1, "1": 1, "2": 1}
    assert ranking([run("1")], [comp(1.0, 1.0)]) is None


# ----- reading a run folder's run_config.yaml (execute.run.read_run_config) ----------------

GPU_RUN_CONFIG = """\
seed: 3
scheduler: {name: random, n_trials: 2, max_epochs: 2, mode: max, max_retries: 1, promotion: continue}
train: {name: mine, entrypoint: "no_such_module_here:train", space: {x: {type: float, low: 0, high: 1}}, params: {}}
devices: {kind: cuda, count: 0, ids: [0, 1], threads_per_rank: 0}
gpus_per_trial: "1/2"
trial_timeout_s: 120
checkpoint_every: 1
target: null
progress: auto
profile: /a/path/on/the/gpu/machine.yaml
"""


def _gpu_run(folder):
    """A finished run made elsewhere on 2 GPUs at k=1/2, with an entrypoint that does not import here."""
    folder.mkdir()
    (folder / "run_config.yaml").write_text(GPU_RUN_CONFIG)
    lines = []
    for trial, device in ((0, 0), (1, 1)):
        lines.append(f'{{"time": 0, "event": "start", "trial": {trial}, "epoch": 0, "devices": [{device}]}}')
        for epoch in (1, 2):
            lines.append(f'{{"time": {10 * epoch}, "event": "result", "trial": {trial}, "epoch": {epoch}, '
                         f'"metric": {0.1 * epoch + trial}, "devices": [{device}]}}')
        lines.append(f'{{"time": 20, "event": "complete", "trial": {trial}, "epoch": 2, "devices": [{device}]}}')
    (folder / "trace.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_a_gpu_runs_config_is_read_without_its_entrypoint_or_a_gpu(tmp_path):
    from nasalloc.execute.run import read_run_config

    config = read_run_config(_gpu_run(tmp_path / "run"))
    assert config.devices.kind == "cuda" and config.device_count() == 2
    assert config.gpus_per_trial == "1/2" and config.seed == 3 and config.scheduler.n_trials == 2
    assert config.profile == "/a/path/on/the/gpu/machine.yaml"


def test_validate_re_simulates_a_gpu_run_on_a_cpu_machine(tmp_path, capsys):
    from nasalloc import cli

    run = _gpu_run(tmp_path / "run")
    out = tmp_path / "validate"
    assert cli.main(["validate", f"run={run}", "profile=digits_cpu", "plots=false", f"out_dir={out}"]) == 0
    assert "k=1/2 on 2 devices" in capsys.readouterr().out
    report = json.loads((out / "validation.json").read_text())["runs"][0]
    assert report["gpus_per_trial"] == "1/2" and report["devices"] == 2 and report["seed"] == 3


@pytest.mark.parametrize(
    "text, problem",
    [
        ("scheduler: [unclosed\n", "not valid YAML"),
        ("- a list\n", "not a mapping of settings"),
        (GPU_RUN_CONFIG.replace("seed: 3", "seed: three"), "seed='three': must be an integer"),
        (GPU_RUN_CONFIG.replace("name: random, ", "name: nope, "), "scheduler"),
    ],
)
@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_run_config_is_one_line_naming_the_file(tmp_path, capsys, text, problem, command):
    from nasalloc import cli

    run = _gpu_run(tmp_path / "run")
    (run / "run_config.yaml").write_text(text)
    setting = "run" if command == "validate" else "resume"
    assert cli.main([command, f"{setting}={run}", "profile=digits_cpu", f"out_dir={tmp_path / 'never'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nasalloc {command}: {run / 'run_config.yaml'}: ") and problem in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def _per_rung_run_config(gpus_per_trial):
    """A saved run_config.yaml: ASHA (2 trials, rungs at epochs 2 and 6) on 2 CPU slots."""
    import yaml

    from nasalloc.sim.config import shipped

    return yaml.safe_dump({
        "seed": 0, "scheduler": {**shipped("scheduler", "asha"), "n_trials": 2, "max_epochs": 6, "min_epochs": 2},
        "train": {"name": "toy", "entrypoint": "nasalloc.execute.trainers.toy:train",
                  "space": {"quality": {"type": "float", "low": 0.1, "high": 1.0}}, "params": {}},
        "devices": {**shipped("devices", "cpu"), "count": 2}, "gpus_per_trial": gpus_per_trial,
        "trial_timeout_s": 120, "checkpoint_every": 1, "target": None, "progress": "none", "profile": "digits_cpu",
    })


def _per_rung_run(folder):
    """A run at gpus_per_trial=[1, 2] on 2 devices (rungs at epochs 2 and 6): epochs 1-2 on one
    device take 10 s each, epochs 3-6 on two take 6 s; start-up 2 s, a move to two devices
    pauses 0.5 s after the result and its resume adds 3 s before the first epoch there."""
    folder.mkdir()
    (folder / "run_config.yaml").write_text(_per_rung_run_config([1, 2]))
    q = {"config": {"quality": 0.5}}
    events = [(0, "start", 0, 0, None, [0], q), (0, "start", 1, 0, None, [1], q),
              (12, "result", 0, 1, 0.3, [0], {}), (12, "result", 1, 1, 0.2, [1], {}),
              (22, "result", 0, 2, 0.4, [0], {}), (22, "result", 1, 2, 0.25, [1], {}), (22, "stop", 1, 2, None, [1], {}),
              (22.5, "pause", 0, 2, None, [0], {"info": "reallocate"}), (22.5, "resume", 0, 2, None, [0, 1], {"info": "reallocate"})]
    events += [(31.5 + 6 * i, "result", 0, 3 + i, 0.5 + 0.01 * i, [0, 1], {}) for i in range(4)]
    events.append((49.5, "complete", 0, 6, None, [0, 1], {}))
    lines = [json.dumps({"time": t, "event": e, "trial": tr, "epoch": ep, "metric": m, "devices": d, **x})
             for t, e, tr, ep, m, d, x in events]
    (folder / "trace.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_update_profile_of_a_per_rung_run_refits_every_allocation(tmp_path, capsys):
    """Each k of the schedule is measured by the devices its epochs held, and the refitted
    profile carries the run's own overheads. Expected values from the constructed trace and
    digits_cpu (37 steps per epoch at every k: 1184 samples, global batch 32; decision
    0.00134526 s; checkpoint write 0.00202608 s, after every epoch and in a pause;
    evaluation 0.0207273 s, not split across ranks)."""
    import yaml

    from nasalloc import cli

    run = _per_rung_run(tmp_path / "run")
    out = tmp_path / "validate"
    assert cli.main(["validate", f"run={run}", "update_profile=true", "plots=false", f"out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    # every term on its own: the pause predicted as decision + write (0.00337 s), measured 0.5 s
    assert "error per term: epoch " in printed and "; resume " in printed
    assert "pause -99.3% (0.00337 s vs 0.5 s)" in printed
    update = json.loads((out / "validation.json").read_text())["profile_update"]
    assert update["measured_epoch_s"] == {"1": 10.0, "2": 6.0}
    decision, save, evaluation = 0.00134526, 0.00202608, 0.0207273
    assert update["implied_step_s"] == {"1": pytest.approx((10.0 - decision - save - evaluation) / 37, rel=1e-9),
                                        "2": pytest.approx((6.0 - decision - save - evaluation) / 37, rel=1e-9)}
    overheads = yaml.safe_load((out / "profile_updated.yaml").read_text())["overheads"]
    # 12 s to the first result - one 10 s epoch gap; that gap holds a decision and a write the
    # first epoch does not pay, so the start-up is 2 s + both
    assert overheads["startup_s"] == pytest.approx(2.0 + decision + save)
    assert overheads["checkpoint_restore_s"] == pytest.approx(3.0 - 2.0)  # resume 3 s - start-up (both + the same)
    assert overheads["checkpoint_save_s"] == save  # one write: kept from the profile
    assert overheads["release_s"] == pytest.approx(0.5 - decision - save)  # pause 0.5 s - decision - write


def test_update_profile_refits_a_measured_resume_per_k_and_keeps_what_one_k_cannot_tell():
    """A profile whose resume(k) was measured as such (`resume_s`): the runs' resume
    at k = 2 (trace: 20 ms after the epoch gap, which holds the decision and the write a
    first epoch does not pay) refits its level with the profile's slope kept (one k cannot
    tell a slope); a pause at k = 2 alone refits release_s with release_per_doubling_s kept."""
    import yaml

    from nasalloc.sim.profile import load_profile, parse_profile
    from nasalloc.validate.validate import refit_profile

    base = load_profile("digits_cpu")
    raw = dict(base.raw)
    raw["overheads"] = {**raw["overheads"], "resume_s": 0.005, "resume_per_doubling_s": 0.02,
                        "release_s": 0.003, "release_per_doubling_s": 0.011}
    profile = parse_profile(raw, "test")
    ov = profile.overheads
    boundary = ov.decision_latency_s + ov.checkpoint_save_s
    measured = {1.0: {"epoch_s": None, "startup_s": 0.004, "resume_s": None, "pause_s": None},
                2.0: {"epoch_s": None, "startup_s": None, "resume_s": 0.020, "pause_s": 0.025}}
    data, _ = refit_profile(profile, measured, "cpu")
    refit = data["overheads"]
    assert refit["resume_s"] == pytest.approx(0.020 + boundary - 0.02 * 1)  # log2(2) = 1, the slope kept
    assert refit["resume_per_doubling_s"] == 0.02
    # release(2) = the pause less the boundary: release_s is that less the kept slope at k = 2
    assert refit["release_s"] == pytest.approx(0.025 - boundary - 0.011) and refit["release_per_doubling_s"] == 0.011
    assert refit["startup_s"] == pytest.approx(0.004 + boundary)
    assert yaml.safe_dump(data) and parse_profile(data, "refit").overheads.resume(2) == pytest.approx(0.020 + boundary)


def _node_profile(**overheads):
    """digits_cpu on nodes of 2 with the given overheads (k = 4 spans two nodes)."""
    from nasalloc.sim.profile import load_profile, parse_profile

    raw = dict(load_profile("digits_cpu").raw)
    raw["hardware"] = {**(raw.get("hardware") or {}), "gpus_per_node": 2}
    raw["overheads"] = {**raw["overheads"], **overheads}
    return parse_profile(raw, "test")


def test_update_profile_of_a_run_across_nodes_counts_the_inter_node_step_once():
    """A per-rung run at k = 1, 2, 4 on nodes of 2 measures start-up at k = 1 and 2 (inside a
    node) and resumes at k = 4 (across nodes: the line plus the 80 ms step). The refit keeps
    the step out of resume(k) (the simulator adds it) and refits it where both sides were
    measured: resume(4) + step comes back as measured, not with the step twice."""
    from nasalloc.sim.profile import parse_profile
    from nasalloc.validate.validate import refit_profile

    profile = _node_profile(startup_s=0.01, startup_per_doubling_s=0.0, startup_inter_node_s=0.05,
                            resume_s=0.01, resume_per_doubling_s=0.0)
    boundary = profile.overheads.decision_latency_s + profile.overheads.checkpoint_save_s
    # the trace's start-ups (less the boundary): 10 ms at k = 1, 12 ms at k = 2 -> a line of
    # 10 ms + 2 ms per doubling; the start-up at k = 4 is that line (14 ms) + a step of 80 ms
    measured = {1.0: {"epoch_s": None, "startup_s": 0.010 - boundary, "resume_s": None, "pause_s": None},
                2.0: {"epoch_s": None, "startup_s": 0.012 - boundary, "resume_s": None, "pause_s": None},
                4.0: {"epoch_s": None, "startup_s": 0.094 - boundary, "resume_s": 0.100 - boundary, "pause_s": None}}
    data, _ = refit_profile(profile, measured, "cpu")
    ov = data["overheads"]
    assert ov["startup_s"] == pytest.approx(0.010) and ov["startup_per_doubling_s"] == pytest.approx(0.002)
    assert ov["startup_inter_node_s"] == pytest.approx(0.080)
    assert ov["resume_s"] == pytest.approx(0.100 - 0.080)  # one k: the level, less the step; slope 0 kept
    refit = parse_profile(data, "refit")
    assert refit.resume_time(4) == pytest.approx(0.100)  # the step counted once
    assert refit.startup_time(4) == pytest.approx(0.094)


def test_update_profile_with_jobs_on_one_side_of_the_node_boundary_keeps_the_step_out():
    """Only jobs across nodes measured (k = 4 on nodes of 2): the step cannot be refitted, so
    the profile's (50 ms) is kept and taken out of the measured start-up and resume before
    their levels are refitted; without a resume_s the restore is the resume less start-up(4)
    with the step."""
    from nasalloc.sim.profile import parse_profile
    from nasalloc.validate.validate import refit_profile

    profile = _node_profile(startup_s=0.01, startup_per_doubling_s=0.001, startup_inter_node_s=0.05)
    boundary = profile.overheads.decision_latency_s + profile.overheads.checkpoint_save_s
    measured = {4.0: {"epoch_s": None, "startup_s": 0.072 - boundary, "resume_s": 0.080 - boundary, "pause_s": None}}
    data, _ = refit_profile(profile, measured, "cpu")
    ov = data["overheads"]
    assert ov["startup_s"] == pytest.approx(0.072 - 0.05 - 0.001 * 2)  # less the step and the kept slope at k = 4
    assert ov["startup_per_doubling_s"] == 0.001 and ov["startup_inter_node_s"] == 0.05
    assert ov["checkpoint_restore_s"] == pytest.approx(0.080 - 0.072)
    assert parse_profile(data, "refit").startup_time(4) == pytest.approx(0.072)


def test_update_profile_fits_release_per_k_where_pauses_at_two_k_were_measured():
    """Pauses at k = 1 and 2 (less the boundary: 5 and 16 ms) give release(k) as calibration
    fits it: 5 ms + 11 ms per doubling."""
    from nasalloc.validate.validate import refit_profile

    profile = _node_profile(release_s=0.003, release_per_doubling_s=0.0)
    boundary = profile.overheads.decision_latency_s + profile.overheads.checkpoint_save_s
    measured = {1.0: {"epoch_s": None, "startup_s": None, "resume_s": None, "pause_s": 0.005 + boundary},
                2.0: {"epoch_s": None, "startup_s": None, "resume_s": None, "pause_s": 0.016 + boundary}}
    ov = refit_profile(profile, measured, "cpu")[0]["overheads"]
    assert ov["release_s"] == pytest.approx(0.005) and ov["release_per_doubling_s"] == pytest.approx(0.011)


def test_a_schedule_holding_one_device_at_two_allocations_leaves_both_out(tmp_path):
    """k = 1/2 and k = 1 both hold one device: their epochs cannot be told apart, so neither
    is refitted; k = 2 still is."""
    from nasalloc.execute.run import read_run_config
    from nasalloc.sim.profile import load_profile
    from nasalloc.validate.compare import timings
    from nasalloc.validate.validate import _by_allocation, read_run

    run = _per_rung_run(tmp_path / "run")
    (run / "run_config.yaml").write_text(_per_rung_run_config(["1/2", 1, 2]))
    real = read_run(run, read_run_config(run), load_profile("digits_cpu"))
    assert {float(k): v["epoch_s"] for k, v in _by_allocation(real, timings(list(real.events))).items()} == {2.0: 6.0}
