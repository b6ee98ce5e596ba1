"""Building moc's C kernels (``cpu_read.c``, ``cpu_router.c``, ``cpu_norm.c``) with the system C compiler,
once per machine.

Each library (a source file and its ``-D`` defines) is compiled on first use with ``-O3 -march=native`` into
``$MOC_CACHE_DIR/kernels`` (default ``~/.cache/moc/kernels``), under a name that hashes the sources (the
file and the headers beside it), the flags and the compiler, and written atomically, so concurrent first
uses (several sweep workers) never load a half-written file and a changed source is never served stale.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from moc.errors import one_line

KERNEL_DIR = Path(__file__).parent
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c11", "-ffp-contract=fast", "-Wno-psabi")
NO_COMPILER = "no C compiler found: install gcc or set CC"
REALS = {torch.float32: "float", torch.float64: "double"}  # the C type each library is built for


def compiler() -> str | None:
    """``CC``, or the first of cc / gcc / clang on the PATH."""
    return os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def has_compiler() -> bool:
    """Whether a C compiler is on this machine (``CC``, or cc / gcc / clang on the PATH)."""
    return compiler() is not None


def cache_dir() -> Path:
    return Path(os.environ.get("MOC_CACHE_DIR") or Path.home() / ".cache" / "moc") / "kernels"


@functools.cache
def library(source: str, defines: tuple[str, ...]) -> ctypes.CDLL | str:
    """The library built from ``source`` (a file in this folder) with ``defines`` (``-DNAME=value``), or
    why it cannot be built (a one-line reason)."""
    cc = compiler()
    if cc is None:
        return NO_COMPILER
    path = KERNEL_DIR / source
    text = path.read_bytes() + b"".join(h.read_bytes() for h in sorted(KERNEL_DIR.glob("*.h")))
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"the C compiler {cc!r} does not run ({one_line(e)})"
    key = hashlib.sha256(
        b"\0".join(x.encode() for x in (*FLAGS, *defines, version, platform.machine())) + text
    ).hexdigest()[:16]
    # e.g. cpu_read_float_hd8_tc16_<hash>.so
    valued = [d[2:].split("=") for d in defines if "=" in d]  # REAL=float, HD=8, TC=16 (not FAST_EXP)
    tag = "_".join(v if k == "REAL" else f"{k.lower()}{v}" for k, v in valued)
    out = cache_dir() / f"{path.stem}_{tag}_{key}.so"
    if not out.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
            os.close(fd)
            cmd = [cc, *FLAGS, *defines, str(path), "-o", tmp, "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                os.unlink(tmp)
                return f"{' '.join(cmd[:3])} ... failed: {one_line(done.stderr) or done.returncode}"
            os.replace(tmp, out)  # atomic: another process sees no file or the whole one
        except (OSError, subprocess.SubprocessError) as e:
            return f"building {out.name} failed ({one_line(e)})"
    return ctypes.CDLL(str(out))


def unavailable_for(
    dtype: torch.dtype, kernels: str, build: Callable[[str], ctypes.CDLL | str]
) -> str | None:
    """Why ``kernels`` (their name in messages, e.g. "the CPU norm kernels") cannot run on ``dtype``: not
    float32 or float64, or ``build(C type)`` gave a reason instead of a library (None: they can)."""
    if dtype not in REALS:
        return f"{kernels} support float32 and float64, not {dtype}"
    lib = build(REALS[dtype])
    return lib if isinstance(lib, str) else None


def built_for(dtype: torch.dtype, kernels: str, build: Callable[[str], ctypes.CDLL | str]) -> ctypes.CDLL:
    """``build(C type)``'s library for ``dtype``, or a RuntimeError naming why ``kernels`` cannot run."""
    reason = unavailable_for(dtype, kernels, build)
    if reason is not None:
        raise RuntimeError(f"{kernels} cannot run: {reason}")
    return build(REALS[dtype])  # type: ignore[return-value]
