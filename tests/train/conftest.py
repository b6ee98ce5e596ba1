"""Fixtures for the training tests: tiny prepared datasets (moc.data's on-disk format) and tiny configs.

pytest imports test modules in importlib mode here, so helpers are handed out as fixtures.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import moc
from moc.data.prepared import FORMAT_VERSION, META_FILE, SPLITS, docs_file, mask_file, tokens_file

VOCAB = 64
EOS = 0

# A tiny MoC model: 2 blocks, memory in block 1, 8 chapters of 4 tokens (1 shared + top-2).
TINY = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.n_kv_heads=2",
    "model.d_ff=64",
    "model.max_seq_len=64",
    "memory.layers=[1]",
    "memory.n_tokens=32",
    "memory.n_chapters=8",
    "memory.top_k=2",
    "memory.n_heads=4",
    "memory.n_kv_heads=4",
    "memory.causal_chunk_size=8",
    "train.seq_len=16",
    "train.micro_batch_size=4",
    "train.grad_accum_steps=1",
    "train.max_steps=6",
    "train.lr=0.003",
    "train.warmup_steps=2",
    "train.eval_every=3",
    "train.eval_batches=2",
    "train.save_every=3",
    "train.log_every=1",
    "train.progress=false",
    "train.tensorboard=false",
]


def synthetic_docs(n_docs: int, seed: int) -> list[np.ndarray]:
    """Learnable documents: each is an arithmetic progression mod (VOCAB - 1), shifted past eos."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        start, stride, length = rng.integers(0, VOCAB - 1), rng.integers(1, 4), rng.integers(8, 40)
        docs.append(1 + (start + stride * np.arange(length)) % (VOCAB - 1))
    return docs


def write_prepared(
    out: Path,
    splits: dict[str, list[np.ndarray]],
    masks: dict[str, list[np.ndarray]] | None = None,
    vocab_size: int = VOCAB,
) -> Path:
    """Write documents in moc.data's prepared format (each followed by eos); ``masks`` makes chat data."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "chat" if masks else "text",
        "dtype": "uint16",
        "vocab_size": vocab_size,
        "eos_id": EOS,
        "pad_id": EOS,
        "has_loss_mask": bool(masks),
        "n_tokens": {},
        "n_documents": {},
    }
    for split in SPLITS:
        docs = splits.get(split, [])
        toks = [np.append(d, EOS) for d in docs]
        flat = np.concatenate(toks).astype(np.uint16) if toks else np.zeros(0, np.uint16)
        flat.tofile(out / tokens_file(split))
        lens = np.array([len(t) for t in toks], dtype=np.int64)
        np.save(out / docs_file(split), np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64))
        if masks:
            m = [np.append(x, 0) for x in masks.get(split, [])]
            (np.concatenate(m) if m else np.zeros(0)).astype(np.uint8).tofile(out / mask_file(split))
        meta["n_tokens"][split] = int(len(flat))
        meta["n_documents"][split] = len(docs)
    (out / META_FILE).write_text(json.dumps(meta))
    return out


def make_cfg(prepared: Path, out_dir: Path, *extra: str) -> moc.RunConfig:
    return moc.load_config(
        "tiny-moc", [*TINY, f"data.prepared_dir={prepared}", f"train.out_dir={out_dir}", *extra]
    )


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~6k train tokens, ~1k val tokens of learnable synthetic text."""
    out = tmp_path_factory.mktemp("prepared")
    return write_prepared(out, {"train": synthetic_docs(250, 0), "val": synthetic_docs(40, 1)})


@pytest.fixture
def tiny_cfg(prepared: Path, tmp_path: Path) -> Callable[..., moc.RunConfig]:
    """Factory: ``tiny_cfg("train.max_steps=4", out="run")`` -> a tiny config training on ``prepared``."""

    def make(*extra: str, out: str = "run", data: Path | None = None) -> moc.RunConfig:
        return make_cfg(data or prepared, tmp_path / out, *extra)

    return make


@pytest.fixture(scope="session")
def tiny_cfg_at(prepared: Path) -> Callable[..., moc.RunConfig]:
    """Session-scoped factory: ``tiny_cfg_at(out_dir, *overrides)``."""
    return lambda out_dir, *extra: make_cfg(prepared, out_dir, *extra)


@pytest.fixture
def prepared_writer() -> Callable[..., Path]:
    """``prepared_writer(dir, {"train": docs, ...}, masks=None, vocab_size=64)``; and ``.docs(n, seed)``."""
    write_prepared.docs = synthetic_docs  # type: ignore[attr-defined]
    return write_prepared
