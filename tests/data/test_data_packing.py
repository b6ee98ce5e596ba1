"""Packing prepared tokens into training windows: boundaries, shifted targets, masks, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from moc.data import (
    ChatSequences,
    DataError,
    PackedSequences,
    TokenData,
    load_prepared,
    prepare_pretraining_data,
)


def token_data(
    tokens: list[int], mask: list[int] | None = None, doc_starts: list[int] | None = None
) -> TokenData:
    return TokenData(
        tokens=np.asarray(tokens, dtype=np.uint16),
        loss_mask=None if mask is None else np.asarray(mask, dtype=np.uint8),
        doc_starts=np.asarray(doc_starts or [0], dtype=np.int64),
        meta={"eos_id": 0, "vocab_size": 100, "pad_id": 0},
        split="train",
        path=Path("mem"),
    )


def test_windows_cover_stride_seq_len() -> None:
    tokens = list(range(1, 24))  # 23 tokens
    ps = PackedSequences(token_data(tokens), seq_len=5)
    assert len(ps) == (23 - 1) // 5 == 4
    for i in range(len(ps)):
        item = ps[i]
        assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (5,)
        assert item["input_ids"].tolist() == tokens[i * 5 : i * 5 + 5]  # window i = tokens [iL, iL+L+1)
        assert item["targets"].tolist() == tokens[i * 5 + 1 : i * 5 + 6]  # next tokens, already shifted
    targets = torch.cat([ps[i]["targets"] for i in range(len(ps))]).tolist()
    assert targets == tokens[1:21]  # every token but the first is a target once; the 2-token tail is dropped
    assert ps[-1]["input_ids"].tolist() == ps[3]["input_ids"].tolist()
    with pytest.raises(IndexError):
        ps[4]


def test_exact_fit_and_too_short() -> None:
    assert len(PackedSequences(token_data(list(range(11))), seq_len=10)) == 1
    with pytest.raises(
        DataError,
        match=r"has 10 tokens, fewer than one window of seq_len \+ 1 = 11; lower "
        r"train.seq_len \(e.g. --set train.seq_len=9\)",
    ):
        PackedSequences(token_data(list(range(10))), seq_len=10)
    with pytest.raises(DataError, match="seq_len must be a positive integer"):
        PackedSequences(token_data(list(range(10))), seq_len=0)


def test_loss_mask_becomes_ignore_index() -> None:
    tokens = [5, 6, 7, 8, 9, 10, 11, 12, 13]
    mask = [0, 0, 1, 1, 0, 1, 0, 0, 1]
    ps = PackedSequences(token_data(tokens, mask), seq_len=4)
    assert ps[0]["targets"].tolist() == [-100, 7, 8, -100]  # targets[j] = t[j+1] if mask[j+1] else -100
    assert ps[1]["targets"].tolist() == [10, -100, -100, 13]
    assert ps[1]["input_ids"].tolist() == [9, 10, 11, 12]


def test_documents_are_eos_separated_across_windows(tmp_path: Path, tok_dir: Path, tok, make_docs) -> None:
    texts = make_docs(12)
    (tmp_path / "c.txt").write_text("\n".join(texts))
    d = load_prepared(
        prepare_pretraining_data(
            [tmp_path / "c.txt"], tok_dir, tmp_path / "p", txt_mode="line", val_fraction=0.0, progress=False
        )
    )
    ps = PackedSequences(d, seq_len=16)
    stream = [ps[0]["input_ids"][0].item()] + torch.cat([ps[i]["targets"] for i in range(len(ps))]).tolist()
    assert stream == d.tokens[: len(ps) * 16 + 1].tolist()
    expected = []
    for t in texts:
        expected += tok.encode(t, add_special_tokens=False) + [tok.eos_token_id]
    assert d.tokens.tolist() == expected  # no padding: documents back to back, one eos after each


def test_chat_sequences_pad_and_truncate() -> None:
    # two conversations: [1 2 3 4] + eos, [5 6 7 8 9 10 11] + eos
    tokens = [1, 2, 3, 4, 0, 5, 6, 7, 8, 9, 10, 11, 0]
    mask = [0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0]
    cs = ChatSequences(token_data(tokens, mask, doc_starts=[0, 5]), seq_len=5)
    assert len(cs) == 2 and cs.n_truncated == 1
    a = cs[0]
    assert a["input_ids"].tolist() == [1, 2, 3, 0, 0]
    assert a["targets"].tolist() == [-100, 3, 4, -100, -100]
    assert a["attention_mask"].tolist() == [1, 1, 1, 0, 0]
    b = cs[1]
    assert b["input_ids"].tolist() == [5, 6, 7, 8, 9]
    assert b["targets"].tolist() == [6, 7, 8, 9, 10]
    assert b["attention_mask"].tolist() == [1] * 5
