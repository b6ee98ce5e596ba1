"""Small file-system helpers shared by the writers of checkpoints, exports and prepared data, and the
sha256 of a file (data source fingerprints, checkpoint manifests).

Outputs are built in a private temp folder and renamed into place. ``tempfile.mkdtemp`` creates that
folder 0700, and ``safetensors`` writes its files 0600, whatever the umask says; a folder renamed into
place keeps those modes, so another user or a serving account would get "Permission denied".
:func:`apply_umask` gives every file and folder the mode a plain ``open``/``mkdir`` would have given it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from pathlib import Path

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the OS allows."""
    try:  # Linux >= 4.7 reports it; reading it this way is thread-safe
        m = re.search(r"^Umask:\s*([0-7]+)", Path("/proc/self/status").read_text(), re.MULTILINE)
        if m:
            return int(m.group(1), 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def apply_umask(root: str | Path) -> None:
    """Give ``root`` and everything under it the modes the umask allows: folders ``0o777 & ~umask``,
    files ``0o666 & ~umask`` (plus the execute bits where the file already had them)."""
    mask = current_umask()
    root = Path(root)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if p.is_symlink():
            continue
        if p.is_dir():
            os.chmod(p, 0o777 & ~mask)
        else:
            executable = os.stat(p).st_mode & 0o111
            os.chmod(p, (0o666 | (0o111 if executable else 0)) & ~mask)


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks (files of any size): the content
    fingerprint of a data source file and of each checkpoint file in its manifest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
