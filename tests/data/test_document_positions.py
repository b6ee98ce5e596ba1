"""Packed windows carry per-document position ids: they restart where a document starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from moc.data import PackedSequences, TokenData
from moc.train.batches import collate, steps_for_epochs


def _data() -> TokenData:
    # Documents (each ends with eos 0): [5 6 7 0] [8 9 0] [1 2 3 4 5 6 0] [7 0]
    tokens = [5, 6, 7, 0, 8, 9, 0, 1, 2, 3, 4, 5, 6, 0, 7, 0]
    return TokenData(
        tokens=np.asarray(tokens, dtype=np.uint16),
        loss_mask=None,
        doc_starts=np.asarray([0, 4, 7, 14], dtype=np.int64),
        meta={"eos_id": 0, "vocab_size": 100, "pad_id": 0},
        split="train",
        path=Path("mem"),
    )


def test_positions_restart_at_each_document() -> None:
    ps = PackedSequences(_data(), seq_len=5)
    assert ps[0]["position_ids"].tolist() == [0, 1, 2, 3, 0]  # tokens 5 6 7 0 | 8
    # Window 1 starts inside document 2 (8 9 0): its first, partial document counts from the window.
    assert ps[1]["input_ids"].tolist() == [9, 0, 1, 2, 3]
    assert ps[1]["position_ids"].tolist() == [0, 1, 0, 1, 2]
    assert ps[2]["position_ids"].tolist() == [0, 1, 2, 3, 0]  # 4 5 6 0 | 7
    assert all(ps[i]["position_ids"].dtype == torch.long for i in range(len(ps)))


def test_switch_off_gives_the_old_windows() -> None:
    on, off = PackedSequences(_data(), 5), PackedSequences(_data(), 5, document_positions=False)
    assert "position_ids" not in off[1]
    assert torch.equal(on[1]["input_ids"], off[1]["input_ids"])
    assert torch.equal(on[1]["targets"], off[1]["targets"])


def test_collate_stacks_positions() -> None:
    ps = PackedSequences(_data(), seq_len=5)
    b = collate(ps, [0, 1], torch.device("cpu"))
    assert b.position_ids is not None and b.position_ids.shape == (2, 5)
    assert b.position_ids[1].tolist() == [0, 1, 0, 1, 2]
    off = collate(PackedSequences(_data(), 5, document_positions=False), [0], torch.device("cpu"))
    assert off.position_ids is None


def test_steps_for_epochs() -> None:
    assert steps_for_epochs(1000, 2, 128) == 16  # ceil(2000 / 128)
    assert steps_for_epochs(1000, 1, 1000) == 1
    assert steps_for_epochs(3, 0.1, 64) == 1  # at least one step
