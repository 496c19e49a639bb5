"""backend=ray on a Ray cluster this module starts itself: 3 "nodes" of 2 CPU slots, all on
127.0.0.1, shut down at the end.

Set-up that must hold on a fresh machine (one where Ray never ran) and write nothing outside
the cluster's own temporary folder: `execute/local_ray_cluster.py`, whose environment
tests/conftest.py prepares before anything imports `ray`.

After every run, failed or killed ones included, no rank actor and no placement group may
be left in the cluster (`leftovers`, read from the cluster's control store).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")

from nasalloc.execute.local_ray_cluster import local_ray_cluster  # noqa: E402

from nasalloc.execute.ray_backend import leftovers  # noqa: E402
from nasalloc.execute.run import settings_from  # noqa: E402
from nasalloc.execute.search import run_search  # noqa: E402
from nasalloc.execute.trainers.toy import curve, profile_data  # noqa: E402
from nasalloc.sim.cluster import ClusterSpec, parse_allocation  # noqa: E402
from nasalloc.sim.engine import SimulationSpec, simulate  # noqa: E402
from nasalloc.sim.profile import parse_profile  # noqa: E402
from nasalloc.sim.schedulers import scheduler_config  # noqa: E402
from nasalloc.sim.space import SearchSpace  # noqa: E402
from nasalloc.sim.trace import read_trace  # noqa: E402
from test_drivers_equivalent import SPACE, TOY, ToyCurves, closest_epoch_ends, decisions  # noqa: E402
from test_execute import Budget, check_history, toy_raw, wait_for  # noqa: E402
from test_sim_support import scheduler_node  # noqa: E402

pytestmark = pytest.mark.slow

NODES, SLOTS = 3, 2
SLOT = "cpu_slot"


@pytest.fixture(scope="module")
def cluster() -> Any:
    """The module's Ray cluster; the test process is connected to it by the first run."""
    with local_ray_cluster(NODES, SLOTS, SLOT) as c:
        yield c


def ray_raw(cluster: Any, scheduler: dict[str, Any], **top: Any) -> dict[str, Any]:
    raw = toy_raw(scheduler, **top)
    raw.update(backend="ray", ray={**raw["ray"], "address": cluster.address, "slot_resource": SLOT})
    return raw


def assert_nothing_left(budget: Budget) -> None:
    """No rank actor and no placement group of any run is alive (Ray removes those of a
    killed executor's job by itself, a little later)."""
    if not ray.is_initialized():
        return
    wait_for(lambda: leftovers() == ([], []), budget, "Ray to hold no rank actor or placement group")


SCALE = 3.0  # epoch times 3x those of test_drivers_equivalent: a 6-rank epoch must still end well apart
MARGIN_RAY_S = 0.25  # least time between two trials' epoch ends in the simulated trace (Ray adds more per epoch)


def scaled_toy() -> tuple[dict[str, Any], Any]:
    """test_drivers_equivalent's toy space and profile with every epoch time `SCALE` x longer."""
    space = copy.deepcopy(SPACE)
    low, high = space["epoch_s"]["low"] * SCALE, space["epoch_s"]["high"] * SCALE
    space["epoch_s"].update(low=low, high=high)
    return space, parse_profile(profile_data(SLOTS, low, high, steps=4), "toy profile")


def test_per_rung_search_across_nodes_makes_the_simulators_decisions_on_the_same_devices(cluster: Any,
                                                                                         tmp_path: Path) -> None:
    """k = 1, then 2 (inside one node), then 6 (all three nodes, one gloo group of 6 actors):
    every trial's events, devices included, are those of the simulator on a cluster of 3
    nodes of 2 (same scheduler, seed and epoch times; see test_drivers_equivalent)."""
    budget = Budget(200)
    sched = {"name": "asha", "n_trials": 4, "max_epochs": 9, "eta": 3}
    schedule = [1, 2, 6]
    seed = 194
    space, profile = scaled_toy()
    spec = ClusterSpec(name="3 nodes", gpus=NODES * SLOTS, gpus_per_node=SLOTS)
    sim = simulate(SimulationSpec(
        scheduler=scheduler_config(scheduler_node(sched)), workload=ToyCurves(SearchSpace.from_config(space)),
        profile=profile, cluster=spec, allocation=parse_allocation(schedule, spec), seed=seed)).events
    assert closest_epoch_ends(sim) >= MARGIN_RAY_S, f"seed {seed}: epochs end too close in the simulated trace"
    raw = ray_raw(cluster, sched, gpus_per_trial=schedule, seed=seed)
    raw["train"] = {"name": "toy", "entrypoint": TOY, "space": space,
                    "params": {"steps_per_epoch": 4, "scaling": "strong", "faults": []}}
    summary = run_search(settings_from(raw), tmp_path)
    real = read_trace(tmp_path / "trace.jsonl")
    assert decisions(real) == decisions(sim)
    assert any(len(ev.devices) == NODES * SLOTS for ev in real if ev.event == "result"), "no trial ran on all nodes"
    assert any(len(ev.devices) == SLOTS for ev in real if ev.event == "result"), "no trial ran at k=2"
    pairs = {ev.devices for ev in real if ev.event == "result" and len(ev.devices) == SLOTS}
    assert pairs <= {(0, 1), (2, 3), (4, 5)}, f"k=2 not packed inside one node: {pairs}"
    assert summary["backend"] == "ray" and summary["gpus_per_node"] == SLOTS
    assert_nothing_left(budget)


def test_shared_slots_with_a_crashed_actor_and_a_hung_rank_retry_and_complete(cluster: Any, tmp_path: Path) -> None:
    """k = 1/2 (two actors per slot, 12 in all): trial 0's actor dies at epoch 2 (os._exit:
    the actor crashes), trial 1 hangs at epoch 2 and only the timeout ends it; both are
    retried from their checkpoint and every trial's metrics follow the toy curve."""
    budget = Budget(280)
    faults = [{"trial": 0, "epoch": 2, "mode": "exit"}, {"trial": 1, "epoch": 2, "mode": "hang"}]
    raw = ray_raw(cluster, {"n_trials": 8, "max_epochs": 3, "max_retries": 1}, gpus_per_trial="1/2", faults=faults,
                  trial_timeout_s=8)
    summary = run_search(settings_from(raw), tmp_path)
    events = read_trace(tmp_path / "trace.jsonl")
    check_history(events)
    fails = {ev.trial: ev for ev in events if ev.event == "fail"}
    assert set(fails) == {0, 1}
    assert "died" in fails[0].info and fails[0].resume_epoch == 1
    assert "no report for 8 s" in fails[1].info and fails[1].resume_epoch == 1
    assert summary["completed"] == 8 and summary["failed"] == 0
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    results = [(ev.trial, ev.epoch, ev.metric) for ev in events if ev.event == "result"]
    assert len(results) == 8 * 3
    assert all(m == pytest.approx(curve(configs[t]["quality"], e)) for t, e, m in results)
    assert len({d for ev in events if ev.event == "start" for d in ev.devices}) == NODES * SLOTS
    assert_nothing_left(budget)


def search_in_thread(raw: dict[str, Any], run_dir: Path) -> tuple[threading.Thread, dict[str, Any]]:
    """`run_search` started in a thread (Ray adds and removes nodes from the main thread
    only) -> the thread and what it leaves: "summary", or "error" (the exception it raised)."""
    outcome: dict[str, Any] = {}

    def search() -> None:
        try:
            outcome["summary"] = run_search(settings_from(raw), run_dir)
        except BaseException as exc:  # noqa: BLE001 - the test examines it
            outcome["error"] = exc

    runner = threading.Thread(target=search, daemon=True)
    runner.start()
    return runner, outcome


def test_a_node_lost_mid_search_fails_its_trials_which_are_retried_and_the_search_completes(cluster: Any,
                                                                                            tmp_path: Path) -> None:
    """The raylet of a worker node is killed (with every process of that node) while trials
    run on it; a node joins in its place, as a cluster manager would bring one back."""
    budget = Budget(280)
    raw = ray_raw(cluster, {"n_trials": 6, "max_epochs": 6, "max_retries": 2}, trial_timeout_s=60)
    raw["train"]["params"]["epoch_s"] = 0.5
    trace = tmp_path / "trace.jsonl"
    runner, outcome = search_in_thread(raw, tmp_path)
    wait_for(lambda: trace.is_file() and trace.read_text().count('"result"') >= 6, budget, "6 results")
    lost = next(iter(cluster.worker_nodes))
    cluster.remove_node(lost, allow_graceful=False)
    cluster.add_node(**cluster.node_args)
    runner.join(timeout=budget.left())
    assert not runner.is_alive(), "the search did not end"
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]
    events = read_trace(trace)
    check_history(events)
    fails = [ev for ev in events if ev.event == "fail"]
    # its ranks died; a retry sent to a replacement actor that the dying node took down too
    # fails while that actor starts
    assert fails and all("died" in ev.info or "while starting" in ev.info for ev in fails), [ev.info for ev in fails]
    assert summary["completed"] + summary["stopped"] == 6 and summary["failed"] == 0
    configs = {ev.trial: ev.config for ev in events if ev.event == "start"}
    assert all(ev.metric == pytest.approx(curve(configs[ev.trial]["quality"], ev.epoch))
               for ev in events if ev.event == "result")
    assert_nothing_left(budget)


def test_a_node_lost_for_good_ends_the_run_in_bounded_time_with_one_line(cluster: Any, tmp_path: Path,
                                                                        monkeypatch: Any) -> None:
    """A worker node is stopped and none joins in its place: the retries sent to its devices
    wait for actors that cannot start. Once they have not started within the workers' start
    timeout (8 s here instead of 120 s), the run ends with `WorkersDidNotStart` naming the
    likely cause, and nothing of it is left in the cluster. Then a node joins again (for the
    tests after this one)."""
    from nasalloc.execute import backend as backend_module
    from nasalloc.execute.backend import WorkersDidNotStart

    monkeypatch.setattr(backend_module, "WORKER_START_TIMEOUT_S", 8.0)
    budget = Budget(200)
    raw = ray_raw(cluster, {"n_trials": 12, "max_epochs": 6, "max_retries": 3}, trial_timeout_s=60)
    raw["train"]["params"]["epoch_s"] = 0.5
    trace = tmp_path / "trace.jsonl"
    runner, outcome = search_in_thread(raw, tmp_path)
    try:
        wait_for(lambda: trace.is_file() and trace.read_text().count('"result"') >= 6, budget, "6 results")
        # graceful: its raylet tells the cluster it is gone, so the tests after this one do not
        # find it still counted alive (an ungraceful loss is noticed after missed heartbeats)
        cluster.remove_node(next(iter(cluster.worker_nodes)), allow_graceful=True)
        runner.join(timeout=budget.left())
        assert not runner.is_alive(), "the run did not end"
        error = outcome.get("error")
        assert isinstance(error, WorkersDidNotStart), outcome
        assert "was not ready 8 s after it was started, and a trial waits for it" in str(error)
        assert "was a node lost" in str(error) and "\n" not in str(error)
        assert_nothing_left(budget)
        assert any(ev.event == "fail" and "died" in ev.info for ev in read_trace(trace, tolerate_torn_tail=True))
    finally:
        cluster.add_node(**cluster.node_args)
        wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == NODES, Budget(60), f"{NODES} nodes alive")


def test_driver_killed_then_resumed_leaves_nothing_behind_and_completes(cluster: Any, tmp_path: Path) -> None:
    budget = Budget(280)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "nasalloc", "run", "train=toy", "scheduler=asha", "scheduler.n_trials=6",
            "scheduler.max_epochs=9", "train.params.epoch_s=0.2", "progress=plain", f"out_dir={out}",
            "backend=ray", f"ray.address={cluster.address}", f"ray.slot_resource={SLOT}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trace = out / "trace.jsonl"
    try:
        wait_for(lambda: trace.is_file() and trace.read_text().count('"result"') >= 6, budget, "6 results")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=budget.left())
    finally:
        if proc.poll() is None:
            proc.kill()
    ray.init(address=cluster.address, ignore_reinit_error=True, log_to_driver=False)
    assert_nothing_left(budget)  # the killed driver's actors and placement groups are gone
    old = read_trace(trace, tolerate_torn_tail=True)
    done = subprocess.run([sys.executable, "-m", "nasalloc", "run", f"resume={out}", "progress=plain"],
                          capture_output=True, text=True, timeout=budget.left())
    assert done.returncode == 0, done.stderr[-2000:]
    events = read_trace(trace)
    check_history(events)
    assert events[: len(old)] == old
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] and summary["backend"] == "ray"
    assert summary["completed"] + summary["stopped"] == 6
    assert_nothing_left(budget)


# ----- nasalloc calibrate backend=ray, then a run with that profile, then validate -------------
# Tiny settings: every k once for ~1 s, one start-up job per k, no sharing, no sampled
# configurations; the test asserts what was measured and where, never how fast.
CALIBRATE_TINY = ["calibration.device=cpu", "calibration.share=[]", "calibration.time_limit_s=1",
                  "calibration.rounds=1", "calibration.pilot_steps=10", "calibration.warmup_steps=3",
                  "calibration.configs=0", "calibration.startup_jobs=1", "calibration.bootstrap=0",
                  "calibration.checkpoints=1", "calibration.fill_devices=false"]


def rank_actors() -> dict[str, str]:
    """Every rank actor the cluster has seen, dead or alive: actor id -> its node's id."""
    if not ray.is_initialized():
        return {}
    return {a["ActorID"]: a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if "RankActor" in str(a.get("ActorClassName", ""))}


def test_calibrate_on_ray_measures_across_nodes_and_validate_reads_a_ray_run_with_that_profile(
        cluster: Any, tmp_path: Path, capsys: Any) -> None:
    """calibrate backend=ray on 3 nodes of 2 slots: the default k list is 1, 2, 4 (doubling up
    to the 6 slots), k = 4 spans two nodes, so the inter-node bandwidth and the start-up per
    doubling come from measurements; then `nasalloc run backend=ray` with that profile, and
    `nasalloc validate` re-simulates it on the run's 3 nodes of 2 with a per-term report."""
    from nasalloc.cli import main
    from nasalloc.sim.profile import load_profile

    budget = Budget(280)
    where = ["backend=ray", f"ray.address={cluster.address}", f"ray.slot_resource={SLOT}"]
    cal = tmp_path / "cal"
    before = rank_actors()
    rc = main(["calibrate", *where, *CALIBRATE_TINY, f"out_dir={cal}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    # the jobs ran on rank actors of the cluster: one per device used (k up to 4, no load, no
    # sharing), on the two nodes that devices 0-3 number
    actors = {a: node for a, node in rank_actors().items() if a not in before}
    assert len(actors) == 4 and len(set(actors.values())) == 2, actors
    data = yaml.safe_load((cal / "profile.yaml").read_text())
    profile = load_profile(cal / "profile.yaml")
    measured = data["measured"]
    assert sorted(measured["step_time_samples_s"]) == [1, 2, 4]
    assert sorted(measured["startup_s"]) == [1, 2, 4]
    assert data["hardware"]["gpus_per_node"] == SLOTS
    assert data["hardware"]["ray"] == {"nodes": NODES, "devices_per_node": SLOTS, "cpus_per_node": SLOTS, "resource": SLOT}
    assert data["hardware"]["threads_per_rank"] == 1  # a node's 2 CPUs over its 2 slots, as the Ray run counts them
    assert profile.provenance["how"] == f"nasalloc calibrate backend=ray (Ray, {NODES} nodes of {SLOTS} {SLOT})"
    assert {"intra_bandwidth_Bps", "inter_bandwidth_Bps"} <= set(data["fit"]["fitted"])
    assert "inter_bandwidth_Bps" not in profile.assumed and "startup_per_doubling_s" not in profile.assumed
    assert data["fit"]["startup"]["slope_assumed"] is False
    # k = 1, 2 inside a node give the line (least squares through two k passes through their
    # means; a falling line is held flat at the mean of all), k = 4 over two nodes the step
    # above it: the k = 4 jobs' mean excess over the line, at least 0
    assert "k > gpus_per_node" in data["fit"]["startup"]["equation"]
    at = {int(k): float(np.mean(v)) for k, v in measured["startup_s"].items()}
    rise = at[2] - at[1]
    line_at_4 = at[1] + 2 * rise if rise >= 0 else float(np.mean(measured["startup_s"][1] + measured["startup_s"][2]))
    assert data["overheads"]["startup_inter_node_s"] == pytest.approx(max(0.0, at[4] - line_at_4), abs=1e-5)
    assert "first_job_startup_s" not in data["hardware"]  # another node's clock: not subtracted
    assert_nothing_left(budget)

    run_dir = tmp_path / "run"
    rc = main(["run", *where, "train=digits", "scheduler=asha", "scheduler.n_trials=4", "scheduler.max_epochs=3",
               "gpus_per_trial=2", f"profile={cal / 'profile.yaml'}", "progress=none", f"out_dir={run_dir}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert_nothing_left(budget)
    val = tmp_path / "val"
    rc = main(["validate", f"run={run_dir}", "plots=false", f"out_dir={val}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    report = json.loads((val / "validation.json").read_text())["runs"][0]
    assert (report["devices"], report["gpus_per_node"]) == (NODES * SLOTS, SLOTS)  # the Ray run's nodes, from ran_on
    assert report["makespan_s"]["error"] is not None and report["epoch_s"] and report["startup_s"]
    assert f"on {NODES * SLOTS} devices ({NODES} nodes of {SLOTS})" in out and "error per term" in out


@pytest.mark.parametrize("args, needle", [
    (["ray.slot_resource=tpu_slot"], "backend=ray devices=cpu: no node of the Ray cluster offers a custom resource 'tpu_slot'"),
    (["calibration.gpus_per_node=4"], "calibration.gpus_per_node=4: the Ray cluster's nodes hold 2 devices each"),
    (["calibration.cpu_slots=4"], "calibration.cpu_slots=4: with backend=ray ray.address="),
    (["calibration.gpus_per_trial=[1,8]"], "k=8 is more than the 6 CPU slots of the Ray cluster"),
])
def test_calibrate_on_ray_refuses_what_the_cluster_cannot_hold_in_one_line(cluster: Any, tmp_path: Path, capsys: Any,
                                                                           args: list[str], needle: str) -> None:
    from nasalloc.cli import main

    rc = main(["calibrate", "backend=ray", f"ray.address={cluster.address}", "calibration.device=cpu", *args,
               f"out_dir={tmp_path / 'out'}"])
    _, err = capsys.readouterr()
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
