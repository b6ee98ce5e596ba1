"""Tokenize sources once into memory-mapped token files with a held-out validation split.

    out = prepare_pretraining_data(["corpus/"], "tok", "data/corpus", val_fraction=0.01, seed=0)
    out = prepare_chat_data(["chats.jsonl"], "tok", "data/chats")
    train = load_prepared(out, "train")   # see moc.data.prepared for the format

The validation split is chosen by document: each document gets a key hashed from (seed, its text) and
the ``round(val_fraction * n_documents)`` documents with the smallest keys (at least one) are held out.
That is deterministic, independent of worker count, and sends exact duplicates to the same split.

A rerun with the same sources (content hashes), tokenizer, split settings and options finds the
fingerprint in meta.json and reuses the directory. Files are written into a temp folder inside the
output directory and moved into place, meta.json last, so an interrupted run never leaves a directory
that looks complete.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moc.data.chat import encode_conversation, iter_conversations
from moc.data.errors import DataError
from moc.data.prepared import (
    FORMAT_VERSION,
    META_FILE,
    SPLITS,
    TOKENIZER_SUBDIR,
    docs_file,
    mask_file,
    token_dtype,
    tokens_file,
)
from moc.data.sources import TXT_MODES, Source, as_sources, iter_source_documents
from moc.data.tokenizer import (
    load_tokenizer,
    save_tokenizer_atomically,
    tokenizer_fingerprint,
    tokenizer_vocab_size,
)
from moc.errors import os_error_message

# Encode this many documents (or characters) per call: big enough for the tokenizer's thread pool,
# small enough to keep memory flat.
_BATCH_DOCS = 1024
_BATCH_CHARS = 8 << 20

# One example: (text that keys the val split, payload for the encoder, chars for the progress bar).
Example = tuple[str, Any, int]
Encoded = tuple[list[int], list[int] | None]


def prepare_pretraining_data(
    sources: Sequence[Source | str | Path],
    tokenizer: str | Path | Any,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    txt_mode: str = "file",
    progress: bool = True,
    verbose: bool = True,
    force: bool = False,
) -> Path:
    """Tokenize plain-text sources into ``out_dir`` (or reuse it when already prepared); return it.

    ``sources``: files, folders or ``hf:`` specs (see :mod:`moc.data.sources`). ``tokenizer``: a
    Hugging Face tokenizer directory or a loaded tokenizer; it must have an eos token, which is
    appended after every document. Documents are encoded without the tokenizer's own special tokens
    (no bos). ``val_fraction`` of the documents (by count, at least one) go to the ``val`` split,
    chosen by ``seed``. ``progress`` shows a tqdm bar, ``verbose`` prints the one-line summary or
    "reusing ...", ``force`` re-prepares even when the fingerprint matches.
    """
    if txt_mode not in TXT_MODES:
        raise DataError(f"unknown txt_mode {txt_mode!r}; use one of {', '.join(TXT_MODES)}")
    resolved = as_sources(sources)
    tok = load_tokenizer(tokenizer)

    def examples(source: Source) -> Iterator[Example]:
        for text, _ in iter_source_documents(source, text_field, txt_mode):
            yield text, text, len(text)

    return _prepare(
        kind="text",
        resolved=resolved,
        tok=tok,
        tokenizer_spec=tokenizer,
        out_dir=Path(out_dir),
        val_fraction=val_fraction,
        seed=seed,
        settings={"text_field": text_field, "txt_mode": txt_mode},
        examples=examples,
        encode=_text_encoder(tok),
        progress=progress,
        verbose=verbose,
        force=force,
    )


def prepare_chat_data(
    sources: Sequence[Source | str | Path],
    tokenizer: str | Path | Any,
    out_dir: str | Path,
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    chat_template: str | None = None,
    progress: bool = True,
    verbose: bool = True,
    force: bool = False,
) -> Path:
    """Tokenize chat conversations with a loss mask on assistant tokens into ``out_dir``; return it.

    ``chat_template`` (Jinja text or a file) overrides the tokenizer's; the copy of the tokenizer saved
    in ``out_dir/tokenizer`` carries the template actually used.
    """
    resolved = as_sources(sources)
    tok = load_tokenizer(tokenizer, chat_template=chat_template)

    def examples(source: Source) -> Iterator[Example]:
        for messages, where in iter_conversations(source):
            key = json.dumps(messages, sort_keys=True, ensure_ascii=False)
            yield key, (messages, where), len(key)

    def encode(payloads: list[Any]) -> list[Encoded]:
        return [encode_conversation(tok, messages, where) for messages, where in payloads]

    return _prepare(
        kind="chat",
        resolved=resolved,
        tok=tok,
        tokenizer_spec=tokenizer,
        out_dir=Path(out_dir),
        val_fraction=val_fraction,
        seed=seed,
        settings={},
        examples=examples,
        encode=encode,
        progress=progress,
        verbose=verbose,
        force=force,
    )


def _text_encoder(tok: Any) -> Callable[[list[Any]], list[Encoded]]:
    """Batch-encode text without special tokens, on the Rust tokenizer's thread pool when there is one."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:  # a slow (pure Python) tokenizer

        def encode_slow(texts: list[Any]) -> list[Encoded]:
            return [(ids, None) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

        return encode_slow
    from tokenizers import Tokenizer

    # A private copy: tokenizer.json files may carry truncation/padding settings that would silently
    # cut documents, and we must not change the caller's tokenizer.
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_truncation()
    fast.no_padding()
    batch_encode = getattr(fast, "encode_batch_fast", fast.encode_batch)

    def encode_fast(texts: list[Any]) -> list[Encoded]:
        return [(e.ids, None) for e in batch_encode(texts, add_special_tokens=False)]

    return encode_fast


# --------------------------------------------------------------------------------------------------
# The shared pipeline
# --------------------------------------------------------------------------------------------------


def _fingerprint(
    kind: str,
    descs: list[dict[str, Any]],
    tok_fp: str,
    val_fraction: float,
    seed: int,
    settings: dict[str, Any],
) -> str:
    stable = [{k: v for k, v in d.items() if k != "mtime_ns"} for d in descs]
    payload = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "sources": stable,
        "tokenizer": tok_fp,
        "val_fraction": val_fraction,
        "seed": seed,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _old_meta(out_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((out_dir / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _complete(out_dir: Path, meta: dict[str, Any]) -> bool:
    """Whether every file meta.json promises is there with the right size."""
    try:
        itemsize = np.dtype(meta["dtype"]).itemsize
        for split in SPLITS:
            n = int(meta["n_tokens"][split])
            if (out_dir / tokens_file(split)).stat().st_size != n * itemsize:
                return False
            if meta["has_loss_mask"] and (out_dir / mask_file(split)).stat().st_size != n:
                return False
            if not (out_dir / docs_file(split)).exists():
                return False
        return (out_dir / TOKENIZER_SUBDIR).is_dir()
    except (OSError, KeyError, TypeError, ValueError):
        return False


def document_key(seed: int, text: str) -> int:
    """A document's split key: a keyed hash of its text, so the train/val split depends on the seed and
    the documents, not on their order or on the machine (used by experiments to find the held-out set)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little")


def _prepare(
    *,
    kind: str,
    resolved: list[Source],
    tok: Any,
    tokenizer_spec: Any,
    out_dir: Path,
    val_fraction: float,
    seed: int,
    settings: dict[str, Any],
    examples: Callable[[Source], Iterator[Example]],
    encode: Callable[[list[Any]], list[Encoded]],
    progress: bool,
    verbose: bool,
    force: bool,
) -> Path:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file, not a folder; choose another output folder")
    vocab_size = tokenizer_vocab_size(tok)
    dtype = token_dtype(vocab_size)
    eos_id = int(tok.eos_token_id)

    old = _old_meta(out_dir)
    cache = {d["path"]: d for d in old.get("sources", []) if isinstance(d, dict) and "path" in d}
    descs = [s.describe(cache) for s in resolved]
    fp = _fingerprint(kind, descs, tokenizer_fingerprint(tok), val_fraction, seed, settings)
    if not force and old.get("fingerprint") == fp and _complete(out_dir, old):
        if verbose:
            print(f"reusing prepared data in {out_dir} (same sources, tokenizer and settings)")
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-prepare-", dir=out_dir))
    try:
        has_mask = kind == "chat"
        doc_lens, keys = _tokenize_all(
            resolved,
            examples,
            encode,
            tmp,
            dtype,
            eos_id,
            vocab_size,
            has_mask,
            seed,
            progress,
            where=str(out_dir),
        )
        is_val = choose_validation(keys, val_fraction)
        counts = _write_splits(tmp, doc_lens, is_val, dtype, has_mask)
        save_tokenizer_atomically(tok, tmp / TOKENIZER_SUBDIR)
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "eos_id": eos_id,
            "pad_id": int(tok.pad_token_id) if tok.pad_token_id is not None else eos_id,
            "has_loss_mask": has_mask,
            **counts,
            "tokenizer": str(tokenizer_spec) if isinstance(tokenizer_spec, str | Path) else tok.name_or_path,
            "tokenizer_dir": TOKENIZER_SUBDIR,
            "val_fraction": val_fraction,
            "seed": seed,
            "settings": settings,
            "sources": descs,
            "fingerprint": fp,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _commit(tmp, out_dir, has_mask)
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        # a full disk mid-write: numpy's writes name no file, so name the folder
        raise DataError(
            f"could not write the prepared data in {out_dir}: {os_error_message(e)}; free some space or "
            "choose another --out"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(_summary(out_dir, meta))
    return out_dir


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _summary(out_dir: Path, meta: dict[str, Any]) -> str:
    """One line on what was prepared: tokens and documents per split, token dtype."""
    n, docs = meta["n_tokens"], meta["n_documents"]
    return (
        f"prepared {out_dir}: {n['train']:,} train + {n['val']:,} val tokens "
        f"({docs['train']:,} + {docs['val']:,} documents, {meta['dtype']})"
    )


def _tokenize_all(
    resolved: list[Source],
    examples: Callable[[Source], Iterator[Example]],
    encode: Callable[[list[Any]], list[Encoded]],
    tmp: Path,
    dtype: np.dtype,
    eos_id: int,
    vocab_size: int,
    has_mask: bool,
    seed: int,
    progress: bool,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Stream every document into tmp/all.tokens (+ all.mask), each followed by eos.

    Returns per-document token counts (eos included) and split keys.
    """
    from tqdm.auto import tqdm

    doc_lens: list[int] = []
    keys: list[int] = []
    total = sum(s.size_bytes() for s in resolved)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=not progress)

    def read() -> Iterator[Example]:
        for source in resolved:
            done = 0
            for ex in examples(source):
                yield ex
                done += ex[2]
                bar.update(ex[2])
            bar.update(max(source.size_bytes() - done, 0))  # text chars != file bytes; end the file at 100%

    with bar, open(tmp / "all.tokens", "wb") as ftok, open(tmp / "all.mask", "wb") as fmask:
        batch: list[Example] = []
        chars = 0
        stream = read()
        while True:
            ex = next(stream, None)
            if ex is not None:
                batch.append(ex)
                chars += ex[2]
                if len(batch) < _BATCH_DOCS and chars < _BATCH_CHARS:
                    continue
            if batch:
                encoded = encode([b[1] for b in batch])
                _write_batch(encoded, ftok, fmask if has_mask else None, dtype, eos_id, vocab_size)
                for (key_text, _, _), (ids, _) in zip(batch, encoded):
                    if ids:
                        doc_lens.append(len(ids) + 1)
                        keys.append(document_key(seed, key_text))
                batch, chars = [], 0
                bar.set_postfix(docs=len(doc_lens), refresh=False)
            if ex is None:
                break
    if not doc_lens:
        raise DataError(f"no documents with text found in the sources for {where}")
    return np.asarray(doc_lens, dtype=np.int64), np.asarray(keys, dtype=np.uint64)


def _write_batch(
    encoded: list[Encoded], ftok: Any, fmask: Any, dtype: np.dtype, eos_id: int, vocab_size: int
) -> None:
    docs = [ids for ids, _ in encoded if ids]
    if not docs:
        return
    n = sum(len(d) + 1 for d in docs)
    flat = np.fromiter(
        itertools.chain.from_iterable(itertools.chain(d, (eos_id,)) for d in docs), dtype=np.int64, count=n
    )
    top = int(flat.max())
    if top >= vocab_size or int(flat.min()) < 0:
        raise DataError(
            f"the tokenizer produced id {top} outside its vocabulary of {vocab_size}; it is broken"
        )
    flat.astype(dtype).tofile(ftok)
    if fmask is not None:
        masks = [m or [] for ids, m in encoded if ids]
        np.fromiter(
            itertools.chain.from_iterable(itertools.chain(m, (0,)) for m in masks), dtype=np.uint8, count=n
        ).tofile(fmask)


def choose_validation(keys: np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean (D,) array: True for held-out documents (the smallest keys, ties by position)."""
    n = len(keys)
    is_val = np.zeros(n, dtype=bool)
    if val_fraction == 0:
        return is_val
    if n < 2:
        raise DataError(
            f"found only {n} document, but a validation split needs at least 2; split .txt files into "
            "documents with --txt-mode line or --txt-mode paragraph, add data, or pass --val-fraction 0"
        )
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    order = np.lexsort((np.arange(n), keys))
    is_val[order[:n_val]] = True
    return is_val


def _write_splits(
    tmp: Path, doc_lens: np.ndarray, is_val: np.ndarray, dtype: np.dtype, has_mask: bool
) -> dict[str, dict[str, int]]:
    """Copy each document's tokens from tmp/all.* into its split's files; return the counts for meta."""
    starts = np.concatenate([[0], np.cumsum(doc_lens)])
    n_all = int(starts[-1])
    all_tok = np.memmap(tmp / "all.tokens", dtype=dtype, mode="r", shape=(n_all,))
    all_mask = np.memmap(tmp / "all.mask", dtype=np.uint8, mode="r", shape=(n_all,)) if has_mask else None
    # Runs of consecutive documents in the same split are copied as one slice.
    change = np.flatnonzero(np.diff(is_val.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [len(doc_lens)]])
    with contextlib.ExitStack() as stack:
        files = {s: stack.enter_context(open(tmp / tokens_file(s), "wb")) for s in SPLITS}
        mfiles = {s: stack.enter_context(open(tmp / mask_file(s), "wb")) for s in SPLITS} if has_mask else {}
        for a, b in itertools.pairwise(bounds):
            split = "val" if is_val[a] else "train"
            lo, hi = int(starts[a]), int(starts[b])
            all_tok[lo:hi].tofile(files[split])
            if all_mask is not None:
                all_mask[lo:hi].tofile(mfiles[split])
    del all_tok, all_mask
    counts: dict[str, dict[str, int]] = {"n_tokens": {}, "n_documents": {}}
    if has_mask:
        counts["n_loss_tokens"] = {}
    for split in SPLITS:
        lens = doc_lens[is_val] if split == "val" else doc_lens[~is_val]
        doc_starts = (
            np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
            if len(lens)
            else np.zeros(0, np.int64)
        )
        np.save(tmp / docs_file(split), doc_starts)
        counts["n_tokens"][split] = int(lens.sum())
        counts["n_documents"][split] = int(len(lens))
        if has_mask:
            m = np.fromfile(tmp / mask_file(split), dtype=np.uint8)
            counts["n_loss_tokens"][split] = int(m.sum(dtype=np.int64))
    for name in ("all.tokens", "all.mask"):
        (tmp / name).unlink()
    return counts


def _commit(tmp: Path, out_dir: Path, has_mask: bool) -> None:
    """Move the finished files from ``tmp`` into ``out_dir``; meta.json goes last."""
    (out_dir / META_FILE).unlink(missing_ok=True)  # from here until the end the directory reads as unprepared
    for split in SPLITS:
        os.replace(tmp / tokens_file(split), out_dir / tokens_file(split))
        os.replace(tmp / docs_file(split), out_dir / docs_file(split))
        if has_mask:
            os.replace(tmp / mask_file(split), out_dir / mask_file(split))
        else:
            (out_dir / mask_file(split)).unlink(missing_ok=True)  # stale masks of an earlier chat prepare
    shutil.rmtree(out_dir / TOKENIZER_SUBDIR, ignore_errors=True)
    os.replace(tmp / TOKENIZER_SUBDIR, out_dir / TOKENIZER_SUBDIR)
    os.replace(tmp / META_FILE, out_dir / META_FILE)
