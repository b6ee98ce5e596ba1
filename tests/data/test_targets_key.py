"""No label trap: packed windows carry already-shifted next tokens under ``targets``, a name the model
does not take, so ``model(**window)`` fails instead of shifting them a second time (training on the
token after next). Fed as ``labels=targets, shift_labels=False`` they give the Hugging Face-style loss
of the unshifted window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import moc
from moc.data import ChatSequences, PackedSequences, TokenData


def token_data(tokens: list[int]) -> TokenData:
    return TokenData(
        tokens=np.asarray(tokens, dtype=np.uint16),
        loss_mask=None,
        doc_starts=np.asarray([0], dtype=np.int64),
        meta={"eos_id": 0, "vocab_size": 100, "pad_id": 0},
        split="train",
        path=Path("mem"),
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = moc.load_config("tiny-moc", ["model.vocab_size=100", "memory.routing=token"])
    return moc.build_model(cfg).eval()


def test_windows_have_targets_not_labels() -> None:
    tokens = np.random.default_rng(0).integers(1, 100, size=41).tolist()
    windows = [PackedSequences(token_data(tokens), seq_len=8)[0], ChatSequences(token_data(tokens), 8)[0]]
    for window in windows:
        assert "targets" in window and "labels" not in window
    model = _model()
    with pytest.raises(TypeError, match="targets"):
        model(**windows[0])


def test_targets_give_the_loss_of_the_unshifted_window() -> None:
    tokens = np.random.default_rng(1).integers(1, 100, size=17).tolist()
    window = PackedSequences(token_data(tokens), seq_len=16)[0]
    model = _model()
    ids, targets = window["input_ids"][None], window["targets"][None]
    with torch.no_grad():
        pre_shifted = model(ids, labels=targets, shift_labels=False).loss
        full = torch.tensor(tokens)[None]  # HF labels = the inputs; the model drops the last position
        hf_style = model(full, labels=full).loss
        shifted_twice = model(ids, labels=targets).loss  # the trap: each position scored on t+2
    # The window's 16 targets are tokens 1..16: the HF loss over all 17 tokens (causal: the 17th token
    # changes no earlier logit), not the loss a second shift gives.
    torch.testing.assert_close(pre_shifted, hf_style)
    assert not torch.allclose(pre_shifted, shifted_twice)
