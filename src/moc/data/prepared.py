"""The on-disk format of prepared token data, and loading it back memory-mapped.

A prepared directory holds, per split ``S`` in ``train`` / ``val``:

- ``S.tokens.bin``: all token ids of the split, 1-D, raw ``meta["dtype"]`` (uint16 when every id fits,
  else uint32). Every document is followed by the eos token, so documents are back to back with one
  separator and no padding.
- ``S.mask.bin`` (chat data only): uint8, same length; 1 where the token is a training target.
- ``S.docs.npy``: int64 start offset of each document (conversation) in ``S.tokens.bin``.

plus ``tokenizer/`` (a copy of the tokenizer used, loadable with ``AutoTokenizer``) and ``meta.json``,
written last (its presence means the directory is complete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moc.config import ConfigError
from moc.data.errors import DataError

FORMAT_VERSION = 1
META_FILE = "meta.json"
TOKENIZER_SUBDIR = "tokenizer"
SPLITS = ("train", "val")


def tokens_file(split: str) -> str:
    return f"{split}.tokens.bin"


def mask_file(split: str) -> str:
    return f"{split}.mask.bin"


def docs_file(split: str) -> str:
    return f"{split}.docs.npy"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id (0..vocab_size-1) fits in 16 bits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class TokenData:
    """One split of a prepared directory.

    ``tokens``: (N,) memory-mapped token ids. ``loss_mask``: (N,) uint8 memmap for chat data (1 = train
    on this token as a target), None for pretraining (every token is a target). ``doc_starts``: (D,)
    int64 start of each document. ``meta``: the directory's meta.json.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray | None
    doc_starts: np.ndarray
    meta: dict[str, Any]
    split: str
    path: Path

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_documents(self) -> int:
        return int(self.doc_starts.shape[0])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])


def read_meta(out_dir: str | Path) -> dict[str, Any]:
    """meta.json of a prepared directory, or a DataError telling how to prepare one."""
    path = Path(out_dir) / META_FILE
    if not path.exists():
        raise DataError(
            f"{out_dir} is not a prepared data directory (no {META_FILE}); create it with "
            f"`moc data prepare SOURCES... --tokenizer TOK --out {out_dir}` (or `moc data prepare-chat`)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}); delete it and prepare the data again") from None
    if not isinstance(meta, dict):
        raise DataError(
            f"{path} holds a JSON {type(meta).__name__}, not moc's metadata; prepare the data again"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{out_dir} was prepared with data format {meta.get('format_version')}, this moc reads format "
            f"{FORMAT_VERSION}; prepare it again"
        )
    for key, tp in _META_TYPES.items():
        if not isinstance(meta.get(key), tp):
            got = "is missing" if key not in meta else f"is {meta[key]!r}"
            raise DataError(f"{path}: {key!r} {got}; the directory is damaged, prepare the data again")
    return meta


# What the readers of meta.json use, and its JSON type (a file edited by hand or cut short names the key).
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "n_tokens": dict, "dtype": str, "vocab_size": int, "has_loss_mask": bool,
}  # fmt: skip


def load_prepared(out_dir: str | Path, split: str = "train") -> TokenData:
    """Memory-map one split (``"train"`` or ``"val"``) of a prepared directory."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    root = Path(out_dir)
    meta = read_meta(root)
    n = meta["n_tokens"].get(split)
    if not isinstance(n, int) or n < 0:
        raise DataError(
            f"{root / META_FILE}: n_tokens has no count for split {split!r}; prepare the data again"
        )
    if n == 0:
        why = " (it was prepared with val_fraction=0)" if split == "val" else ""
        raise DataError(f"split {split!r} of {out_dir} has no tokens{why}; prepare it again with more data")
    try:
        dtype = np.dtype(meta["dtype"])
    except TypeError:
        raise DataError(
            f"{root / META_FILE}: dtype {meta['dtype']!r} is not a numpy type; prepare the data again"
        ) from None
    for name in [tokens_file(split), docs_file(split)] + (
        [mask_file(split)] if meta["has_loss_mask"] else []
    ):
        if not (root / name).exists():
            raise DataError(f"{root / name} is missing; prepare the data again")
    size = (root / tokens_file(split)).stat().st_size
    if size != n * dtype.itemsize:  # checked on bytes: memmap refuses a size that is not whole tokens
        raise DataError(
            f"{root / tokens_file(split)} has {size} bytes ({size / dtype.itemsize:g} tokens) but meta.json "
            f"says {n} tokens; the directory is damaged, prepare the data again"
        )
    tokens = np.memmap(root / tokens_file(split), dtype=dtype, mode="r")
    mask = np.memmap(root / mask_file(split), dtype=np.uint8, mode="r") if meta["has_loss_mask"] else None
    if mask is not None and mask.shape[0] != n:
        raise DataError(f"{root / mask_file(split)} length differs from the tokens; prepare the data again")
    doc_starts = _load_doc_starts(root / docs_file(split), n)
    return TokenData(tokens=tokens, loss_mask=mask, doc_starts=doc_starts, meta=meta, split=split, path=root)


def _load_doc_starts(path: Path, n_tokens: int) -> np.ndarray:
    """The document start offsets: a 1-D integer array, increasing, within the split's tokens."""
    damaged = f"{path} is damaged or not moc's document index; prepare the data again"
    try:
        starts = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise DataError(damaged) from None
    if not isinstance(starts, np.ndarray) or starts.ndim != 1 or starts.dtype.kind not in "iu":
        raise DataError(damaged)
    if starts.size and (starts[0] < 0 or starts[-1] >= n_tokens or np.any(np.diff(starts) <= 0)):
        raise DataError(damaged)
    return starts


def check_compatible(meta: dict[str, Any] | TokenData, model_vocab_size: int) -> None:
    """Raise ConfigError when the model's embedding is too small for the data's tokenizer.

    A model vocab larger than the tokenizer's is fine (padded vocabularies are common).
    """
    if isinstance(meta, TokenData):
        meta = meta.meta
    n = int(meta["vocab_size"])
    if n > model_vocab_size:
        raise ConfigError(
            f"tokenizer has {n} tokens, model.vocab_size is {model_vocab_size}; "
            f"set --set model.vocab_size={n}"
        )
