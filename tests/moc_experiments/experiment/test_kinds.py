"""The two kinds of experiment behind one shape: which kind a name, a YAML file or a results file is."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc.configio import ConfigError
from moc_experiments.errors import ExperimentError
from moc_experiments.experiment.capacity import CapacityConfig
from moc_experiments.experiment.kinds import CAPACITY, KINDS, PROTOCOL, kind_of_results, kind_of_spec
from moc_experiments.experiment.protocol.config import ExperimentConfig


def test_kind_of_a_preset_or_file(tmp_path: Path) -> None:
    assert kind_of_spec("capacity-bits-demo") is CAPACITY and kind_of_spec("smoke") is PROTOCOL
    cap, proto = tmp_path / "cap.yaml", tmp_path / "proto.yaml"
    cap.write_text("kind: capacity\nextends: capacity-smoke\n")
    proto.write_text("base: smoke\n")
    assert kind_of_spec(str(cap)) is CAPACITY and kind_of_spec(str(proto)) is PROTOCOL
    assert isinstance(CAPACITY.load(str(cap), ["seeds=1"]), CapacityConfig)
    assert isinstance(PROTOCOL.load(str(proto), []), ExperimentConfig)
    with pytest.raises(ConfigError, match=r"no experiment preset or file named 'smok' \(did you mean"):
        kind_of_spec("smok")


def test_every_preset_has_one_kind() -> None:
    names = [name for kind in KINDS.values() for name in kind.presets()]
    assert len(names) == len(set(names))  # a name cannot mean two experiments
    for kind in KINDS.values():
        assert all(kind_of_spec(name) is kind for name in kind.presets())


def test_kind_of_results() -> None:
    assert kind_of_results({"kind": "capacity"}) is CAPACITY
    assert kind_of_results({"kind": "protocol"}) is PROTOCOL
    assert kind_of_results({"name": "demo"}) is PROTOCOL  # a results file without a kind
    with pytest.raises(ExperimentError, match="unknown kind 'x'; known: protocol, capacity"):
        kind_of_results({"kind": "x"})
