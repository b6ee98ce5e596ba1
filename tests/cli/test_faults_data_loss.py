"""Nothing a user has made is ever lost: ``--force`` never deletes a training run, a checkpoint, the
model being exported or the working folder, and an experiment run into another experiment's folder
keeps that experiment's results aside (``results.prev-N.json``, ``report.prev-N.md``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fault_helpers import build_run, fails, tree
from moc.cli import main


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_run(tmp_path_factory.mktemp("loss"))
    shutil.copytree(root / "run", root / "run2")  # another training run, not the one exported
    return root



# (source, out, what the one line says): every out holds something an export must never replace
REFUSED = [
    ("run", "run", "holds the model being exported"),
    ("run", "run2", "is a training run or checkpoint"),
    ("run", "run2/checkpoints/step_000001", "is a training run or checkpoint"),
    ("run/checkpoints/step_000002", "run", "holds the model being exported"),
    ("run/checkpoints/step_000002", "run/checkpoints/step_000002", "holds the model being exported"),
    ("run", ".", "is the working folder"),
    ("run", "corpus", "not a moc export"),
    ("run", "data", "not a moc export"),
]


@pytest.mark.parametrize(("source", "out", "says"), REFUSED, ids=[f"{s}->{o}" for s, o, _ in REFUSED])
def test_force_never_replaces_what_is_not_an_export(
    work: Path, capsys: pytest.CaptureFixture, source: str, out: str, says: str
) -> None:
    before = tree(work)
    fails(capsys, ["export", source, out, "--force"], out, says, "--force only replaces an earlier export")
    assert tree(work) == before


def test_force_still_replaces_an_earlier_export(work: Path) -> None:
    assert main(["export", "run", "hf"]) == 0
    (Path("hf") / "stale.txt").write_text("from the earlier export")
    assert main(["export", "run", "hf", "--force"]) == 0
    assert not (Path("hf") / "stale.txt").exists() and (Path("hf") / "config.json").is_file()


# --------------------------------------------------------------------------------------------------
# The lab: an experiment run into a folder that holds other results keeps them
# --------------------------------------------------------------------------------------------------

FOREIGN = {
    "capacity results": json.dumps({"kind": "capacity", "runs": {"m": [{"seed": 0}]}}),
    "protocol results": json.dumps({"kind": "protocol", "runs": []}),
    "a list": "[1, 2]",
    "not JSON": "{half",
}


@pytest.mark.parametrize("content", list(FOREIGN.values()), ids=list(FOREIGN))
def test_a_protocol_run_keeps_earlier_results_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    from moc_experiments.experiment.protocol import runner
    from moc_experiments.experiment.protocol.config import load_experiment

    out = tmp_path / "other"
    out.mkdir()
    (out / "results.json").write_text(content)
    (out / "report.md").write_text("# the other experiment")

    class Stop(Exception):
        pass

    def stop(*a: object, **k: object) -> None:  # the run's first step after the set-aside
        raise Stop

    monkeypatch.setattr(runner, "prepare_experiment_data", stop)
    with pytest.raises(Stop):
        runner.run_experiment(load_experiment("smoke", [f"out_dir={out}"]), progress=False)
    assert (out / "results.prev-1.json").read_text() == content
    assert (out / "report.prev-1.md").read_text() == "# the other experiment"
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("content", [FOREIGN["protocol results"], FOREIGN["a list"], FOREIGN["not JSON"]])
def test_a_capacity_run_keeps_results_it_cannot_reuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    from moc_experiments.experiment import capacity, kinds

    out = tmp_path / "other"
    out.mkdir()
    (out / "results.json").write_text(content)
    (out / "results.prev-1.json").write_text("older")  # numbering goes past what exists
    seen: list[bool] = []
    monkeypatch.setattr(capacity, "run_capacity", lambda cfg, progress: seen.append(True) or {})
    cfg = kinds.CAPACITY.load("capacity-bits-smoke", [f"out_dir={out}"])
    kinds.CAPACITY.run(cfg, False)
    assert seen and (out / "results.prev-2.json").read_text() == content
    assert (out / "results.prev-1.json").read_text() == "older"


def test_a_capacity_run_leaves_its_own_results_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own kind's results stay: the pipeline reuses their runs (and keeps the rest itself)."""
    from moc_experiments.experiment import capacity, kinds

    (tmp_path / "results.json").write_text(FOREIGN["capacity results"])
    monkeypatch.setattr(capacity, "run_capacity", lambda cfg, progress: {})
    kinds.CAPACITY.run(kinds.CAPACITY.load("capacity-bits-smoke", [f"out_dir={tmp_path}"]), False)
    assert (tmp_path / "results.json").read_text() == FOREIGN["capacity results"]
