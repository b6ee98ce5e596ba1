"""Which implementation runs a memory layer's routed read, and where it is imported from.

The read's maths lives in ``moc.kernels.routed_read``; this module only chooses how to run it:

    on CUDA or under torch.compile,     the registered op ``moc.kernels.op.read`` (K/V of the distinct
    or eager on the CPU with its C      chapters kept for backward; Triton kernels on CUDA, the C
    kernels and K/V of at most          kernels of ``moc.kernels.cpu_read`` on the CPU; eager calls
    EAGER_KEPT_KV_ELEMENTS entries      skip torch.library's dispatch, ``moc.kernels.eager_op``)
    compiled on the CPU without the     plain gather-and-attend ops the compiler fuses (``gathered_read``),
    C kernels, small read               for reads small enough to gather whole
    eager otherwise                     the autograd Function ``routed_read`` (K/V recomputed in
                                        backward: saved memory independent of the chapters read)

An exported Hugging Face folder has no ``moc``: it holds a copy of ``routed_read.py`` beside this file
(imported by name below, which is how ``moc.hf.export`` finds it) and reads with the PyTorch loops.
Every ``moc`` import here sits in a try block, so the exported copy never needs ``moc``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

try:  # the C kernels' rules (moc only: an exported folder has no C kernels)
    from moc.kernels import cpu_read as _cpu_read
except ImportError:
    _cpu_read = None
# Looked up once, at import: the compiled read's choice must not run a PATH search while being traced.
_CPU_COMPILER = _cpu_read is not None and _cpu_read.has_compiler()

# Eager CPU reads by the C kernels keep K/V of the distinct chapters for backward (the op) when they hold
# at most this many entries (16 MB in float32), instead of recomputing them: at the bank series' shapes
# (8,192 tokens) recomputing cost more than the ~1 MB kept.
EAGER_KEPT_KV_ELEMENTS = 1 << 22

# Reads whose gathered keys, values and scores hold at most this many entries run as plain ops when
# compiled on the CPU (a token-routed toy model: ~10^6); larger ones keep the memory-bounded read.
GATHERED_READ_ELEMENTS = 1 << 24


def read_functions() -> tuple[Callable[..., Any], ...]:
    """(routed_read, chapter_coefficients, gathered_read): from moc, or the copy an exported Hugging Face
    folder holds (imported by name: transformers copies the files a remote-code module imports that way)."""
    try:
        from moc.kernels.routed_read import chapter_coefficients, gathered_read, routed_read
    except ImportError:  # an exported folder: moc.hf.export copies routed_read.py beside this file
        from .routed_read import chapter_coefficients, gathered_read, routed_read
    return routed_read, chapter_coefficients, gathered_read


def run_read(
    q: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    kv_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    inputs: tuple[torch.Tensor, ...],
    weighting: str,
    kernel: str,
    chapter_size: int,
    kv_elements: int,
) -> torch.Tensor:
    """The routed read of query tiles q (D, Qt, H, hd) over ``rows`` (D, n) of the distinct chapters
    whose K, V (U, T, kv_heads, hd) ``kv_fn(*inputs)`` projects (``kv_elements`` = 2 U T kv_heads hd
    entries), with chapter ``weights`` (D, n) -> (D, Qt, H, hd), run by the implementation that suits
    the device and compilation."""
    compiling = torch.compiler.is_compiling()
    hd = q.shape[-1]  # a plain int unless compiled with a dynamic head size
    c_kernels = not q.is_cuda and isinstance(hd, int) and cpu_kernels_run(q.dtype, hd, chapter_size, kernel)
    if compiling and not q.is_cuda and not c_kernels and gathered_fits(q, rows, chapter_size):
        # Compiled on the CPU with a small read and no C kernels: plain gather-and-attend ops that the
        # compiler fuses (autograd keeps the gathered chapters and the probabilities, a few MB here).
        k, v = kv_fn(*inputs)
        return read_functions()[2](q, k, v, rows, weights, weighting)
    keep_kv = c_kernels and not compiling and kv_elements <= EAGER_KEPT_KV_ELEMENTS
    op = read_op() if q.is_cuda or compiling or keep_kv else None
    if op is not None:  # the registered op: K/V of the distinct chapters kept for backward
        k, v = kv_fn(*inputs)
        return op(q, k, v, rows, weights, weighting, kernel=kernel)
    # Eager otherwise (and in an exported folder): the autograd Function, which recomputes K/V in
    # backward, so saved memory stays independent of how many chapters a batch reads.
    routed_read = read_functions()[0]
    fwd, bwd = read_impls(q.device, kernel)
    return routed_read(q, rows, weights, kv_fn, inputs, weighting, forward_impl=fwd, backward_impl=bwd)


def cpu_kernels_run(dtype: torch.dtype, head_dim: int, chapter_size: int, kernel: str) -> bool:
    """Whether the read's C kernels (``moc.kernels.cpu_read``) serve a CPU read of chapters of
    ``chapter_size`` with heads of ``head_dim`` in ``dtype`` under ``memory.kernel`` (False in an
    exported folder without ``moc``). Pure comparisons on constants, so torch.compile decides it while
    tracing, without a graph break: such a read then goes through the registered op, which says once if
    the kernels cannot be built."""
    if kernel == "torch" or _cpu_read is None or not _CPU_COMPILER:
        return False
    return _cpu_read.suits(head_dim, chapter_size) and _cpu_read.supports(dtype, chapter_size)


def gathered_fits(q: torch.Tensor, rows: torch.Tensor, chapter_size: int) -> bool:
    """Whether the read of q (D, Qt, H, hd) over rows (D, n) is small enough to gather whole."""
    D, Qt, H, hd = q.shape
    keys = rows.shape[1] * chapter_size
    return D * keys * (Qt * H + 2 * hd) <= GATHERED_READ_ELEMENTS


def read_op() -> Callable[..., torch.Tensor] | None:
    """``moc.kernels.op.read`` (the read as a registered op, traceable by torch.compile), or None in an
    exported folder without ``moc``."""
    try:
        from moc.kernels.op import read
    except ImportError:
        return None
    return read


def read_impls(device: torch.device, kernel: str) -> tuple[Callable[..., object] | None, ...]:
    """The routed read's (forward, backward) implementations for ``memory.kernel`` on ``device``
    (``moc.kernels.dispatch``), or (None, None): the blocked PyTorch loops. An exported folder without
    ``moc`` has no Triton path: on CUDA it says so once."""
    try:
        from moc.kernels.dispatch import read_impls as kernel_impls
    except ImportError as e:
        if device.type == "cuda" and kernel != "torch":
            reason = f"memory read: Triton fast path unavailable on CUDA ({e}); using the PyTorch path"
            try:
                from moc.errors import warn_once
            except ImportError:  # no moc at all: Python's default filter says it once per place
                warnings.warn(reason, stacklevel=3)
            else:
                warn_once(reason, stacklevel=3)
        return None, None
    return kernel_impls(device, kernel)
