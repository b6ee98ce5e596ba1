"""Fixtures the CLI fault tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def work(base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the test module's ``base`` fixture (a built run), made the working directory."""
    dst = tmp_path / "w"
    shutil.copytree(base, dst)
    monkeypatch.chdir(dst)
    return dst
