from __future__ import annotations

import pytest

from moc_experiments.corpus.roots import (
    APT_INSTALL_COMMAND,
    DEBIAN_PACKAGES,
    debian_package_present,
    missing_debian_packages,
)


def test_missing_debian_packages_fake_and_empty(fake_roots, empty_roots) -> None:
    assert missing_debian_packages(fake_roots) == []
    assert missing_debian_packages(empty_roots) == list(DEBIAN_PACKAGES)


def test_install_command_lists_every_package() -> None:
    assert APT_INSTALL_COMMAND.startswith("apt-get update && apt-get install -y")
    for pkg in DEBIAN_PACKAGES:
        assert pkg in APT_INSTALL_COMMAND.split()


def test_unknown_package() -> None:
    with pytest.raises(KeyError, match="unknown Debian source package"):
        debian_package_present("not-a-package")


def test_python_docs_picks_newest(tmp_path) -> None:
    from moc_experiments.corpus.roots import SourceRoots

    for minor in (9, 13, 11):
        (tmp_path / f"python3.{minor}" / "html" / "_sources").mkdir(parents=True)
    roots = SourceRoots(python_docs_glob=str(tmp_path / "python3*" / "html" / "_sources"))
    assert roots.python_docs_dir() == tmp_path / "python3.13" / "html" / "_sources"
