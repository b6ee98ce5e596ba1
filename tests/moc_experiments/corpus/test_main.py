from __future__ import annotations

import json

from moc_experiments.corpus.__main__ import main


def test_missing_debian_packages_flag(capsys, monkeypatch) -> None:
    monkeypatch.setattr(
        "moc_experiments.corpus.__main__.missing_debian_packages", lambda: ["dict-gcide", "fortunes"]
    )
    assert main(["--missing-debian-packages"]) == 0
    assert capsys.readouterr().out.strip() == "dict-gcide fortunes"


def test_bad_source_is_a_clean_error(tmp_path, capsys) -> None:
    assert main([str(tmp_path / "out"), "--sources", "kjv,bogus"]) == 2
    assert "unknown text source(s) ['bogus']" in capsys.readouterr().err


def test_builds(tmp_path, capsys, monkeypatch, fake_roots) -> None:
    monkeypatch.setattr("moc_experiments.corpus.build.SourceRoots", lambda: fake_roots)
    assert main([str(tmp_path / "out"), "--max-text-mb", "0.6", "--seed", "3", "--no-download"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "out").resolve())
    assert json.loads((tmp_path / "out" / "MANIFEST.json").read_text())["seed"] == 3
