"""Read dictd databases (``NAME.index`` + ``NAME.dict.dz``), the format of Debian's ``dict-*`` packages.

An index line is ``headword<TAB>offset<TAB>length`` with offset/length in dictd's base64 digits;
the ``.dict.dz`` file is gzip-compatible (dictzip), so :mod:`gzip` reads it whole.
"""

from __future__ import annotations

import gzip
from pathlib import Path

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}


def decode_b64_number(text: str) -> int:
    """dictd's base64 integer: ``"A"`` -> 0, ``"BA"`` -> 64."""
    value = 0
    for ch in text:
        if ch not in _B64_VALUE:
            raise ValueError(f"invalid dictd base64 digit {ch!r} in {text!r}")
        value = value * 64 + _B64_VALUE[ch]
    return value


def encode_b64_number(value: int) -> str:
    """Inverse of :func:`decode_b64_number` (used to write small test databases)."""
    if value == 0:
        return "A"
    digits = []
    while value:
        value, rem = divmod(value, 64)
        digits.append(_B64[rem])
    return "".join(reversed(digits))


def _decode(raw: bytes) -> str:
    # GCIDE is Latin-1 with a few stray bytes; the others are UTF-8. tokenizers needs valid UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_dictd(index_path: Path, dict_path: Path | None = None) -> list[tuple[str, str]]:
    """All entries of one database as ``(headword, body)`` in file order.

    Entries shared by several headwords are returned once; dictd's ``00-database-*`` metadata
    entries (URL, licence blurb) are skipped.
    """
    index_path = Path(index_path)
    if dict_path is None:
        stem = index_path.name[: -len(".index")]
        dict_path = index_path.with_name(stem + ".dict.dz")
        if not dict_path.exists():
            dict_path = index_path.with_name(stem + ".dict")
    opener = gzip.open if str(dict_path).endswith(".dz") or str(dict_path).endswith(".gz") else open
    with opener(dict_path, "rb") as f:
        data = f.read()
    seen: set[int] = set()
    spans: list[tuple[int, int, str]] = []
    with open(index_path, encoding="latin-1") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                raise ValueError(f"{index_path}:{lineno}: expected 'headword<TAB>offset<TAB>length'")
            head = parts[0]
            if head.startswith("00-database") or head.startswith("00database"):
                continue
            offset = decode_b64_number(parts[1])
            if offset in seen:
                continue
            seen.add(offset)
            spans.append((offset, decode_b64_number(parts[2]), head))
    spans.sort()
    return [(head, _decode(data[off : off + length])) for off, length, head in spans]
