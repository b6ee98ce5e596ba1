"""``moc tokenizer train`` and ``moc data prepare | prepare-chat | info`` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from moc.cli import main


def test_cli_round_trip(tmp_path: Path, make_docs, capsys) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n\n".join(make_docs(30)))
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"q{i}"},
                        {"role": "assistant", "content": f"a{i}"},
                    ]
                }
            )
            + "\n"
            for i in range(5)
        )
    )
    tok = tmp_path / "tok"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--vocab-size",
                "300",
                str(corpus),
                "--txt-mode",
                "paragraph",
                "--out",
                str(tok),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "wrote tokenizer with 300 tokens" in capsys.readouterr().out
    args = [
        "data",
        "prepare",
        str(corpus),
        "--txt-mode",
        "paragraph",
        "--tokenizer",
        str(tok),
        "--out",
        str(tmp_path / "p"),
        "--val-fraction",
        "0.1",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "prepared" in capsys.readouterr().out
    assert main(args) == 0
    assert "reusing prepared data" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "prepare-chat",
                str(chats),
                "--tokenizer",
                str(tok),
                "--out",
                str(tmp_path / "c"),
                "--val-fraction",
                "0.2",
                "--no-progress",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "c")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "chat" and info["n_documents"] == {"train": 4, "val": 1}


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "x.csv").write_text("a")
    assert (
        main(
            [
                "data",
                "prepare",
                str(tmp_path / "x.csv"),
                "--tokenizer",
                str(tmp_path),
                "--out",
                str(tmp_path / "p"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("moc data prepare: ") and "unknown extension '.csv'" in err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "no meta.json" in capsys.readouterr().err
