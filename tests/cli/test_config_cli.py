"""``moc config show | keys`` through ``moc.cli.main``: what they print loads back to the same config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from moc.cli import main
from moc.config import RunConfig, load_config
from moc.configio import field_paths
from moc_experiments.experiment.capacity import CapacityConfig, load_capacity
from moc_experiments.experiment.config import ExperimentConfig, load_experiment


def test_show_prints_the_resolved_run_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["config", "show", "tiny-moc", "--set", "memory.top_k=2"]) == 0
    out = capsys.readouterr().out
    shown = tmp_path / "shown.yaml"
    shown.write_text(out)
    assert load_config(shown) == load_config("tiny-moc", ["memory.top_k=2"])


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


@pytest.mark.parametrize(
    ("extra", "cls"),
    [([], RunConfig), (["--experiment"], ExperimentConfig), (["--capacity"], CapacityConfig)],
)
def test_keys_lists_every_key(capsys: pytest.CaptureFixture[str], extra: list[str], cls: type) -> None:
    assert main(["config", "keys", *extra]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == field_paths(cls)
    if cls is RunConfig:
        assert any(line.split()[:3] == ["memory.top_k", "64", "(int)"] for line in lines)


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "tiny-moc", "--set", "memory.top_kk=2"]) == 2
    err = capsys.readouterr().err
    assert err == "moc config show: unknown key memory.top_kk (did you mean 'top_k'?)\n"
