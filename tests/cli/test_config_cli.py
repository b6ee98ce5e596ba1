"""``moc config show | keys`` through ``moc.cli.main``: what they print loads back to the same run config."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc.cli import main
from moc.config import RunConfig, load_config
from moc.configio import field_paths


def test_show_prints_the_resolved_run_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", "tiny-moc", "--set", "memory.top_k=2"]) == 0
    out = capsys.readouterr().out
    shown = tmp_path / "shown.yaml"
    shown.write_text(out)
    assert load_config(shown) == load_config("tiny-moc", ["memory.top_k=2"])


def test_keys_lists_every_run_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == field_paths(RunConfig)
    assert any(line.split()[:3] == ["memory.top_k", "64", "(int)"] for line in lines)


def test_an_experiment_name_points_to_the_lab(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("moc config show: no config preset or file named 'smoke'")
    assert err.endswith("an experiment config? run: moc-lab config show smoke\n")


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "tiny-moc", "--set", "memory.top_kk=2"]) == 2
    err = capsys.readouterr().err
    assert err == "moc config show: unknown key memory.top_kk (did you mean 'top_k'?)\n"
