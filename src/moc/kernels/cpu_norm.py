"""RMS normalisation's CPU kernels: ``cpu_norm.c``, built with the system C compiler on first use.

:class:`RMSNormFunction` is ``F.rms_norm`` over the last dim (float32 and float64, eager CPU) with a
one-pass forward and backward; ``moc.model.layers`` runs it where :func:`unavailable` says it can (and
says once why not where it cannot). One library per dtype (``moc.kernels.cpu_build``).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

import torch

from moc.kernels import cpu_build

_I64, _F64, _P = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


@functools.cache
def _library(real: str) -> ctypes.CDLL | str:
    lib = cpu_build.library("cpu_norm.c", (f"-DREAL={real}",))
    if not isinstance(lib, str):
        lib.rms_norm_forward.argtypes = [_P] * 4 + [_I64] * 2 + [_F64]
        lib.rms_norm_backward.argtypes = [_P] * 6 + [_I64] * 2
    return lib


def unavailable(dtype: torch.dtype) -> str | None:
    """Why the C kernels cannot run rows of ``dtype`` (None: they can; builds or finds the library)."""
    return cpu_build.unavailable_for(dtype, "the CPU norm kernels", _library)


def _built(dtype: torch.dtype) -> ctypes.CDLL:
    return cpu_build.built_for(dtype, "the CPU norm kernels", _library)


def _rows(x: torch.Tensor, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int, int]:
    """x contiguous, the weight in x's dtype (or None), and the rows N and width D the kernels take."""
    x = x.contiguous()
    D = x.shape[-1]
    w = None if weight is None else weight.to(x.dtype).contiguous()
    return x, w, x.numel() // D if D else 0, D


def forward(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., D), weight (D,) or None -> (out (..., D), rstd (N,)): rows normalised, N = x.numel() / D."""
    lib = _built(x.dtype)
    x, w, N, D = _rows(x, weight)
    out, rstd = torch.empty_like(x), x.new_empty(N)
    if N and D:
        lib.rms_norm_forward(x.data_ptr(), None if w is None else w.data_ptr(), out.data_ptr(),
                             rstd.data_ptr(), N, D, eps)  # fmt: skip
    return out, rstd


def backward(
    g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gradients on x (..., D) and weight (D,) (None without one) from that on the output g (..., D)."""
    lib = _built(x.dtype)
    x, w, N, D = _rows(x, weight)
    g = g.to(x.dtype).contiguous()
    dx = torch.empty_like(x)
    dw = None if w is None else w.new_zeros(D)
    if N and D:
        status = lib.rms_norm_backward(g.data_ptr(), x.data_ptr(), None if w is None else w.data_ptr(),
                                       rstd.data_ptr(), dx.data_ptr(), None if dw is None else dw.data_ptr(),
                                       N, D)  # fmt: skip
        if status != 0:
            raise MemoryError("the CPU norm's backward could not allocate its scratch buffer")
    return dx, dw


def backward_torch(
    g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`backward` as differentiable PyTorch ops (r recomputed from x): what a second derivative
    (``create_graph=True``) differentiates."""
    r = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    y = x * r
    gw = g if weight is None else g * weight
    dx = r * (gw - y * (gw * y).mean(-1, keepdim=True))
    return dx, None if weight is None else (g * y).reshape(-1, x.shape[-1]).sum(0)


class RMSNormFunction(torch.autograd.Function):
    """forward(x (..., D), weight (D,) or None, eps) -> x / sqrt(mean(x^2) + eps) * weight, as
    ``F.rms_norm(x, (D,), weight, eps)``, with the C kernels' one-pass backward (saves x and the rows'
    rstd (N,)). Under ``create_graph=True`` the backward runs as PyTorch ops, so it can be differentiated
    again."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:  # type: ignore[override]
        out, rstd = forward(x, weight, eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x, weight, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a backward autograd can differentiate
            dx, dw = backward_torch(g, x, weight, ctx.eps)
        else:
            dx, dw = backward(g, x, weight, rstd)
        return (dx if ctx.needs_input_grad[0] else None), (dw if ctx.needs_input_grad[1] else None), None
