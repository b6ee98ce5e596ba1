"""Text sources: turn what the user points at into a deterministic stream of documents.

A *source spec* is one of

- a ``.txt`` file: one document per file by default; ``txt_mode="line"`` makes every non-blank line
  a document and ``txt_mode="paragraph"`` every block of lines separated by blank lines;
- a ``.jsonl`` file: one JSON object per line, the document is its ``text_field`` (default ``"text"``);
- a ``.parquet`` file: the ``text_field`` column;
- a folder: every ``.txt``/``.jsonl``/``.parquet`` file under it, recursively, in sorted path order
  (hidden files and other extensions are skipped);
- ``hf:NAME[:CONFIG][@SPLIT]``: a Hugging Face dataset, loaded with ``datasets.load_from_disk`` when
  NAME is a folder written by ``save_to_disk`` and with ``datasets.load_dataset(NAME, CONFIG,
  split=SPLIT)`` otherwise (a Hub id, or a local folder of data files). SPLIT defaults to ``train``.

    sources = resolve_sources(["corpus/", "extra.jsonl", "hf:wikitext:wikitext-2-raw-v1@train"])
    for text in iter_documents(sources):
        ...

Text must be UTF-8; a file that is not names the byte offset where decoding failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moc.data.errors import DataError
from moc.files import sha256_file

TxtMode = Literal["file", "line", "paragraph"]
TXT_MODES: tuple[str, ...] = ("file", "line", "paragraph")
EXTENSIONS: dict[str, str] = {".txt": "txt", ".jsonl": "jsonl", ".parquet": "parquet"}
HF_PREFIX = "hf:"
_PARQUET_BATCH = 1024
_HF_BATCH = 1000


@dataclass
class Source:
    """One resolved input: a single file or one split of a Hugging Face dataset."""

    spec: str  # what the user wrote (a folder expands into several Sources with the same spec)
    kind: Literal["txt", "jsonl", "parquet", "hf"]
    path: Path | None = None
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    _dataset: Any = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        """How error messages and progress bars refer to this source."""
        return str(self.path) if self.path is not None else self.spec

    def dataset(self) -> Any:
        """The loaded ``datasets.Dataset`` (hf sources only; loaded once, memory-mapped by datasets)."""
        if self._dataset is None:
            self._dataset = _load_hf(self.hf_name or "", self.hf_config, self.hf_split, self.spec)
        return self._dataset

    def size_bytes(self) -> int:
        """File size, or the in-memory Arrow size of a dataset (used for progress bars only)."""
        if self.path is not None:
            return self.path.stat().st_size
        return int(self.dataset().data.nbytes)

    def describe(self, cache: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """What identifies this source's content (goes into meta.json and the reuse fingerprint).

        ``cache`` maps a path to an earlier description; its sha256 is reused when size and mtime
        still match, so re-checking a large unchanged corpus does not re-hash it.
        """
        if self.path is not None:
            st = self.path.stat()
            old = (cache or {}).get(str(self.path))
            if old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
                digest = old["sha256"]
            else:
                digest = sha256_file(self.path)
            return {
                "source": self.spec,
                "path": str(self.path),
                "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "sha256": digest,
            }
        ds = self.dataset()
        return {
            "source": self.spec,
            "dataset": self.hf_name,
            "config": self.hf_config,
            "split": self.hf_split,
            "rows": len(ds),
            "fingerprint": getattr(ds, "_fingerprint", None),
        }


# --------------------------------------------------------------------------------------------------
# Resolving specs
# --------------------------------------------------------------------------------------------------


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``"hf:NAME[:CONFIG][@SPLIT]"`` -> ``(NAME, CONFIG or None, SPLIT or "train")``."""
    body = spec[len(HF_PREFIX) :]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    if not name or not split:
        raise DataError(f"cannot read dataset spec {spec!r}; write hf:NAME, hf:NAME:CONFIG or hf:NAME@SPLIT")
    return name, config or None, split


def resolve_sources(specs: Sequence[str | Path]) -> list[Source]:
    """Expand specs (files, folders, ``hf:`` datasets) into an ordered list of Sources.

    Raises DataError for a missing path, a folder without supported files, or an unknown extension.
    """
    if not specs:
        raise DataError("no data sources given; pass .txt/.jsonl/.parquet files, folders or hf:NAME")
    out: list[Source] = []
    for raw in specs:
        spec = str(raw)
        if spec.startswith(HF_PREFIX):
            name, config, split = parse_hf_spec(spec)
            out.append(Source(spec=spec, kind="hf", hf_name=name, hf_config=config, hf_split=split))
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            hint = (
                f"; for a Hugging Face dataset write hf:{spec}"
                if "/" in spec and not path.parent.exists()
                else ""
            )
            raise DataError(f"data source {spec} does not exist{hint}")
        if path.is_dir():
            files = _folder_files(path)
            if not files:
                raise DataError(
                    f"folder {spec} has no {'/'.join(EXTENSIONS)} files (searched recursively; hidden files "
                    "and other extensions are skipped)"
                )
            out.extend(Source(spec=spec, kind=EXTENSIONS[f.suffix.lower()], path=f.resolve()) for f in files)
            continue
        if not path.is_file():  # a FIFO would wait forever for a writer; a device never ends
            raise DataError(
                f"data source {spec} is not a regular file (a FIFO or device); pass a file or folder"
            )
        kind = EXTENSIONS.get(path.suffix.lower())
        if kind is None:
            raise DataError(
                f"{spec}: unknown extension {path.suffix or '(none)'!r}; supported are .txt (one document "
                "per file, or per line/paragraph with --txt-mode), .jsonl, .parquet, folders of these, and "
                "hf:NAME for Hugging Face datasets"
            )
        out.append(Source(spec=spec, kind=kind, path=path.resolve()))  # type: ignore[arg-type]
    return out


def as_sources(items: Sequence[Source | str | Path]) -> list[Source]:
    """Resolve the specs among ``items``; already-resolved Sources pass through."""
    out: list[Source] = []
    for item in items:
        out.extend([item] if isinstance(item, Source) else resolve_sources([item]))
    if not out:
        raise DataError("no data sources given; pass .txt/.jsonl/.parquet files, folders or hf:NAME")
    return out


def _folder_files(folder: Path) -> list[Path]:
    files = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in EXTENSIONS:
            files.append(p)
    # Sort by the path relative to the folder so the order is the same on every machine.
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _utf8_error(name: str, offset: int, line: int | None = None) -> DataError:
    where = f" (line {line})" if line is not None else ""
    return DataError(
        f"{name} is not valid UTF-8 text: bad byte at offset {offset}{where}. Convert it first, e.g. "
        f"`iconv -f latin1 -t utf-8 {name} > fixed.txt` (use the file's real encoding for -f)"
    )


def _decode(raw: bytes, name: str, base_offset: int = 0, line: int | None = None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(name, base_offset + e.start, line) from None


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Each line of a file (its line ending kept) with its 1-based number, decoded as UTF-8 one line at a
    time so that a large file streams; a line that is not UTF-8 raises DataError naming the byte offset in
    the file and the line."""
    name = str(path)
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, name, offset, lineno)
            offset += len(raw)
            yield lineno, line


def _iter_txt(path: Path, mode: str) -> Iterator[tuple[str, str]]:
    name = str(path)
    if mode == "file":
        text = _decode(path.read_bytes(), name)
        if not text.strip():
            raise DataError(f"{name} is empty (no text); remove it or fill it")
        yield text, name
        return
    if mode not in TXT_MODES:
        raise DataError(f"unknown txt_mode {mode!r}; use one of {', '.join(TXT_MODES)}")
    n_docs = 0
    block: list[str] = []
    block_line = 0
    for lineno, line in _decoded_lines(path):
        if mode == "line":
            if line.strip():
                n_docs += 1
                yield line.rstrip("\r\n"), f"{name}:{lineno}"
            continue
        if line.strip():
            if not block:
                block_line = lineno
            block.append(line)
        elif block:
            n_docs += 1
            yield "".join(block).rstrip("\r\n"), f"{name}:{block_line}"
            block = []
    if block:
        n_docs += 1
        yield "".join(block).rstrip("\r\n"), f"{name}:{block_line}"
    if n_docs == 0:
        raise DataError(f"{name} is empty (no text); remove it or fill it")


def _iter_jsonl_rows(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Each JSON object of a .jsonl file with its ``file:line`` location (blank lines are skipped)."""
    name = str(path)
    n_rows = 0
    for lineno, line in _decoded_lines(path):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object per line, got {type(row).__name__}")
        n_rows += 1
        yield row, where
    if n_rows == 0:
        raise DataError(f"{name} is empty (no JSON lines); remove it or fill it")


def _iter_parquet_rows(path: Path, columns: list[str]) -> Iterator[tuple[dict[str, Any], str]]:
    import pyarrow.parquet as pq

    name = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DataError(f"{name}: cannot read as Parquet ({e})") from None
    have = pf.schema_arrow.names
    missing = [c for c in columns if c not in have]
    if missing:
        raise DataError(
            f"{name} has no column {missing[0]!r} (columns: {', '.join(have)}); pick one with --text-field"
        )
    if pf.metadata.num_rows == 0:
        raise DataError(f"{name} is empty (0 rows); remove it or fill it")
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=columns):
        for item in batch.to_pylist():
            yield item, f"{name} row {row}"
            row += 1


def _load_hf(name: str, config: str | None, split: str, spec: str) -> Any:
    import datasets

    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(
                        f"{spec}: no split {split!r}; splits are {', '.join(ds)} (write hf:{name}@SPLIT)"
                    )
                ds = ds[split]
            return ds
        return datasets.load_dataset(name, config, split=split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, ValueError, ConnectionError...)
        raise DataError(f"could not load Hugging Face dataset {spec}: {type(e).__name__}: {e}") from None


def _iter_hf_rows(source: Source, columns: list[str]) -> Iterator[tuple[dict[str, Any], str]]:
    ds = source.dataset()
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(
            f"{source.spec} has no column {missing[0]!r} (columns: {', '.join(ds.column_names)}); "
            "pick one with --text-field"
        )
    if len(ds) == 0:
        raise DataError(f"{source.spec} is empty (0 rows)")
    row = 0
    for batch in ds.select_columns(columns).iter(batch_size=_HF_BATCH):
        for i in range(len(batch[columns[0]])):
            yield {c: batch[c][i] for c in columns}, f"{source.spec} row {row}"
            row += 1


def iter_rows(source: Source, columns: list[str]) -> Iterator[tuple[dict[str, Any], str]]:
    """Rows (dicts) of a jsonl/parquet/hf source with their location, for structured data like chats."""
    if source.kind == "jsonl":
        assert source.path is not None
        return _iter_jsonl_rows(source.path)
    if source.kind == "parquet":
        assert source.path is not None
        return _iter_parquet_rows(source.path, columns)
    if source.kind == "hf":
        return _iter_hf_rows(source, columns)
    raise DataError(
        f"{source.name}: a .txt file holds plain text, not records; use .jsonl, .parquet or hf:NAME"
    )


def iter_source_documents(
    source: Source, text_field: str = "text", txt_mode: str = "file"
) -> Iterator[tuple[str, str]]:
    """``(text, location)`` for every document of one source, in file order.

    Empty strings in jsonl/parquet/hf rows are skipped (they would only add a separator token).
    """
    if txt_mode not in TXT_MODES:
        raise DataError(f"unknown txt_mode {txt_mode!r}; use one of {', '.join(TXT_MODES)}")
    if source.kind == "txt":
        assert source.path is not None
        yield from _iter_txt(source.path, txt_mode)
        return
    hint = "pick the field with --text-field" if source.kind != "hf" else "pick the column with --text-field"
    for row, where in iter_rows(source, [text_field]):
        if text_field not in row:
            fields = ", ".join(sorted(row)) or "none"
            raise DataError(f"{where}: no {text_field!r} field (fields: {fields}); {hint}")
        text = row[text_field]
        if text is None:
            raise DataError(f"{where}: {text_field!r} is null; drop the row or fill it")
        if not isinstance(text, str):
            raise DataError(f"{where}: {text_field!r} must be a string, got {type(text).__name__}")
        if text:
            yield text, where


def iter_documents(
    sources: Sequence[Source | str | Path], text_field: str = "text", txt_mode: str = "file"
) -> Iterator[str]:
    """Every document of every source, in order (specs are resolved first)."""
    for source in as_sources(sources):
        for text, _ in iter_source_documents(source, text_field, txt_mode):
            yield text
