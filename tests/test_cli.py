"""The `nasalloc` dispatcher: help, unknown commands, bad overrides (one line, exit 2, nothing written)."""

from __future__ import annotations

import subprocess
import sys

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
