from __future__ import annotations

import pytest

from moc_experiments.corpus.dictd import decode_b64_number, encode_b64_number, read_dictd

from .fakes import GCIDE_ENTRIES, write_dictd


@pytest.mark.parametrize("value", [0, 1, 63, 64, 4095, 123456789])
def test_b64_roundtrip(value: int) -> None:
    assert decode_b64_number(encode_b64_number(value)) == value


def test_b64_known_values() -> None:
    assert decode_b64_number("A") == 0
    assert decode_b64_number("BA") == 64


def test_b64_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid dictd base64 digit"):
        decode_b64_number("A-")


def test_read_dictd_skips_metadata_dedupes_and_decodes_latin1(tmp_path) -> None:
    write_dictd(tmp_path, "gcide", GCIDE_ENTRIES, encoding="latin-1")
    entries = read_dictd(tmp_path / "gcide.index")
    assert [h for h, _ in entries] == [h for h, _ in GCIDE_ENTRIES]  # no 00-database-url, no alias duplicate
    assert entries[1][1].startswith("Café")  # Latin-1 byte 0xE9 decoded, not mangled


def test_read_dictd_bad_index(tmp_path) -> None:
    write_dictd(tmp_path, "x", [("a", "b\n")])
    (tmp_path / "x.index").write_text("broken line\n")
    with pytest.raises(ValueError, match="expected 'headword<TAB>offset<TAB>length'"):
        read_dictd(tmp_path / "x.index")
