"""``moc export``, ``moc generate`` and ``moc chat`` from the command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from moc.cli import main


def test_export_then_generate_from_checkpoint_and_folder_agree(
    make_checkpoint, tmp_path: Path, capsys
) -> None:
    ckpt, _ = make_checkpoint()
    out = tmp_path / "hf"
    assert main(["export", str(ckpt), str(out)]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    gen = ["--prompt", "The capital of", "--max-new-tokens", "6", "--device", "cpu"]
    assert main(["generate", str(ckpt), *gen]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["generate", str(out), *gen]) == 0
    assert capsys.readouterr().out == from_ckpt and from_ckpt.startswith("The capital of")
    sample = [*gen, "--temperature", "0.9", "--top-p", "0.95", "--seed", "7"]
    assert main(["generate", str(out), *sample]) == 0
    first = capsys.readouterr().out
    assert main(["generate", str(out), *sample]) == 0
    assert capsys.readouterr().out == first


def test_chat_scripted_and_from_stdin(make_checkpoint, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ckpt, _ = make_checkpoint()
    opts = ["--max-new-tokens", "5", "--device", "cpu"]
    assert main(["chat", str(ckpt), "--message", "Hi", "--message", "Paris?", *opts]) == 0
    scripted = capsys.readouterr().out.splitlines()
    assert len(scripted) == 2
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n/reset\nHi\n"))
    assert main(["chat", str(ckpt), *opts]) == 0
    replies = capsys.readouterr().out.splitlines()
    assert replies == [scripted[0], scripted[0]]  # /reset starts the conversation over


def test_cli_errors_are_one_line_messages(make_checkpoint, tmp_path: Path, capsys) -> None:
    ckpt, _ = make_checkpoint(tokenizer=False)
    assert main(["generate", str(ckpt), "--prompt", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no tokenizer found" in err and "--tokenizer DIR" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    small, _ = make_checkpoint("model.vocab_size=256", name="small")
    assert main(["chat", str(small), "--message", "hi", "--device", "cpu"]) == 2
    assert "vocabulary mismatch" in capsys.readouterr().err
