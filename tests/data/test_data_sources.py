"""Text sources: each file type, folders, Hugging Face datasets (local only), and every error message."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moc.data import DataError, iter_documents, resolve_sources
from moc.data.sources import iter_source_documents, parse_hf_spec


def docs(*specs: str | Path, **kw: str) -> list[str]:
    return list(iter_documents([str(s) for s in specs], **kw))


def test_txt_modes(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("line one\nline two\n\n\nthird para\nstill third\n")
    assert docs(f) == ["line one\nline two\n\n\nthird para\nstill third\n"]
    assert docs(f, txt_mode="line") == ["line one", "line two", "third para", "still third"]
    assert docs(f, txt_mode="paragraph") == ["line one\nline two", "third para\nstill third"]


def test_jsonl_field_and_parquet(tmp_path: Path, write_jsonl) -> None:
    j = write_jsonl(tmp_path / "a.jsonl", [{"text": "first", "id": 1}, {"text": ""}, {"text": "second"}])
    assert docs(j) == ["first", "second"]  # empty strings are skipped
    k = write_jsonl(tmp_path / "b.jsonl", [{"body": "x"}, {"body": "y"}])
    assert docs(k, text_field="body") == ["x", "y"]
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["p1", "p2", "p3"], "n": [1, 2, 3]}), p)
    assert docs(p, text_field="content") == ["p1", "p2", "p3"]


def test_folder_is_recursive_sorted_and_skips_others(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.txt").write_text("bz")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "c.jsonl").write_text('{"text": "c"}\n')
    (tmp_path / "README.md").write_text("not data")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.txt").write_text("hidden")
    assert docs(tmp_path) == ["a", "bz", "c"]
    assert [s.kind for s in resolve_sources([tmp_path])] == ["txt", "txt", "jsonl"]


def test_hf_spec_parsing() -> None:
    assert parse_hf_spec("hf:wikitext") == ("wikitext", None, "train")
    assert parse_hf_spec("hf:wikitext:wikitext-2-raw-v1@validation") == (
        "wikitext",
        "wikitext-2-raw-v1",
        "validation",
    )
    assert parse_hf_spec("hf:/data/set@test") == ("/data/set", None, "test")


def test_hf_save_to_disk_and_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_jsonl
) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2"]}),
            "validation": datasets.Dataset.from_dict({"text": ["v1"]}),
        }
    )
    dd.save_to_disk(tmp_path / "saved")
    assert docs(f"hf:{tmp_path / 'saved'}") == ["t1", "t2"]
    assert docs(f"hf:{tmp_path / 'saved'}@validation") == ["v1"]
    with pytest.raises(DataError, match=r"no split 'test'; splits are train, validation"):
        docs(f"hf:{tmp_path / 'saved'}@test")
    # A folder of data files goes through datasets.load_dataset (the same call a Hub id uses).
    (tmp_path / "raw").mkdir()
    write_jsonl(tmp_path / "raw" / "part.jsonl", [{"body": "r1"}, {"body": "r2"}])
    assert docs(f"hf:{tmp_path / 'raw'}", text_field="body") == ["r1", "r2"]
    with pytest.raises(DataError, match=r"has no column 'text' \(columns: body\)"):
        docs(f"hf:{tmp_path / 'raw'}")


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.txt does not exist"):
        resolve_sources([tmp_path / "nope.txt"])
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"x.csv: unknown extension '.csv'; supported are .txt"):
        resolve_sources([tmp_path / "x.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder .*empty has no .txt/.jsonl/.parquet files"):
        resolve_sources([tmp_path / "empty"])
    with pytest.raises(DataError, match="no data sources"):
        resolve_sources([])


@pytest.mark.parametrize("mode", ["file", "line", "paragraph"])
def test_empty_txt_names_file(tmp_path: Path, mode: str) -> None:
    f = tmp_path / "blank.txt"
    f.write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank.txt is empty"):
        docs(f, txt_mode=mode)


def test_empty_jsonl_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"e.jsonl is empty"):
        docs(tmp_path / "e.jsonl")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e.parquet is empty \(0 rows\)"):
        docs(tmp_path / "e.parquet")


@pytest.mark.parametrize("mode", ["file", "line"])
def test_non_utf8_names_offset_and_iconv(tmp_path: Path, mode: str) -> None:
    f = tmp_path / "latin.txt"
    f.write_bytes(b"ok line\ncaf\xe9\n")
    with pytest.raises(
        DataError, match=r"latin.txt is not valid UTF-8 text: bad byte at offset 11.*iconv -f latin1"
    ):
        docs(f, txt_mode=mode)
    j = tmp_path / "latin.jsonl"
    j.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(
        DataError, match=r"latin.jsonl is not valid UTF-8 text: bad byte at offset 27 \(line 2\)"
    ):
        docs(j)


def test_jsonl_row_errors_name_file_and_line(tmp_path: Path, write_jsonl) -> None:
    j = write_jsonl(tmp_path / "d.jsonl", [{"text": "fine"}, {"body": "wrong field"}])
    with pytest.raises(
        DataError, match=r"d.jsonl:2: no 'text' field \(fields: body\); pick the field with --text-field"
    ):
        docs(j)
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        docs(tmp_path / "bad.jsonl")
    write_jsonl(tmp_path / "num.jsonl", [{"text": 3}])
    with pytest.raises(DataError, match=r"num.jsonl:1: 'text' must be a string, got int"):
        docs(tmp_path / "num.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"list.jsonl:1: expected a JSON object per line"):
        docs(tmp_path / "list.jsonl")


def test_parquet_missing_column_and_null(tmp_path: Path) -> None:
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["a", None]}), p)
    with pytest.raises(DataError, match=r"p.parquet row 1: 'text' is null"):
        docs(p)
    with pytest.raises(DataError, match=r"p.parquet has no column 'body' \(columns: text\)"):
        docs(p, text_field="body")


def test_txt_source_has_no_records(tmp_path: Path) -> None:
    from moc.data.chat import iter_conversations

    (tmp_path / "a.txt").write_text("x")
    (source,) = resolve_sources([tmp_path / "a.txt"])
    with pytest.raises(DataError, match="holds plain text, not records"):
        list(iter_conversations(source))
    with pytest.raises(DataError, match="unknown txt_mode 'words'"):
        list(iter_source_documents(source, txt_mode="words"))
