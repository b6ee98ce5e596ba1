"""First-run friction: the sample shipped with moc makes the documented data and IFT commands run as
written, and writing it never overwrites a user's files; every command group has a help description."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from moc.cli import build_parser, main
from moc_experiments.cli import build_parser as lab_parser


def test_the_sample_runs_the_documented_data_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["data", "sample"]) == 0
    assert len(list(Path("corpus").glob("*.txt"))) == 8 and Path("chats.jsonl").is_file()
    assert (
        main(["tokenizer", "train", "--vocab-size", "8192", "corpus/", "--out", "tok", "--no-progress"]) == 0
    )
    prepare = ["data", "prepare", "corpus/", "more.jsonl", "--tokenizer", "tok", "--out", "data/corpus"]
    assert main([*prepare, "--no-progress"]) == 0
    chat = [
        "data",
        "prepare-chat",
        "chats.jsonl",
        "--tokenizer",
        "tok",
        "--out",
        "data/chat",
        "--no-progress",
    ]
    assert main(chat) == 0
    import json

    meta = json.loads(Path("data/chat/meta.json").read_text())
    # tiny-moc's windows are 128 tokens: the chat validation split holds at least one, so `moc ift` validates
    assert meta["n_tokens"]["val"] > 128 and meta["n_loss_tokens"]["train"] > 0


def test_the_sample_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "bees.txt").write_text("mine")
    (tmp_path / "chats.jsonl").write_text("mine too")
    assert main(["data", "sample", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "corpus" / "bees.txt").read_text() == "mine"
    assert (tmp_path / "chats.jsonl").read_text() == "mine too"
    assert "kept 2 existing file(s)" in capsys.readouterr().out
    assert (tmp_path / "corpus" / "stars.txt").is_file()


def _descriptions(parser: object, prefix: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for action in getattr(parser, "_actions", []):
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            if hasattr(sub, "description"):
                out[f"{prefix} {name}"] = sub.description
                out |= _descriptions(sub, f"{prefix} {name}")
    return out


@pytest.mark.parametrize("command", ["moc tokenizer", "moc data info", "moc data sample", "moc-lab report"])
def test_commands_have_a_help_description(command: str) -> None:
    found = _descriptions(build_parser(), "moc") | _descriptions(lab_parser(), "moc-lab")
    assert found[command], f"{command} has no description"


def test_the_demo_help_example_is_a_key_of_what_the_demo_runs(capsys: pytest.CaptureFixture) -> None:
    from moc_experiments.cli import main as lab_main

    with pytest.raises(SystemExit):
        lab_main(["demo", "--help"])
    example = capsys.readouterr().out.split("--set ")[-1].split()[0]  # the first example key=value
    assert lab_main(["config", "show", "capacity-bits-demo", "--set", example]) == 0
