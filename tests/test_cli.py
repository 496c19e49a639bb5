"""The `nasalloc` dispatcher: help, unknown commands, bad overrides (one line, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nasalloc.cli import COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_no_arguments_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: nasalloc <command>" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["simulat"]) == 2
    err = capsys.readouterr().err
    assert err == "nasalloc: unknown command 'simulat'; allowed: simulate, recommend, calibrate, run, validate\n"


def test_unknown_scheduler_option(tmp_path, capsys):
    assert main(["simulate", f"out_dir={tmp_path / 'o'}", "scheduler=foo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasalloc simulate: scheduler=foo: no such option; allowed: ") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unparseable_override(tmp_path, capsys):
    assert main(["simulate", f"out_dir={tmp_path / 'o'}", "gpus_per_trial=[1,2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasalloc simulate: cannot parse override") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unknown_key_in_a_sweep(tmp_path, capsys):
    assert main(["simulate", "-m", f"out_dir={tmp_path / 'o'}", "gpus_per_trial=1,3"]) == 2
    assert "gpus_per_trial=3: not allowed" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_console_script_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nasalloc", "simulate", f"out_dir={tmp_path / 'o'}", "gpus_per_trial=7"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gpus_per_trial=7: not allowed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


# ----- renamed settings: one line naming the new name, exit 2, nothing written ---------------
@pytest.mark.parametrize("command, override, new", [
    ("calibrate", "workload.entrypoint=x:train", "train.entrypoint"),
    ("calibrate", "workload.batch_per_device=8", "train.batch_per_device"),
    ("calibrate", "++workload.config.lr=0.1", "train.config.lr"),
    ("calibrate", "workload={}", "train"),
    ("run", "devices.threads_per_slot=2", "devices.threads_per_rank"),
    ("run", "train.entrypoint=nasalloc.execute.workloads.digits:train",
     "train.entrypoint=nasalloc.execute.trainers.digits:train"),
])
def test_an_old_setting_name_is_refused_naming_the_new_one(command, override, new, tmp_path, capsys):
    out = tmp_path / "o"
    assert main([command, f"out_dir={out}", override]) == 2
    err = capsys.readouterr().err
    old = override.lstrip("+").split("=")[0]
    assert err.count("\n") == 1 and err.startswith(f"nasalloc {command}: {old}")
    assert "renamed; use " + new in err
    assert not out.exists()


def test_an_old_setting_name_is_refused_in_sweeps_and_with_cfg(capsys):
    assert main(["run", "-m", "devices.threads_per_slot=1,2"]) == 2
    assert main(["calibrate", "workload.entrypoint=x:train", "--cfg", "job"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["nasalloc run: devices.threads_per_slot: renamed; use devices.threads_per_rank",
                   "nasalloc calibrate: workload.entrypoint: renamed; use train.entrypoint"]


def test_the_old_names_still_mean_something_where_they_were_not_renamed(tmp_path, capsys):
    """`workload` is the simulator's learning-curve model: simulate and recommend keep it."""
    assert main(["simulate", "workload.rank_fidelity=0.9", "plots=false", f"out_dir={tmp_path / 'o'}"]) == 0
    assert (tmp_path / "o" / "summary.json").is_file()


def test_a_recorded_search_path_chooses_the_replay_workload(tmp_path, capsys):
    """`workload.path=` alone means the replay workload (the command reads as it is
    written); an explicit other workload keeps its own settings and refuses the key."""
    from pathlib import Path

    from nasalloc import cli

    fixture = Path(__file__).resolve().parent / "fixtures" / "ray_tune" / "asha_2gpu"
    out = tmp_path / "sim"
    assert cli.main(["simulate", f"workload.path={fixture}", "scheduler.n_trials=4", "scheduler.max_epochs=4",
                     "plots=false", f"out_dir={out}"]) == 0
    assert "Ray Tune experiment" in capsys.readouterr().out
    assert cli.main(["simulate", "workload=synthetic", f"workload.path={fixture}", f"out_dir={tmp_path / 'never'}"]) == 2
    assert "workload.path" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_ctrl_c_before_a_command_wrote_anything_leaves_no_folder(tmp_path, capsys, monkeypatch):
    """Hydra makes the folder (with its .hydra record) before the command starts: a Ctrl-C in
    that moment must not leave what looks like an output folder behind."""
    import nasalloc.sim.simulate as simulate

    def interrupted(settings, out_dir):
        assert (out_dir / ".hydra").is_dir()  # Hydra's record is there when the command begins
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, "main", interrupted)
    assert main(["simulate", f"out_dir={tmp_path / 'o'}"]) == 130
    assert capsys.readouterr().err == "nasalloc simulate: interrupted (nothing written)\n"
    assert not (tmp_path / "o").exists()


def test_ctrl_c_after_a_command_wrote_something_keeps_what_it_wrote(tmp_path, capsys, monkeypatch):
    import nasalloc.sim.simulate as simulate

    def interrupted(settings, out_dir):
        (out_dir / "trace.jsonl").write_text("", encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, "main", interrupted)
    assert main(["simulate", f"out_dir={tmp_path / 'o'}"]) == 130
    assert capsys.readouterr().err == "nasalloc simulate: interrupted\n"
    assert (tmp_path / "o" / "trace.jsonl").exists() and (tmp_path / "o" / ".hydra").is_dir()


def test_run_loads_each_job_once_and_hands_that_settings_to_the_job(tmp_path, monkeypatch):
    """Validation before Hydra's folder exists loads the job; the job then runs with those very
    settings. Loading again would import the training function, connect to Ray and probe
    memory a second time."""
    import nasalloc.execute.run as run

    loads, imports, ran = [], [], []
    real_load, real_check = run.load, run.check_entrypoint

    def counting_load(cfg):
        loads.append(real_load(cfg))
        return loads[-1]

    def counting_check(entrypoint, *args):
        imports.append(entrypoint)
        real_check(entrypoint, *args)

    monkeypatch.setattr(run, "load", counting_load)
    monkeypatch.setattr(run, "check_entrypoint", counting_check)
    monkeypatch.setattr(run, "main", lambda settings, out_dir: ran.append(settings))
    assert main(["run", f"out_dir={tmp_path / 'one'}", "devices.count=1"]) == 0
    assert len(loads) == 1 and len(imports) == 1 and ran[0] is loads[0]
    # a -m sweep: one load per job, each job runs with its own
    loads.clear(), imports.clear(), ran.clear()
    assert main(["run", "-m", f"out_dir={tmp_path / 'sweep'}", "devices.count=1", "seed=1,2"]) == 0
    assert len(loads) == 2 and len(imports) == 2
    assert [s.seed for s in ran] == [1, 2] and all(any(s is l for l in loads) for s in ran)


@pytest.mark.parametrize("command, override, message", [
    # OmegaConf alone would take 1 for true, true for 1 and the text "5" for 5
    ("simulate", "plots=1", "plots=1: must be true or false"),
    ("simulate", "seed=true", "seed=True: must be an integer"),
    ("simulate", "target=nan", "target=nan: must be a number or null"),
    ("recommend", "workers=true", "workers=True: must be an integer"),
    ("recommend", "n_trials='5'", "n_trials='5': must be an integer or null"),
    ("run", "checkpoint_every=1.5", "checkpoint_every=1.5: must be an integer"),
    ("run", "unshare=0", "unshare=0: must be true or false"),
    ("calibrate", "calibration.rounds=true", "calibration.rounds=True: must be an integer"),
    ("validate", "force=1", "force=1: must be true or false"),
])
def test_a_setting_of_another_type_is_refused_not_converted(command, override, message, tmp_path, capsys):
    extra = ["run=/no/such/run"] if command == "validate" else []
    assert main([command, override, *extra, f"out_dir={tmp_path / 'never'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"nasalloc {command}: {message}\n"
    assert not (tmp_path / "never").exists()
