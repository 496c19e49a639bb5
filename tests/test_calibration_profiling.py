"""The bookkeeping of profiling runs, on hand-made launcher results (no processes): step
intervals, sharing windows, start-up of fresh jobs, and the sampled-configuration mix."""

import time
from types import SimpleNamespace

import numpy as np
import pytest

from nasalloc.calibration.analysis import analyse
from nasalloc.calibration.calibrate import TrainConf, builtin_space, search_space
from nasalloc.calibration.fit import FitSettings, LineFit, predict_step_time
from nasalloc.calibration.import_csv import read_timings
from nasalloc.calibration.measurements import Measurements
from nasalloc.calibration.report import bounded_sharing
from nasalloc.calibration.probe import OPTIONS_KEY, _ProbeContext, wrap_config
from nasalloc.calibration.profiling import (
    Profiler,
    ProfilingPlan,
    _boundary_rest,
    _durations,
    _overlapping_durations,
    config_level_scale,
    fresh_job_timings,
    reference_config,
    sample_configs,
)
from nasalloc.execute.launch import RanksResult
from nasalloc.sim.space import SearchSpace

# an Analysis as resume_fit reads it: every k measured inside one node (no start-up step across nodes)
INSIDE_ONE_NODE = SimpleNamespace(startup=LineFit(0.0, 0.0, True), settings=SimpleNamespace(gpus_per_node=8))


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
    # a report that timed a checkpoint (save 8 ms, restore 4 ms inside the same 60 ms + 12 ms):
    # the probe's own checkpoint is not part of the boundary either
    timed = [0.01 * i for i in range(1, 7)] + [0.06 + 0.05 + 0.012 + 0.01 * i for i in range(1, 5)]
    r = result(timed, reports=[(6, {"probe_eval_s": 0.05, "probe_checkpoint_save_s": 0.008,
                                    "probe_checkpoint_restore_s": 0.004})])
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
    # 9 ms shared vs 10 ms alone: noise, not a speed-up from sharing; the profile gets 1 (it
    # refuses < 1) and says it held the 0.9 at that bound
    m.share_samples, m.share_reference = {2: [0.009]}, {2: [0.010]}
    assert m.sharing_slowdown()[2] == pytest.approx(0.9)
    held: dict[str, float] = {}
    assert bounded_sharing(m.sharing_slowdown(), held) == {1: 1.0, 2: 1.0} and held == {"sharing.2": pytest.approx(0.9)}


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
    time.sleep(0.02)  # "evaluation": from the epoch's last step to the report
    assert ctx.report(1, 0.5, state=lambda: {"w": [1, 2]}, test_metric=0.4) == "continue"
    ctx.report(2, 0.6, state={"w": [1]})
    first, second = calls
    assert first["probe_steps"] == 2 and first["probe_eval_s"] >= 0.02 and first["test_metric"] == 0.4
    assert first["probe_checkpoint_save_s"] > 0 and first["probe_checkpoint_restore_s"] > 0
    assert "probe_checkpoint_save_s" not in second  # only the first `checkpoints` epochs are timed
    assert first["probe_grad_bytes"] == 400.0
    assert ctx.world_size == 1 and ctx.config == {"lr": 0.1}
    assert not list(tmp_path.glob("probe_*.pt"))  # the timed checkpoint is removed


def test_csv_batch_fraction_follows_train_scaling_unless_given(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("k,step_time_s,batch_fraction\n1,0.1,\n2,0.06,\n4,0.04,0.3\n")
    m = read_timings(csv, lambda k: 1.0 / k)
    assert m.batch_fraction == {1: 1.0, 2: 0.5, 4: 0.3}
    assert m.source == f"csv:{csv}"


# ----------------------------------------------------------------------------- start-up and configurations

DIGITS = "nasalloc.execute.trainers.digits:train"


def job(step_s, steps_per_epoch, epochs, *, first_step_at, evals, report_lag=0.0):
    """A fresh job's launcher result: times relative to dispatch; one report per epoch."""
    stamps, reports, t = [], [], first_step_at
    for e in range(epochs):
        for i in range(steps_per_epoch):
            if stamps:
                t += step_s
            stamps.append(t)
        t += evals[e]
        reports.append((t + report_lag, e + 1, 0.5, {"probe_steps": float(steps_per_epoch * (e + 1)),
                                                     "probe_eval_s": evals[e]}))
    r = RanksResult(ok=True, info="", wall_s=t, step_times=[stamps])
    r.reports = reports
    return r


def test_startup_is_dispatch_to_first_report_less_one_epoch_of_the_same_job():
    # first step 0.25 s after dispatch (set-up), 10 ms steps, 20 steps per epoch; the first
    # evaluation pays 40 ms of one-off costs (80 ms instead of 40 ms), the report takes 5 ms
    r = job(0.01, 20, 3, first_step_at=0.25, evals=[0.08, 0.04, 0.04], report_lag=0.005)
    f = fresh_job_timings(r, warmup=2)
    np.testing.assert_allclose(f.steps, 0.01)
    assert f.eval_s == pytest.approx(0.04)  # steady: the reports after the first
    # first report at 0.25 + 19 * 0.01 + 0.08 + 0.005 = 0.525; one epoch = 20 * 0.01 + 0.04
    assert f.startup_s == pytest.approx(0.525 - 0.24)
    # the trace's definition (first result - start - one epoch) on the same numbers
    assert f.startup_s == pytest.approx(r.reports[0][0] - (20 * 0.01 + 0.04))


def test_a_job_that_never_reports_has_no_startup():
    r = RanksResult(ok=True, info="", wall_s=1.0, step_times=[[0.1 + 0.01 * i for i in range(30)]])
    f = fresh_job_timings(r, warmup=2)
    assert f.startup_s is None and f.eval_s is None and len(f.steps) == 27


def test_sampled_configurations_are_seeded_and_merged_over_the_fixed_settings():
    space = builtin_space(DIGITS)
    assert set(space) == {"lr", "width", "momentum"}
    a = sample_configs(space, 5, seed=3, base={"width": 16, "batch_size": 32})
    assert a == sample_configs(space, 5, seed=3, base={"width": 16, "batch_size": 32})
    assert a != sample_configs(space, 5, seed=4, base={"width": 16, "batch_size": 32})
    assert a != sample_configs(space, 5, seed=3, base={"width": 16, "batch_size": 32}, stream=1)
    assert all(c["batch_size"] == 32 and 4 <= c["width"] <= 32 for c in a)
    assert len({c["width"] for c in a}) > 1  # the space's value replaces the profiled one
    # a Latin hypercube: every one of n equally likely strata of each parameter once
    cube = {"x": {"type": "float", "low": 1.0, "high": 100.0, "log": True}, "c": {"type": "categorical", "choices": [0, 1]}}
    b = sample_configs(cube, 8, seed=0, base={})
    bins = sorted(int(8 * np.log(c["x"]) / np.log(100.0)) for c in b)
    assert bins == list(range(8)) and sorted(c["c"] for c in b) == [0] * 4 + [1] * 4
    # not the configurations a search seeded alike draws (it uses default_rng(seed))
    search = SearchSpace.from_config(space).sample(np.random.default_rng(3))
    assert all({k: c[k] for k in search} != search for c in a)


def test_reference_is_the_configuration_closest_to_the_mean():
    i, scale = reference_config([0.002, 0.0035, 0.006, 0.004])
    assert i == 3 and scale == pytest.approx(0.003875 / 0.004)


def shipped_train(**over) -> TrainConf:
    """`train` of the composed default calibrate config, with `over` replacing settings."""
    from omegaconf import OmegaConf

    from nasalloc.cli import COMMANDS, _compose

    node = OmegaConf.to_container(_compose(COMMANDS["calibrate"], []).train, resolve=True)
    return TrainConf(**{**node, **over})


def test_space_defaults_to_the_built_in_trainers_and_can_be_given_or_turned_off():
    assert search_space(shipped_train())["width"]["high"] == 32
    assert search_space(shipped_train(space={})) is None
    assert search_space(shipped_train(entrypoint="my.pkg:train")) is None
    given = {"width": {"type": "int", "low": 8, "high": 8}}
    assert search_space(shipped_train(entrypoint="my.pkg:train", space=given)) == given
    with pytest.raises(Exception, match="train.space.width"):
        search_space(shipped_train(space={"width": {"type": "integer"}}))


def test_the_fit_describes_the_mean_configuration_and_keeps_the_raw_samples():
    rng = np.random.default_rng(0)
    m = Measurements(step_samples={1: 0.004 * (1 + 0.01 * rng.standard_normal(200)),
                                   2: 0.006 * (1 + 0.01 * rng.standard_normal(200))},
                     batch_fraction={1: 1.0, 2: 0.5})
    m.configs = [{"config": {"width": w}, "mean_step_s": t, "steps": 50, "eval_s": 0.01, "startup_s": 0.02}
                 for w, t in ((4, 0.002), (16, 0.004), (32, 0.006))]
    m.reference_config, m.config_scale = {"width": 16}, 0.75
    a = analyse(m, FitSettings(gpus_per_node=2, grad_bytes=4e4), bootstrap=0, rng=np.random.default_rng(0))
    assert a.data.mean_s[0] == pytest.approx(0.75 * np.mean(m.step_samples[1]))
    # k = 2 (half the batch per rank): only its compute, half a k = 1 step, moves by the scale;
    # its all-reduce is the reference configuration's as measured
    compute_2 = 0.5 * np.mean(m.step_samples[1])
    assert a.data.mean_s[1] == pytest.approx(np.mean(m.step_samples[2]) - 0.25 * compute_2)
    d = m.to_dict()
    assert d["step_time_summary"][1]["mean_s"] == pytest.approx(np.mean(m.step_samples[1]), rel=1e-5)  # raw
    assert d["configs"]["n"] == 3 and d["configs"]["scale"] == 0.75 and d["configs"]["reference_config"] == {"width": 16}
    assert d["configs"]["mean_step_s"] == pytest.approx(0.004) and d["configs"]["cv"] == pytest.approx(0.5)
    assert d["configs"]["sampled"][0] == {"config": {"width": 4}, "mean_step_s": 0.002, "steps": 50, "eval_s": 0.01,
                                          "startup_s": 0.02}


def test_the_configuration_scale_moves_compute_and_keeps_the_measured_communication():
    """Scaling whole k = 2 steps by the configurations' level made every k = 2 epoch of
    a communication-bound workload too slow by the scale. The fit at scale s must give s x the
    compute and the same network parameters as the fit of the raw samples."""
    # an exact model: k = 1 step 2 ms; k = 2: 1 ms compute + 3 ms all-reduce (no noise)
    samples = {1: np.full(50, 0.002), 2: np.full(50, 0.004)}
    settings = FitSettings(gpus_per_node=2, grad_bytes=4e4)
    fits = {}
    for scale in (1.0, 1.2):
        m = Measurements(step_samples=dict(samples), batch_fraction={1: 1.0, 2: 0.5}, config_scale=scale)
        fits[scale] = analyse(m, settings, bootstrap=0, rng=np.random.default_rng(0)).step.model
    assert fits[1.2].t_compute_s == pytest.approx(1.2 * 0.002, rel=1e-4)
    assert fits[1.2].intra_bandwidth_Bps == pytest.approx(fits[1.0].intra_bandwidth_Bps, rel=1e-4)
    # the k = 2 step: 1.2 x 1 ms compute + the same 3 ms all-reduce = 4.2 ms (not 1.2 x 4 ms)
    assert predict_step_time(fits[1.2], np.array([2.0]), 2, np.array([0.5]))[0] == pytest.approx(0.0042, rel=1e-3)


class FakeLauncher:
    """Answers `Launcher.run` with a job whose step time is proportional to the width."""

    def __init__(self):
        self.configs = []

    def run(self, entrypoint, config, devices, *, epochs, max_steps, **kwargs):
        self.configs.append(config)
        width = config.get("width", 16)
        steps_per_epoch = 10
        n = min(epochs, max(1, max_steps // steps_per_epoch))
        return job(width * 1e-4, steps_per_epoch, n, first_step_at=0.05, evals=[0.02] + [0.01] * (n - 1))


def test_sampled_configurations_set_the_reference_startup_and_evaluation(tmp_path):
    space = {"width": {"type": "int", "low": 4, "high": 32, "log": True}}
    plan = ProfilingPlan(entrypoint=DIGITS, config={"width": 16, "lr": 0.1}, device_kind="cpu", device_ids=[0, 1],
                         gpus_per_trial=[1, 2], share=[], threads_per_rank=None, batch_fraction={}, warmup_steps=2,
                         pilot_steps=40, max_steps=3000, rounds=4, time_limit_s=12.0, checkpoints=2, space=space,
                         configs=6, config_time_limit_s=1.0, startup_jobs=3, seed=0, fill_devices=False)
    profiler = Profiler(plan, tmp_path, progress=lambda line: None)
    m = Measurements(step_samples={})
    profiler.measure_configs(FakeLauncher(), m)
    widths = [c["config"]["width"] for c in m.configs]
    assert len(widths) == 6 and [c["config"] for c in m.configs] == [{"width": c["width"]} for c in
                                                                       sample_configs(space, 6, 0, plan.config)]
    means = np.array(widths) * 1e-4
    np.testing.assert_allclose([c["mean_step_s"] for c in m.configs], means)
    ref = m.reference_config["width"]
    assert abs(ref - np.mean(widths)) == min(abs(w - np.mean(widths)) for w in widths)
    assert m.config_scale == 1.0  # set once the reference's precise k = 1 runs are in (config_level_scale)
    m.step_samples[1] = np.array([ref * 1.2e-4] * 50)  # precise runs 20% slower than its short run
    assert config_level_scale(m) == pytest.approx(np.mean(means) / (ref * 1.2e-4))
    assert config_level_scale(Measurements(step_samples={1: np.array([0.001])})) is None  # no configurations
    assert profiler.config["width"] == ref and profiler.config["lr"] == 0.1  # later runs use the reference
    # every configuration's start-up: first report (0.05 + 9 steps + 20 ms eval) less 10 steps + 10 ms eval
    np.testing.assert_allclose(m.startup_s[1], [0.05 - 0.0001 * w + 0.01 for w in widths])
    assert m.eval_s == pytest.approx([0.01] * 6)
    assert len(m.decision_latency_s) >= 6 and max(m.decision_latency_s) == pytest.approx(0.0, abs=1e-9)
    # start-up jobs at k > 1 draw new configurations (a new trial's), not the reference
    fake = FakeLauncher()
    m.steps_per_epoch[1] = 10
    profiler.measure_startup(fake, 2, m, step_s=0.002)
    assert len(m.startup_s[2]) == 3 and all(c["_calibration_probe"]["checkpoints"] == 0 for c in fake.configs)
    assert [c["width"] for c in fake.configs] != [ref] * 3


# ----------------------------------------------------------------------------- a busy machine

class LoopLauncher:
    """Answers `Launcher.run` as a training loop run through the probe would: a step every
    `step_s`, a report after every `steps_per_epoch` steps (`eval_s` of evaluation before it,
    the first `checkpoints` reports timing a checkpoint). It ends at `max_steps` (the launcher's
    StopTraining, raised in the step, so an epoch ending there is never reported), after
    `epochs` reports, or at the probe's until-report rule."""

    def __init__(self, step_s, steps_per_epoch, eval_s=0.02):
        self.step_s, self.steps_per_epoch, self.eval_s = step_s, steps_per_epoch, eval_s
        self.max_steps = []

    def run(self, entrypoint, config, devices, *, epochs, max_steps, **kwargs):
        self.max_steps.append(max_steps)
        options = config[OPTIONS_KEY]
        until, checkpoints = options.get("until_report_after"), options["checkpoints"]
        t, steps, stamps, reports = 0.05, 0, [], []
        while True:
            steps += 1
            stamps.append(t)
            if steps >= max_steps or (until is not None and reports and steps >= until):
                break
            if steps % self.steps_per_epoch == 0:
                t += self.eval_s
                extra = {"probe_steps": float(steps), "probe_eval_s": self.eval_s}
                if len(reports) < checkpoints:  # the probe times a save and a restore before reporting
                    extra.update(probe_checkpoint_save_s=0.001, probe_checkpoint_restore_s=0.002)
                    t += 0.003
                reports.append((t + 0.001, len(reports) + 1, 0.5, extra))
                if len(reports) >= epochs:
                    break
            t += self.step_s
        r = RanksResult(ok=True, info="", wall_s=t, step_times=[stamps])
        r.reports = reports
        return r


def busy_plan(**over):
    """The slow test's calibration (tests/test_calibration_cli.py): 0.3 s per configuration."""
    space = {"width": {"type": "int", "low": 4, "high": 32, "log": True}}
    settings = dict(entrypoint=DIGITS, config={"width": 16, "lr": 0.1}, device_kind="cpu", device_ids=[0, 1],
                    gpus_per_trial=[1, 2], share=[], threads_per_rank=None, batch_fraction={1: 1.0, 2: 0.5},
                    warmup_steps=3, pilot_steps=10, max_steps=3000, rounds=4, time_limit_s=1.0, checkpoints=2,
                    space=space, configs=4, config_time_limit_s=0.3, startup_jobs=2, seed=0, fill_devices=False)
    return ProfilingPlan(**{**settings, **over})


def test_the_probe_ends_a_time_boxed_job_one_step_after_its_first_report():
    from nasalloc.execute.api import StopTraining

    class FakeCtx:
        rank, world_size, device, steps = 0, 1, None, 0

        def step(self):
            self.steps += 1

        def report(self, epoch, metric, state=None, **extra):
            return "continue"

    ctx = _ProbeContext(FakeCtx(), {}, checkpoints=0, grad_bytes=lambda: 0.0, until_report_after=3)
    for _ in range(5):  # past the box of 3 steps, but no epoch has ended: goes on
        ctx.step()
    ctx.report(1, 0.5)
    with pytest.raises(StopTraining):
        ctx.step()  # the 6th step, the first after the report
    early = _ProbeContext(FakeCtx(), {}, checkpoints=0, grad_bytes=lambda: 0.0, until_report_after=3)
    early.step()
    early.report(1, 0.5)  # an epoch of one step: reported inside the box, so the box is served
    early.step()
    with pytest.raises(StopTraining):
        early.step()  # the 3rd step


class KLauncher(LoopLauncher):
    """A LoopLauncher whose step time depends on the group size (`steps_s[k]`), used as the
    `Launcher` of `Profiler.run`; records each run's k and its probe time box."""

    def __init__(self, steps_s, steps_per_epoch):
        super().__init__(steps_s[1], steps_per_epoch)
        self.steps_s, self.runs = steps_s, []

    def __call__(self, *args, **kwargs):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def run(self, entrypoint, config, devices, **kwargs):
        self.step_s = self.steps_s[len(devices)]
        self.runs.append((len(devices), config[OPTIONS_KEY].get("until_report_after")))
        return super().run(entrypoint, config, devices, **kwargs)


def test_the_configurations_time_boxes_are_sized_from_a_k1_step(tmp_path, monkeypatch):
    """The first, unmeasured run is at the largest k (it warms every worker); its
    step (3.5 ms at k = 2 on 2 CPU slots against 1 ms at k = 1) sized the configurations' k = 1
    boxes, so the 0.3 s boxes held a third of their steps and their means were noisy. A short
    k = 1 run after it sizes them."""
    from nasalloc.calibration import profiling

    launcher = KLauncher({1: 1 / 1024, 2: 3.5 / 1024}, steps_per_epoch=50)  # ~1 ms and ~3.4 ms, exact in binary
    monkeypatch.setattr(profiling, "Launcher", launcher)
    profiler = Profiler(busy_plan(), tmp_path, progress=lambda line: None)
    profiler.run()
    assert launcher.runs[0] == (2, None)  # the warm-up of every worker first
    boxes = [box for k, box in launcher.runs if k == 1 and box is not None][:4]
    assert boxes == [307] * 4  # the 4 configuration jobs: 0.3 s x 1024 steps per s (not 87)
    assert profiler.step_estimates == {2: 3.5 / 1024, 1: 1 / 1024}


def test_k_runs_use_one_worker_per_device_and_sharing_its_own_launcher(tmp_path, monkeypatch):
    """The executor starts one worker per device at k >= 1 and m per device at
    k = 1/m (then their OpenMP threads wait passively, `backend.worker_env`); calibration ran
    everything on m per device. Now every k >= 1 measurement runs on a launcher with one
    worker per device and sharing on one with m."""
    from nasalloc.calibration import profiling

    opened = []

    def launcher(kind, devices, *, slots_per_device, **kwargs):
        fake = KLauncher({1: 1 / 1024, 2: 3.5 / 1024}, steps_per_epoch=50)
        fake.slots_per_device = slots_per_device
        opened.append(fake)
        return fake

    shared = []
    monkeypatch.setattr(profiling, "Launcher", launcher)
    monkeypatch.setattr(Profiler, "measure_sharing",
                        lambda self, launcher, share, m: shared.append((launcher.slots_per_device, share)))
    Profiler(busy_plan(share=[2]), tmp_path, progress=lambda line: None).run()
    assert [f.slots_per_device for f in opened] == [1, 2]
    assert {k for k, _ in opened[0].runs} == {1, 2} and len(opened[0].runs) > 10  # configurations, k rounds, ...
    assert shared == [(2, 2)] and len(opened[1].runs) == 1  # its one unmeasured warm-up run, then sharing


def test_configuration_jobs_reach_their_first_report_when_the_step_estimate_is_too_fast(tmp_path):
    """The flaky calibration's root cause, with the numbers of a busy machine: digits has 37
    steps per epoch at 4 ms; a 10 ms pilot estimate boxes 0.3 s into 30 steps. Each job still
    runs on to its first report (step 37) and one step more, so every configuration's
    evaluation (20 ms) and start-up are measured."""
    profiler = Profiler(busy_plan(), tmp_path, progress=lambda line: None)
    profiler.step_estimates[1] = 0.010
    launcher = LoopLauncher(step_s=0.004, steps_per_epoch=37)
    m = Measurements(step_samples={})
    profiler.measure_configs(launcher, m)
    assert [c["eval_s"] for c in m.configs] == [0.02] * 4 and m.eval_s == [0.02] * 4
    assert [c["steps"] for c in m.configs] == [38 - 1 - 3 - 1] * 4  # 38 stamps: 37 intervals - 3 warm-up - 1 boundary
    assert launcher.max_steps == [300] * 4  # the cap: 10 boxes of 0.3 s at 10 ms
    # start-up: first report at 0.05 + 36 steps + 20 ms + 1 ms, less one epoch of 37 steps + 20 ms
    assert m.startup_s[1] == pytest.approx([0.05 + 36 * 0.004 + 0.021 - (37 * 0.004 + 0.02)] * 4)
    # the boundary's rest: (step 38 - step 37) - eval - one step = 0
    assert len(m.decision_latency_s) == 4 and max(map(abs, m.decision_latency_s)) < 1e-12


def test_without_configuration_evaluations_the_k1_runs_evaluation_is_kept(tmp_path):
    """Epochs of 1000 steps at 4 ms (4 s): a configuration job waits at most 10 boxes of 0.3 s
    (750 steps) for its report, so no configuration measures evaluation; the k = 1 run to the
    end of the first epoch may take 3 x time_limit_s (6 s, 1500 steps) and does. Its
    evaluation is kept (it was dropped, and the profile said 0)."""
    profiler = Profiler(busy_plan(time_limit_s=2.0), tmp_path, progress=lambda line: None)
    profiler.step_estimates[1] = 0.004
    launcher = LoopLauncher(step_s=0.004, steps_per_epoch=1000)
    m = Measurements(step_samples={})
    profiler.measure_configs(launcher, m)
    assert all(c["eval_s"] is None for c in m.configs) and m.eval_s == []
    profiler.measure_ks(launcher, [1, 2], m)
    assert m.eval_s == [0.02] and m.steps_per_epoch[1] == 1000 and m.checkpoint_save_s == [0.001]
    assert launcher.max_steps[:4] == [750] * 4
    # that run goes one step past its report: (step 1001 - step 1000) - eval - timed save and restore - one step
    assert m.decision_latency_s == [pytest.approx(0.0, abs=1e-12)]
    assert profiler.boundary_missing(m) == []


def test_runs_under_load_are_extended_until_they_see_an_epoch_boundary(tmp_path):
    """Epochs of 1000 steps of 1/256 s while every time box is sized for less. The
    configuration jobs (10 boxes of 0.3 s = 768 steps), the k rounds (0.25 s = 64 steps) and
    the first run to a boundary (3 x time_limit_s = 768 steps) all end inside the first epoch;
    the next run may take 4x the steps (capped at max_steps, 3000) and reaches step 1000. Then
    the epoch's length is known, so every start-up job runs on to its first report: nothing is
    left unmeasured."""
    step = 1 / 256
    profiler = Profiler(busy_plan(), tmp_path, progress=lambda line: None)
    profiler.step_estimates[1] = step
    launcher = LoopLauncher(step_s=step, steps_per_epoch=1000)
    m = Measurements(step_samples={})
    profiler.measure_configs(launcher, m)
    assert m.eval_s == [] and 1 not in m.startup_s  # no configuration job reported
    profiler.measure_ks(launcher, [1, 2], m)
    # after 4 configuration jobs and 2 x 4 rounds: a run capped at 768 steps, then one at 3000 (+1: the step after)
    assert launcher.max_steps[12:14] == [769, 3001]
    assert m.steps_per_epoch[1] == 1000 and m.eval_s == [0.02] and m.checkpoint_save_s == [0.001]
    assert m.checkpoint_restore_s == [0.002] and len(m.decision_latency_s) == 1
    # at each k: start-up from startup_jobs = 2 fresh jobs, capped at two epochs (2 x 1000 + 3 warm-up + 2),
    # then 2 pause-and-resume pairs, capped at three epochs (3 x 1000 + 3 warm-up); the paused jobs'
    # start-ups count too
    assert launcher.max_steps[14:] == ([2005] * 2 + [3003] * 4) * 2
    assert len(m.startup_s[1]) == 4 and len(m.startup_s[2]) == 4
    assert len(m.pause_s[1]) == 2 and len(m.resume_s[2]) == 2
    # first report at 0.05 + 999 steps + 20 ms eval + 1 ms, less one epoch (1000 steps + 20 ms)
    assert m.startup_s[2] == pytest.approx([0.05 + 999 * step + 0.021 - (1000 * step + 0.02)] * 4)
    profiler.check_complete(m)
    assert m.assumed == {} and m.assumptions() == {}


def test_what_no_run_could_see_is_listed_as_assumed_with_one_line_each(tmp_path):
    """Epochs of 10^6 steps, runs capped at 3000 (calibration.max_steps): no run ever reports.
    The profile then lists evaluation, checkpoint, the boundary's rest and start-up under
    `assumed:` with a reason each (printed as warnings), and its `measured:` block holds none
    of them, rather than 0 as if measured."""
    from nasalloc.calibration.calibrate import assumption_warnings
    from nasalloc.calibration.report import WorkloadFacts, build_profile

    step = 1 / 256
    profiler = Profiler(busy_plan(share=[2]), tmp_path, progress=lambda line: None)
    profiler.step_estimates[1] = step
    launcher = LoopLauncher(step_s=step, steps_per_epoch=10**6)
    m = Measurements(step_samples={}, batch_fraction={1: 1.0, 2: 0.5})
    profiler.measure_configs(launcher, m)
    profiler.measure_ks(launcher, [1, 2], m)
    assert launcher.max_steps[12:14] == [769, 3001]  # extended once, to calibration.max_steps, and no further
    profiler.check_complete(m)
    expected = {"eval_s", "decision_latency_s", "checkpoint_save_s", "checkpoint_restore_s", "startup_s", "release_s",
                "sharing.2"}
    assert set(m.assumptions()) == expected
    assert all("\n" not in line and "not measured" in line for line in m.assumptions().values())
    assert "calibration.max_steps=3000" in m.assumptions()["eval_s"]
    a = analyse(m, FitSettings(gpus_per_node=2), bootstrap=0, rng=np.random.default_rng(0))
    profile = build_profile("p", "d", m, a, WorkloadFacts("x:y", 1000, 32, "strong", 32, False), [])
    assert expected <= set(profile["assumed"])
    assert not expected & set(profile["measured"])
    assert set(profile["measured"]["not_measured"]) == expected
    lines = assumption_warnings(m, a)
    assert len(lines) == len(expected) + 1 and any(line.startswith("grad_bytes: not counted") for line in lines)


def test_without_a_step_time_at_every_k_calibration_stops_with_one_line(tmp_path):
    from nasalloc.calibration.profiling import ProfilingFailed

    profiler = Profiler(busy_plan(), tmp_path, progress=lambda line: None)
    m = Measurements(step_samples={1: np.full(20, 0.004), 2: np.array([0.003])})
    with pytest.raises(ProfilingFailed, match=r"no step time measured at k=2 \(fewer than 2 timed steps\)") as info:
        profiler.check_complete(m)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("k2_ms, note", [(4.0, "k=2 (0.73)"), (1.8, None)])
def test_baselines_that_cannot_fit_a_speed_up_below_1_say_so_instead_of_a_flat_line(k2_ms, note, tmp_path):
    """Strong scaling, k = 1 at 2.904 ms per step, k = 2 at half the batch per rank.
    At 4.0 ms the speed-up is 2 x 0.5 x 2.904 / 4.0 = 0.726: Amdahl and linear (both >= 1)
    cannot fit it, and the report says so instead of a flat line through neither point. At
    1.8 ms (speed-up 1.61) they fit and are shown."""
    from rich.console import Console

    from nasalloc.calibration.report import WorkloadFacts, build_profile, plot_speedup, summary_table

    rng = np.random.default_rng(0)
    m = Measurements(step_samples={1: 2.904e-3 * (1 + 0.01 * rng.standard_normal(50)),
                                   2: k2_ms * 1e-3 * (1 + 0.01 * rng.standard_normal(50))},
                     batch_fraction={1: 1.0, 2: 0.5})
    a = analyse(m, FitSettings(gpus_per_node=2), bootstrap=0, rng=rng)
    w = WorkloadFacts("x:y", 1184, 32, "strong", 32, False)
    profile = build_profile("p", "d", m, a, w, [])
    console = Console(record=True, width=200)
    console.print(summary_table(m, a, profile))
    text = console.export_text()
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    rows = [row for row in cells if row[0] in ("1", "2")]
    assert len(rows) == 2
    if note is None:
        assert a.baselines_note is None and set(profile["fit"]["baselines"]) == {"amdahl", "linear"}
        assert all(row[4] != "n/a" for row in rows)
    else:
        assert note in a.baselines_note and "cannot fit" in a.baselines_note
        assert profile["fit"]["baselines"] == {"cannot_fit": a.baselines_note}
        assert [row[4:6] for row in rows] == [["n/a", "n/a"]] * 2 and "cannot fit" in text
    plot_speedup(m, a, w, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").stat().st_size > 0


class PausingLauncher(LoopLauncher):
    """LoopLauncher whose resumed jobs (start_epoch > 0) start 30 ms later than fresh ones and
    whose paused jobs end 15 ms after their last report (1 ms otherwise)."""

    def run(self, *args, start_epoch=0, pause=False, **kwargs):
        r = super().run(*args, **kwargs)
        shift = 0.03 if start_epoch else 0.0
        r.reports = [(t + shift, *rest) for t, *rest in r.reports]
        r.step_times = [[x + shift for x in r.step_times[0]]]
        r.wall_s = r.reports[-1][0] + (0.015 if pause else 0.001)
        return r


def test_pause_and_resume_are_measured_as_a_paused_trial_resumed_in_a_fresh_job(tmp_path):
    """Fresh jobs start 0.05 s before their first step; a step takes 4 ms (37 per epoch), the
    evaluation 20 ms, the report 1 ms after it: a fresh start-up is 0.05 - 0.004 + 0.001 =
    0.047 s, a resumed one 0.03 s more, a pause 15 ms. The profile's restore is what a resume
    costs beyond the start-up, its release the pause less the epoch boundary and the save."""
    from types import SimpleNamespace

    from nasalloc.calibration.report import release_cost, resume_cost, resume_fit

    profiler = Profiler(busy_plan(), tmp_path, progress=lambda line: None)
    m = Measurements(step_samples={}, steps_per_epoch={1: 37})
    profiler.measure_pause_resume(PausingLauncher(step_s=0.004, steps_per_epoch=37), 1, m)
    assert m.pause_s[1] == pytest.approx([0.015] * 2)
    assert m.startup_s[1] == pytest.approx([0.047] * 2)
    assert m.resume_s[1] == pytest.approx([0.077] * 2)
    assert resume_cost(m, SimpleNamespace(startup=LineFit(0.047, 0.0, True),
                                          settings=SimpleNamespace(gpus_per_node=2))) == pytest.approx(0.03)
    m.decision_latency_s, m.checkpoint_save_s = [0.002], [0.003]
    release = release_cost(m)
    assert (release.base, release.per_doubling) == pytest.approx((0.010, 0.0))  # one k: no slope
    resume = resume_fit(m, INSIDE_ONE_NODE)
    assert (resume.base, resume.per_doubling) == (pytest.approx(0.077), 0.0)


def test_resume_and_release_are_fitted_per_k():
    """The quiet machine's calibration: resumed jobs cost 6.4 ms at k = 1 and 28 ms
    at k = 2, pauses 6 ms and 17.5 ms, with 3.2 ms of them the epoch boundary and the save.
    One pooled restore and release put about the same on both k; per k (log2 k = 0, 1):
    resume(k) = 6.4 ms + 21.6 ms x log2 k, release(k) = 2.8 ms + 11.5 ms x log2 k."""
    from nasalloc.calibration.report import release_cost, resume_fit

    m = Measurements(step_samples={}, resume_s={1: [0.0054, 0.0074], 2: [0.027, 0.029]},
                     pause_s={1: [0.005, 0.007], 2: [0.017, 0.018]},
                     decision_latency_s=[0.002], checkpoint_save_s=[0.0012])
    release = release_cost(m)
    assert (release.base, release.per_doubling) == pytest.approx((0.006 - 0.0032, 0.0175 - 0.006))
    fit = resume_fit(m, INSIDE_ONE_NODE)
    assert fit.base == pytest.approx(0.0064) and fit.per_doubling == pytest.approx(0.028 - 0.0064)
    assert resume_fit(Measurements(step_samples={}), INSIDE_ONE_NODE) is None  # imported timings: start-up + restore stands for it


def test_every_shipped_scheduler_is_timed_through_a_whole_search():
    """Each shipped scheduler runs its shipped search (BOHB: 49 trials over the digits space)
    through the dispatch core; the block has a positive, finite time per ask and per result
    for each (the values are this machine's: only their presence and sign are checked)."""
    from nasalloc.calibration.calibrate import builtin_space
    from nasalloc.calibration.scheduler_time import time_schedulers
    from nasalloc.sim.profile import load_profile
    from nasalloc.sim.schedulers import scheduler_names

    times = time_schedulers(builtin_space(DIGITS), load_profile("digits_cpu"))
    assert sorted(times) == scheduler_names()
    for t in times.values():
        assert set(t) == {"ask_s", "result_s"}
        assert all(0 < v < 1 for v in t.values())
