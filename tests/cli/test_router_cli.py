"""`moc router` on a tiny checkpoint and tiny prepared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import moc
from memory_helpers import make_memory_matter
from moc.cli import main


@pytest.fixture
def checkpoint_and_data(tmp_path: Path) -> tuple[Path, Path]:
    from moc.data import prepare_pretraining_data, train_tokenizer
    from moc.train.checkpoint import save_weights, shared_aliases

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The capital of France is Paris. Memory chapters route tokens.\n" * 200)
    tok = train_tokenizer([str(corpus)], vocab_size=300, out_dir=tmp_path / "tok", progress=False)
    data = prepare_pretraining_data(
        [str(corpus)],
        tok,
        tmp_path / "data",
        val_fraction=0.5,
        txt_mode="line",
        progress=False,
        verbose=False,
    )
    torch.manual_seed(0)
    model = make_memory_matter(moc.build_model("tiny-moc", ["model.vocab_size=320", "model.max_seq_len=32"]))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    save_weights(model.state_dict(), ckpt / "model.safetensors", shared_aliases(model))
    model.config.save(ckpt / "config.yaml")
    return ckpt, data


def test_router_report(checkpoint_and_data, capsys, tmp_path: Path) -> None:
    ckpt, data = checkpoint_and_data
    plot = tmp_path / "usage.png"
    args = [str(ckpt), "--data", str(data), "--split", "train", "--batches", "2", "--batch-size", "2"]
    assert main(["router", *args, "--top", "2", "--ablate", "0", "--json", "--plot", str(plot)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [layer["layer"] for layer in report["layers"]] == [1, 3]
    assert all(sum(layer["counts"]) == layer["decisions"] * 4 for layer in report["layers"])
    assert len(report["importance"]) == 3  # the shared chapter + the 2 most used
    assert report["ablation"]["chapters"] == [0] and report["ablation"]["delta"] != 0
    assert plot.stat().st_size > 1000
    assert main(["router", *args, "--top", "1"]) == 0
    assert "delta loss" in capsys.readouterr().out
