"""Prepared data: format, reuse, atomic writes, dtype choice, validation split, config entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import moc
from moc.config import ConfigError
from moc.data import (
    DataError,
    check_compatible,
    load_prepared,
    prepare_from_config,
    prepare_pretraining_data,
    token_dtype,
)


def split_docs(d) -> list[list[int]]:
    """Token lists of each document of a split, without the trailing eos."""
    ends = [*d.doc_starts[1:].tolist(), d.n_tokens]
    out = []
    for lo, hi in zip(d.doc_starts.tolist(), ends):
        assert d.tokens[hi - 1] == d.eos_id  # every document ends with exactly one eos
        out.append(d.tokens[lo : hi - 1].tolist())
        assert d.eos_id not in out[-1]
    return out


def test_format_and_contents(tmp_path: Path, tok_dir: Path, tok, make_docs, write_jsonl) -> None:
    texts = make_docs(40)
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in texts[:30]])
    (tmp_path / "b.txt").write_text("\n".join(texts[30:]))
    out = prepare_pretraining_data(
        [tmp_path / "a.jsonl", tmp_path / "b.txt"],
        tok_dir,
        tmp_path / "prep",
        val_fraction=0.1,
        txt_mode="line",
        progress=False,
    )
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "text" and meta["dtype"] == "uint16"
    assert meta["vocab_size"] == 300 and meta["eos_id"] == 0 and meta["has_loss_mask"] is False
    assert meta["n_documents"] == {"train": 36, "val": 4}
    assert [s["path"].rsplit("/", 1)[1] for s in meta["sources"]] == ["a.jsonl", "b.txt"]
    assert all(len(s["sha256"]) == 64 and s["bytes"] > 0 for s in meta["sources"])
    assert meta["tokenizer"] == str(tok_dir)
    train, val = load_prepared(out, "train"), load_prepared(out, "val")
    assert isinstance(train.tokens, np.memmap) and train.tokens.dtype == np.uint16 and train.loss_mask is None
    assert (train.n_tokens, val.n_tokens) == (meta["n_tokens"]["train"], meta["n_tokens"]["val"])
    # Train + val hold every document exactly once, tokenized as the tokenizer does, in source order.
    got = split_docs(train) + split_docs(val)
    expected = [tok.encode(t, add_special_tokens=False) for t in texts]
    assert sorted(got) == sorted(expected)
    train_order = [expected.index(d) for d in split_docs(train)]
    assert train_order == sorted(train_order)
    # The saved tokenizer copy is the one used.
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (tok_dir / "tokenizer.json").read_text()


def test_reuse_and_invalidation(tmp_path: Path, tok_dir: Path, make_docs, capsys) -> None:
    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_docs(20)))
    kw = dict(txt_mode="line", progress=False)
    out = prepare_pretraining_data([src], tok_dir, tmp_path / "p", **kw)
    stamp = (out / "train.tokens.bin").stat().st_mtime_ns
    capsys.readouterr()
    prepare_pretraining_data([src], tok_dir, tmp_path / "p", **kw)
    assert "reusing prepared data" in capsys.readouterr().out
    assert (out / "train.tokens.bin").stat().st_mtime_ns == stamp
    prepare_pretraining_data([src], tok_dir, tmp_path / "p", seed=1, **kw)  # another split seed
    assert "reusing" not in capsys.readouterr().out
    src.write_text("\n".join(make_docs(21)))  # changed content
    prepare_pretraining_data([src], tok_dir, tmp_path / "p", seed=1, **kw)
    assert "reusing" not in capsys.readouterr().out
    assert load_prepared(out).meta["n_documents"]["train"] + load_prepared(out, "val").n_documents == 21
    (out / "val.tokens.bin").write_bytes(b"")  # damaged: not reused
    prepare_pretraining_data([src], tok_dir, tmp_path / "p", seed=1, **kw)
    assert "reusing" not in capsys.readouterr().out


def test_failed_prepare_leaves_old_data(tmp_path: Path, tok_dir: Path, make_docs, monkeypatch) -> None:
    import moc.data.prepare as prep

    src = tmp_path / "c.txt"
    src.write_text("\n".join(make_docs(20)))
    out = prepare_pretraining_data([src], tok_dir, tmp_path / "p", txt_mode="line", progress=False)
    before = (out / "meta.json").read_text()
    src.write_text("\n".join(make_docs(25)))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prep, "_write_splits", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_pretraining_data([src], tok_dir, out, txt_mode="line", progress=False)
    assert (out / "meta.json").read_text() == before
    assert load_prepared(out).n_documents + load_prepared(out, "val").n_documents == 20
    assert not list(out.glob(".tmp*"))


def test_dtype_choice(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    assert token_dtype(400) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    vocab = {"<|endoftext|>": 0, "[UNK]": 1} | {f"w{i}": i + 2 for i in range(70_000)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    big = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", unk_token="[UNK]")
    (tmp_path / "t.txt").write_text("w69990 w5\nw65535 w65534 w1\n")
    out = prepare_pretraining_data(
        [tmp_path / "t.txt"], big, tmp_path / "p", txt_mode="line", val_fraction=0.0, progress=False
    )
    d = load_prepared(out)
    assert d.meta["dtype"] == "uint32" and d.tokens.dtype == np.uint32 and d.vocab_size == 70_002
    assert d.tokens.tolist() == [69992, 7, 0, 65537, 65536, 3, 0]


def test_val_split_is_deterministic_by_seed(tmp_path: Path, tok_dir: Path, make_docs, tok) -> None:
    texts = make_docs(200, words=6)
    (tmp_path / "a.txt").write_text("\n".join(texts))
    (tmp_path / "r.txt").write_text("\n".join(reversed(texts)))

    def val_texts(src: str, out: str, seed: int) -> set[str]:
        p = prepare_pretraining_data(
            [tmp_path / src],
            tok_dir,
            tmp_path / out,
            val_fraction=0.1,
            seed=seed,
            txt_mode="line",
            progress=False,
        )
        d = load_prepared(p, "val")
        assert d.n_documents == 20
        return {tok.decode(ids) for ids in split_docs(d)}

    a0 = val_texts("a.txt", "a0", 0)
    assert a0 == val_texts("a.txt", "b0", 0)
    assert a0 == val_texts("r.txt", "r0", 0)  # keyed by content, not position
    assert a0 != val_texts("a.txt", "a1", 1)
    assert a0 <= set(texts)


def test_split_needs_two_documents(tmp_path: Path, tok_dir: Path) -> None:
    (tmp_path / "one.txt").write_text("a single document\nwith two lines")
    with pytest.raises(DataError, match=r"found only 1 document.*--txt-mode line.*--val-fraction 0"):
        prepare_pretraining_data([tmp_path / "one.txt"], tok_dir, tmp_path / "p", progress=False)
    out = prepare_pretraining_data(
        [tmp_path / "one.txt"], tok_dir, tmp_path / "p", val_fraction=0.0, progress=False
    )
    assert load_prepared(out).n_documents == 1
    with pytest.raises(
        DataError, match=r"split 'val' .* has no tokens \(it was prepared with val_fraction=0\)"
    ):
        load_prepared(out, "val")
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"):
        prepare_pretraining_data([tmp_path / "one.txt"], tok_dir, tmp_path / "p", val_fraction=1.0)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"not a prepared data directory \(no meta.json\); create it with `moc data"
    ):
        load_prepared(tmp_path)
    (tmp_path / "meta.json").write_text('{"format_version": 99}')
    with pytest.raises(DataError, match="prepared with data format 99"):
        load_prepared(tmp_path)
    with pytest.raises(DataError, match="unknown split 'test'"):
        load_prepared(tmp_path, "test")


def test_check_compatible() -> None:
    check_compatible({"vocab_size": 400}, 400)
    check_compatible({"vocab_size": 400}, 512)
    with pytest.raises(
        ConfigError,
        match=r"^tokenizer has 400 tokens, model.vocab_size is 256; set --set "
        r"model.vocab_size=400$",
    ):
        check_compatible({"vocab_size": 400}, 256)


def test_prepare_from_config(tmp_path: Path, tok_dir: Path, make_docs) -> None:
    (tmp_path / "c.txt").write_text("\n\n".join(make_docs(10)))
    cfg = moc.load_config(
        "tiny-moc",
        [
            f"data.train=[{tmp_path / 'c.txt'}]",
            f"data.tokenizer={tok_dir}",
            "data.txt_mode=paragraph",
            "data.val_fraction=0.2",
        ],
    )
    with pytest.raises(DataError, match="data.prepared_dir is not set"):
        prepare_from_config(cfg, progress=False)
    out = prepare_from_config(cfg, default_dir=tmp_path / "p", progress=False)
    assert load_prepared(out).n_documents == 8 and load_prepared(out, "val").n_documents == 2
    only_dir = moc.load_config("tiny-moc", [f"data.prepared_dir={out}"])
    assert prepare_from_config(only_dir) == out
    with pytest.raises(DataError, match="no training data"):
        prepare_from_config(moc.load_config("tiny-moc"))
    no_tok = moc.load_config("tiny-moc", [f"data.train=[{tmp_path / 'c.txt'}]"])
    with pytest.raises(DataError, match="data.tokenizer is not set"):
        prepare_from_config(no_tok)


def test_tokenizer_truncation_settings_do_not_cut_documents(tmp_path: Path, tok_dir: Path, tok) -> None:
    from transformers import AutoTokenizer

    truncating = AutoTokenizer.from_pretrained(tok_dir)
    truncating.backend_tokenizer.enable_truncation(max_length=4)
    text = "the quick brown fox jumps over a lazy dog"
    (tmp_path / "t.txt").write_text(text)
    out = prepare_pretraining_data(
        [tmp_path / "t.txt"], truncating, tmp_path / "p", val_fraction=0.0, progress=False
    )
    assert load_prepared(out).tokens.tolist() == tok.encode(text, add_special_tokens=False) + [0]
    assert truncating.backend_tokenizer.truncation is not None  # the caller's tokenizer is untouched
