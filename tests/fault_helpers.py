"""Shared by the fault tables (tests/cli/test_faults*.py, tests/moc_experiments/test_lab_faults.py): a
tiny real run built with relative paths, and ``fails``, which checks the one-line error contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from moc.cli import main

TEXT = "the cat sat on a mat and then it ran to the red house where many birds sang songs"
# tiny-moc with a vocabulary that fits the 300-token BPE, short windows, a checkpoint every step
TRAIN = [
    "--set", "model.vocab_size=320", "--set", "data.prepared_dir=data", "--set", "train.seq_len=32",
    "--set", "train.micro_batch_size=2", "--set", "train.save_every=1", "--set", "train.keep_last=5",
    "--set", "train.progress=false", "--set", "train.tensorboard=false", "--set", "train.log_every=1",
]  # fmt: skip


def build_run(root: Path, steps: int = 2) -> Path:
    """corpus/, tok/, data/ and run/ (checkpoints 1..steps) in ``root``, made by the CLI with relative
    paths; returns ``root``."""
    (root / "corpus").mkdir()
    vocab = TEXT.split()
    for i in range(12):
        words = [vocab[(i * 7 + j * j) % len(vocab)] for j in range(400)]
        (root / "corpus" / f"d{i}.txt").write_text(" ".join(words))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        tok = ["tokenizer", "train", "--vocab-size", "300", "corpus", "--out", "tok", "--no-progress"]
        assert main(tok) == 0
        assert (
            main(["data", "prepare", "corpus", "--tokenizer", "tok", "--out", "data", "--no-progress"]) == 0
        )
        run = [
            "pretrain",
            "tiny-moc",
            *TRAIN,
            "--set",
            f"train.max_steps={steps}",
            "--set",
            "train.out_dir=run",
        ]
        assert main(run) == 0
    return root


def fails(
    capsys: pytest.CaptureFixture,
    argv: list[str],
    *needles: str,
    code: int = 2,
    command: Callable[[list[str]], int] = main,
) -> str:
    """Run ``moc ARGV`` (or another ``command``'s main) in-process: it must exit ``code`` with one
    stderr line, no traceback, containing every needle."""
    capsys.readouterr()
    assert command(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes: compare before and after to prove nothing was lost."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
