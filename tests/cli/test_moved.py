"""``moc experiment | demo | report`` moved to ``moc-lab``: each says so in one line, with the new command."""

from __future__ import annotations

import pytest

from moc.cli import main


@pytest.mark.parametrize(
    ("argv", "new"),
    [
        (["experiment", "capacity-bits", "--plan"], "moc-lab run capacity-bits --plan"),
        (["demo", "--out", "runs/my demo", "--text"], "moc-lab demo --out 'runs/my demo' --text"),
        (["report", "runs/demo", "--help"], "moc-lab report runs/demo --help"),
    ],
)
def test_a_moved_command_names_its_replacement(
    capsys: pytest.CaptureFixture[str], argv: list[str], new: str
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"moc {argv[0]}: `moc {argv[0]}` moved")
    assert f"run: {new} (or python -m moc_experiments ...)" in err
