"""`moc pretrain` and `moc ift` from the command line (in-process through moc.cli.main)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moc.cli import main


def _chat_data(prepared_writer, out: Path) -> Path:
    """Chat data: loss on the second half of each document (the "assistant reply")."""
    docs = {split: prepared_writer.docs(n, seed) for split, n, seed in (("train", 250, 0), ("val", 40, 1))}
    masks = {split: [np.arange(len(d)) >= len(d) // 2 for d in ds] for split, ds in docs.items()}
    return prepared_writer(out, docs, masks=masks)


def test_pretrain_then_ift_then_resume(
    tiny_cfg, prepared_writer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = tiny_cfg("train.max_steps=2", out="pre")
    cfg.save(tmp_path / "pre.yaml")
    assert main(["pretrain", str(tmp_path / "pre.yaml"), "--set", "train.save_every=1"]) == 0
    out = capsys.readouterr().out
    assert "moc pretrain: done, step 2" in out and "step_000002" in out

    ift_dir = tmp_path / "ift"
    args = [
        "ift",
        str(tmp_path / "pre.yaml"),
        "--init-from",
        cfg.train.out_dir,
        "--out-dir",
        str(ift_dir),
        "--set",
        "train.freeze_bank=true",
        "--set",
        "train.lr=0.0001",
        "--set",
        f"data.prepared_dir={_chat_data(prepared_writer, tmp_path / 'chat')}",  # ift needs a loss mask
    ]
    assert main(args) == 0
    assert "moc ift: done, step 2" in capsys.readouterr().out
    assert (ift_dir / "checkpoints" / "step_000002").is_dir()

    # --resume of a finished run: nothing left to do, same final step
    assert main([*args, "--resume"]) == 0
    assert "done, step 2" in capsys.readouterr().out


def test_errors_are_one_line_messages(tiny_cfg, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = tiny_cfg(f"data.prepared_dir={tmp_path / 'missing'}")
    cfg.save(tmp_path / "c.yaml")
    assert main(["pretrain", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist; run `moc data prepare`" in err and "Traceback" not in err
    assert main(["pretrain", str(tmp_path / "c.yaml"), "--set", "train.seq_len=1000"]) == 2
    assert "train.seq_len=1000 is longer than model.max_seq_len" in capsys.readouterr().err
    assert main(["ift", str(tmp_path / "c.yaml"), "--init-from", str(tmp_path / "nothing")]) != 0
    with pytest.raises(SystemExit):  # --init-from is required for ift
        main(["ift", str(tmp_path / "c.yaml")])
