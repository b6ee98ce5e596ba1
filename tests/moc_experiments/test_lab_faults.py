"""The lab's fault table: every bad results file is one line naming it (no traceback), and a signal
always stops the lab with exit status 130 and a message naming a command that exists."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from fault_helpers import fails
from moc.train.errors import TrainingInterrupted
from moc_experiments.cli import main as lab_main
from moc_experiments.experiment import capacity, pool
from moc_experiments.experiment.protocol import runner

HF_CONFIG = {"architectures": ["MoCForCausalLM"], "model_type": "moc", "hidden_size": 64}

# name -> (bytes of results.json, what the one line says)
BAD_RESULTS: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "is empty"),
    "truncated": (b'{"kind": "capacity", "runs": {"m": [', "is not valid JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not UTF-8 text"),
    "an empty object": (b"{}", "'models' is missing"),
    "a list": (b"[1, 2, 3]", "holds a JSON list, not a results object"),
    "kind only": (b'{"kind": "capacity"}', "'models' is missing; not a complete capacity results file"),
    "unknown kind": (b'{"kind": "bananas"}', "results of unknown kind 'bananas'"),
    "a list as kind": (b'{"kind": []}', "results of unknown kind []"),
    "an HF config.json": (json.dumps(HF_CONFIG).encode(), "'models' is missing"),
    "protocol, runs []": (
        json.dumps({"models": {}, "runs": [], "ift_runs": {}, "config": {}}).encode(),
        "holds no finished run yet",
    ),
    "capacity, runs []": (
        json.dumps(
            {"kind": "capacity", "models": {}, "runs": [], "config": {}, "world": {}, "steps": 1}
        ).encode(),
        "'runs' is a list",
    ),
    "capacity, a run cut short": (
        json.dumps(
            {
                "kind": "capacity",
                "models": {"m": {}},
                "runs": {"m": [{"seed": 0}]},
                "config": {},
                "world": {},
                "steps": 1,
            }
        ).encode(),
        "is not a complete capacity results file (KeyError",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_RESULTS))
def test_report_on_a_bad_results_file(tmp_path: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    data, says = BAD_RESULTS[case]
    (tmp_path / "results.json").write_bytes(data)
    fails(capsys, ["report", str(tmp_path)], says, command=lab_main)
    assert not (tmp_path / "report.md").exists()


def test_report_on_a_results_json_that_is_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "results.json").mkdir()
    fails(
        capsys, ["report", str(tmp_path)], "results.json is a directory, not a results file", command=lab_main
    )


# --------------------------------------------------------------------------------------------------
# Signals: exit 130, a command that exists
# --------------------------------------------------------------------------------------------------


def _interrupt(*a: object, **k: object) -> Any:
    raise KeyboardInterrupt


# (argv, the module attribute the run goes through, what the one line names)
INTERRUPTED = [
    (["run", "capacity-bits-smoke", "--out", "o"], (capacity, "run_capacity"),
     "finished runs are in o/results.json; `moc-lab run capacity-bits-smoke --out o` reuses them"),
    (["run", "smoke", "--seeds", "2"], (runner, "run_experiment"),
     "`moc-lab run smoke --seeds 2` runs the experiment again"),
    (["demo", "--out", "d"], (capacity, "run_capacity"), "`moc-lab demo --out d` reuses them"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "where", "says"), INTERRUPTED, ids=[" ".join(a) for a, _, _ in INTERRUPTED])
def test_an_interrupted_experiment_exits_130_naming_a_real_command(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    where: tuple[object, str],
    says: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(*where, _interrupt)
    line = fails(capsys, argv, "interrupted", says, code=130, command=lab_main)
    assert "--resume" not in line  # moc-lab has no --resume


def test_a_job_stopped_by_a_signal_stops_the_pool() -> None:
    """The job's TrainingInterrupted (exit 130, advice `--resume`) is an interrupt, not a failed run."""

    class Job:
        name, cost, depends_on, log_path = "j", 1.0, None, None

    def stopped(job: Job) -> dict[str, Any]:
        raise TrainingInterrupted(
            "stopped by SIGINT after step 3; ... plus --resume", step=3, checkpoint=None
        )

    with pytest.raises(KeyboardInterrupt):
        pool.execute([Job()], 1, lambda j, r: None, stopped)


class _Job:
    def __init__(self, name: str) -> None:
        self.name, self.cost, self.depends_on, self.log_path = name, 1.0, None, None


def _pid(job: _Job) -> dict[str, Any]:
    return {"pid": os.getpid()}


def test_with_workers_each_job_runs_in_a_fresh_process() -> None:
    """No worker process trains a second model (its heap and compiled graphs would be the first's)."""
    pids: dict[str, int] = {}

    def done(job: _Job, record: dict[str, Any]) -> None:
        pids[job.name] = record["pid"]

    pool.execute([_Job(n) for n in "abc"], 2, done, _pid)
    assert sorted(pids) == ["a", "b", "c"]
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()
