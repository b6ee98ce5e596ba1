"""Tokenizer training and loading: AutoTokenizer round trip, special tokens, chat template, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from moc.data import SPECIAL_TOKENS, DataError, chat_stop_token_ids, load_tokenizer, train_tokenizer


def test_trained_dir_loads_with_autotokenizer(tok_dir: Path) -> None:
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in tok_dir.iterdir()}
    assert not [p for p in tok_dir.iterdir() if p.name.startswith(".tmp")]
    # Loadable by transformers 4 too (which has no TokenizersBackend class).
    assert (
        json.loads((tok_dir / "tokenizer_config.json").read_text())["tokenizer_class"]
        == "PreTrainedTokenizerFast"
    )
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert len(tok) == 300
    assert tok.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    text = "the quick brown fox, café ☃!"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text  # byte-level: any text round-trips
    assert "<|endoftext|>" not in tok.decode(tok.encode("fox"))  # no bos/eos added on encode
    assert chat_stop_token_ids(tok) == [0, 4]


def test_default_chat_template(tok) -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>\n"
    )
    assert tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True).endswith(
        "<|user|>\nHi<|end|>\n<|assistant|>\n"
    )


def test_training_is_deterministic(tmp_path: Path, make_docs) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(make_docs(60, seed=1)))
    a = train_tokenizer([corpus], 300, tmp_path / "a", txt_mode="line", progress=False)
    b = train_tokenizer([corpus], 300, tmp_path / "b", txt_mode="line", progress=False)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    c = train_tokenizer([corpus], 290, tmp_path / "c", txt_mode="line", progress=False)
    assert (a / "tokenizer.json").read_bytes() != (c / "tokenizer.json").read_bytes()


def test_errors(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("some text")
    with pytest.raises(DataError, match=r"--vocab-size 100 is too small.*at least 261"):
        train_tokenizer([tmp_path / "c.txt"], 100, tmp_path / "t", progress=False)
    with pytest.raises(
        DataError, match=r"tokenizer .*missing does not exist; train one with `moc tokenizer train"
    ):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match=r"could not load tokenizer .*junk"):
        load_tokenizer(tmp_path / "junk")


def test_chat_template_override(tok_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}")
    tok = load_tokenizer(tok_dir, chat_template=str(f))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == "[user]x"
