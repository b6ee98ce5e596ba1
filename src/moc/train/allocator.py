"""Keep freed CPU memory inside the process, so that each training step reuses pages already mapped.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc gives blocks above a threshold (128 KiB
at first, then moving with use) their own fresh ``mmap`` and unmaps them on free, and it trims the top of
its heap back to the system. A training step frees and re-allocates the same activations every step, so
it keeps taking one page fault per 4 KiB it touches again: 300-650 faults per step for the capacity
models here, up to a fifth of their step (``bench/capacity_step.py --default-malloc`` measures it).

:func:`retain_freed_memory` sets glibc's ``M_MMAP_THRESHOLD`` to its maximum (32 MiB on 64-bit: larger
blocks are still mapped on their own) and ``M_TRIM_THRESHOLD`` out of reach, as
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:glibc.malloc.trim_threshold=...`` would at start-up.
The cost: the process keeps its peak heap until it exits. ``train.retain_freed_memory`` (on by default)
calls it for CPU training.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from moc.errors import warn_once

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX for 64-bit
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: never trim


@functools.cache
def retain_freed_memory() -> str | None:
    """Set glibc's malloc to keep freed memory (once per process). None when done, else why not."""
    if not sys.platform.startswith("linux"):
        return f"not Linux ({sys.platform}): its C library's malloc has no glibc thresholds to set"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError) as e:
        return f"the C library has no mallopt (not glibc?): {e}"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:  # glibc returns 1 on success
            return f"mallopt({param}, {value}) was refused by the C library"
    return None


def retain_freed_memory_once() -> bool:
    """:func:`retain_freed_memory` for CPU training (``train.retain_freed_memory``); where it cannot be
    done, says why once. True when freed memory is now kept."""
    reason = retain_freed_memory()
    if reason is not None:
        warn_once(
            f"train.retain_freed_memory: freed CPU memory goes back to the system ({reason}); each step may "
            "fault its pages in again (set train.retain_freed_memory: false to silence this)",
            stacklevel=3,
        )
    return reason is None
