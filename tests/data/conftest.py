"""Shared fixtures: tiny deterministic corpora and one small trained tokenizer.

Helpers are handed out as fixtures because tests run with ``--import-mode=importlib`` (no sys.path
entry for this folder, so no plain helper modules).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "and",
    "memory",
    "chapters",
    "route",
    "tokens",
    "to",
    "small",
    "banks",
    "of",
    "learned",
    "vectors",
]


def _make_docs(n: int, seed: int = 0, words: int = 12) -> list[str]:
    docs = []
    for i in range(n):
        picked = [WORDS[(i * 7 + j * (seed + 3)) % len(WORDS)] for j in range(words)]
        docs.append(f"doc {i}: " + " ".join(picked) + ".")
    return docs


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def make_docs() -> Callable[..., list[str]]:
    """``make_docs(n, seed=0, words=12)``: n distinct short documents of English words."""
    return _make_docs


@pytest.fixture
def write_jsonl() -> Callable[[Path, list[dict]], Path]:
    """``write_jsonl(path, rows)``: one JSON object per line."""
    return _write_jsonl


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-token byte-level BPE from `train_tokenizer`, trained once per test session."""
    from moc.data import train_tokenizer

    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(_make_docs(200)) + "\nHello there! What is 2+2? Blue. Red, of course.\n")
    return train_tokenizer([corpus], vocab_size=300, out_dir=root / "tok", txt_mode="line", progress=False)


@pytest.fixture(scope="session")
def tok(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir)
