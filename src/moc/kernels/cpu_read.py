"""The routed read's CPU kernels: ``cpu_read.c``, built with the system C compiler on first use.

Same contract as the blocked PyTorch loops of ``routed_read`` (``routed_read_forward_torch`` /
``routed_read_backward_torch``), for float32 and float64 tensors on the CPU. The C file says why a
hand-written loop: a token-routed read's scores are dot products shorter than a vector register.

One library per (dtype, head size, chapter size) is compiled once per machine (``moc.kernels.cpu_build``).
Where it cannot be built :func:`unavailable` says why, and ``moc.kernels.dispatch`` says so once and runs
the PyTorch loops; :func:`suits` says where the kernels are the faster path.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from moc.kernels import cpu_build
from moc.kernels.cpu_build import has_compiler
from moc.kernels.routed_read import WEIGHTINGS

__all__ = ["has_compiler", "suits", "supports", "unavailable", "forward", "backward"]

MAX_SELECTED = 64  # chapters one decision reads at most (the per-tile buffers of cpu_read.c)
# Head size x chapter size up to which the C kernels serve a read: their accumulators (head size vectors
# of a chapter's tokens) then stay in vector registers. Larger reads run faster as the PyTorch path's
# matrix products (the real-text demo's 32 x 64: 1.22x its dense model's step against 1.16x).
MAX_CHAPTER_TILE = 256
_I64, _F64, _P = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


class _Strides(ctypes.Structure):
    """cpu_read.c's ``strides``: of keys or values (U, T, Hkv, hd) with the tokens adjacent."""

    _fields_ = [("chapter", _I64), ("head", _I64), ("element", _I64)]


@functools.cache
def _library(real: str, head_dim: int, chapter_size: int) -> ctypes.CDLL | str:
    """The library for C type ``real`` and these sizes, or why it cannot be built (a one-line reason)."""
    defines = (f"-DREAL={real}", f"-DHD={head_dim}", f"-DTC={chapter_size}")
    lib = cpu_build.library("cpu_read.c", (*defines, "-DFAST_EXP") if real == "float" else defines)
    if not isinstance(lib, str):
        lib.read_forward.argtypes = [_P] * 7 + [_I64] * 9 + [_F64, _Strides, _Strides]
        lib.read_backward.argtypes = [_P] * 12 + [_I64] * 9 + [_F64, _Strides, _Strides]
    return lib


def suits(head_dim: int, chapter_size: int) -> bool:
    """Whether the C kernels are the faster path for this head size and chapter size."""
    return head_dim * chapter_size <= MAX_CHAPTER_TILE


def supports(dtype: torch.dtype, chapter_size: int) -> bool:
    """Whether the kernels exist for this dtype and chapter size (a pure check: no build, no I/O)."""
    return dtype in cpu_build.REALS and chapter_size & (chapter_size - 1) == 0


def unavailable(
    dtype: torch.dtype, chapter_size: int, head_dim: int | None = None, n_selected: int = 1
) -> str | None:
    """Why the C kernels cannot read chapters of ``chapter_size`` in ``dtype`` (None: they can). With
    ``head_dim`` it also builds (or finds) the library for that head size; without, it checks only that
    a compiler is there."""
    if not supports(dtype, chapter_size):
        if dtype not in cpu_build.REALS:
            return f"the CPU kernels support float32 and float64, not {dtype}"
        return f"the CPU kernels need a chapter size that is a power of two, not {chapter_size}"
    if n_selected > MAX_SELECTED:
        return f"the CPU kernels read at most {MAX_SELECTED} chapters per decision, not {n_selected}"
    if head_dim is None:
        return None if has_compiler() else cpu_build.NO_COMPILER
    lib = _library(cpu_build.REALS[dtype], head_dim, chapter_size)
    return lib if isinstance(lib, str) else None


def _ptr(x: torch.Tensor) -> int:
    return x.data_ptr()


def tokens_last(x: torch.Tensor) -> torch.Tensor:
    """Keys or values x (U, T, Hkv, hd) with each chapter head's T tokens adjacent (stride 1), as the C
    functions read them: x itself when they are (moc.model.memory projects them so on the CPU), else a
    copy laid out (U, Hkv, hd, T), seen as (U, T, Hkv, hd)."""
    if x.stride(1) == 1 or x.shape[1] == 1:
        return x
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _strides(x: torch.Tensor) -> _Strides:
    return _Strides(x.stride(0), x.stride(2), x.stride(3))


def _operands(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor
              ) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """q contiguous, k and v tokens last, idx (int64) and w in q's dtype, as the C functions read them."""
    idx, w = idx.to(torch.int64).contiguous(), w.to(q.dtype).contiguous()
    return q.contiguous(), tokens_last(k), tokens_last(v), idx, w


def _sizes(q: torch.Tensor, k: torch.Tensor, idx: torch.Tensor, weighting: str) -> tuple[int, ...]:
    """D, Qt, H, Hkv, hd, T, U, n and the weighting's index, the C functions' size arguments."""
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    return D, Qt, H, kvh, hd, T, U, idx.shape[1], WEIGHTINGS.index(weighting)


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"the CPU memory read's {what} was built for other head or chapter sizes")


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
    weighting: str, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out (D, Qt, H, hd), lse (D, H, Qt)) as ``routed_read_forward_torch``."""
    lib = _library(cpu_build.REALS[q.dtype], q.shape[-1], k.shape[1])
    q, k, v, idx, wq = _operands(q, k, v, idx, w)
    D, Qt, H = q.shape[:3]
    out, lse = torch.empty_like(q), q.new_empty(D, H, Qt)
    status = lib.read_forward(*map(_ptr, (q, k, v, idx, wq, out, lse)), *_sizes(q, k, idx, weighting), scale,
                              _strides(k), _strides(v))  # fmt: skip
    _check(status, "forward")
    return out, lse


def backward(
    do: torch.Tensor, q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, weighting: str, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, dv, dw) as ``routed_read_backward_torch``; dk, dv laid out as the tokens-last k, v read
    (``tokens_last``)."""
    lib = _library(cpu_build.REALS[q.dtype], q.shape[-1], k.shape[1])
    q, k, v, idx, wq = _operands(q, k, v, idx, w)
    do, out, lse = do.to(q.dtype).contiguous(), out.contiguous(), lse.to(q.dtype).contiguous()
    # dk, dv in k's and v's layout, accumulated in place
    dk, dv = (torch.empty_strided(x.shape, x.stride(), dtype=x.dtype).zero_() for x in (k, v))
    dq, dw = torch.empty_like(q), torch.empty_like(wq)
    tensors = (do, q, out, lse, k, v, idx, wq, dq, dk, dv, dw)
    sizes = _sizes(q, k, idx, weighting)
    status = lib.read_backward(*map(_ptr, tensors), *sizes, scale, _strides(k), _strides(v))
    _check(status, "backward")
    return dq, dk, dv, dw.to(w.dtype)
