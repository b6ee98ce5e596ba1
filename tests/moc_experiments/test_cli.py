"""``moc-lab`` (``moc_experiments.cli``): config show/keys per kind, errors in one line, the module entry
point. Running experiments through it is tested with each experiment (tests/moc_experiments/experiment)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from moc.configio import field_paths
from moc_experiments.cli import main
from moc_experiments.experiment.capacity import CapacityConfig, load_capacity
from moc_experiments.experiment.protocol.config import ExperimentConfig, load_experiment


def test_show_resolves_an_experiment_preset_and_its_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["config", "show", "smoke", "--set", "pretrain.steps=7"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert "base" not in d["moc"] and d["moc"]["memory"]["enabled"] is True  # the model's base: followed
    shown = tmp_path / "smoke.yaml"
    shown.write_text(yaml.safe_dump(d))
    again, want = load_experiment(shown), load_experiment("smoke", ["pretrain.steps=7"])
    assert again.pretrain.steps == 7 and again.moc_config == want.moc_config
    assert again.data == want.data and again.ift == want.ift


def test_show_resolves_a_capacity_preset(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", "capacity-demo", "--set", "seeds=2"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    shown = tmp_path / "cap.yaml"
    shown.write_text(yaml.safe_dump({"kind": "capacity", **d}))
    assert load_capacity(str(shown)) == load_capacity("capacity-demo", ["seeds=2"])


@pytest.mark.parametrize(("extra", "cls"), [([], ExperimentConfig), (["capacity"], CapacityConfig)])
def test_keys_lists_every_key(capsys: pytest.CaptureFixture[str], extra: list[str], cls: type) -> None:
    assert main(["config", "keys", *extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == field_paths(cls)


def test_an_unknown_experiment_names_every_preset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "capacty-bits", "--plan"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("moc-lab run: no experiment preset or file named 'capacty-bits' (did you mean")
    from moc_experiments.experiment.capacity import capacity_presets
    from moc_experiments.experiment.protocol.config import experiment_presets

    listed = err.split("presets: ", 1)[1].strip().split(", ")
    assert listed == [*experiment_presets(), *capacity_presets()]  # every preset, protocol first


def test_report_of_a_missing_run_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    missing = tmp_path / "missing"
    assert err == f"moc-lab report: {missing} does not exist; run `moc-lab run ...` first\n"


def test_report_of_an_unknown_kind_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text('{"kind": "other"}')
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == "moc-lab report: results of unknown kind 'other'; known: protocol, capacity\n"


def test_python_dash_m_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moc_experiments", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: moc-lab ")
