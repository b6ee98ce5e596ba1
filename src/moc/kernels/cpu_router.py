"""The router head's CPU kernels: ``cpu_router.c``, built with the system C compiler on first use.

Same contract as ``moc.kernels.router_head`` (``head_forward_torch`` / ``head_backward_torch``), for float32
and float64 scores on the CPU; :func:`backward_to_linear` also takes the scores' gradient through the
linear layer that made them, without writing it. One library per dtype (``moc.kernels.cpu_build``). Where
it cannot be built, :func:`unavailable` says why (``moc.kernels.router_op`` then says so once and runs the
PyTorch head).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from moc.kernels import cpu_build

_I64, _F64, _P = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p


@functools.cache
def _library(real: str) -> ctypes.CDLL | str:
    defines = (f"-DREAL={real}", "-DFAST_EXP") if real == "float" else (f"-DREAL={real}",)
    lib = cpu_build.library("cpu_router.c", defines)
    if not isinstance(lib, str):
        lib.router_forward.argtypes = [_P] * 15 + [_I64] * 5
        lib.router_backward.argtypes = [_P, _F64, _F64] + [_P] * 13 + [_I64] * 5
    return lib


def unavailable(dtype: torch.dtype) -> str | None:
    """Why the C kernels cannot run a router head on scores of ``dtype`` (None: they can; builds or finds
    the library)."""
    return cpu_build.unavailable_for(dtype, "the CPU router kernels", _library)


def _built(dtype: torch.dtype) -> ctypes.CDLL:
    return cpu_build.built_for(dtype, "the CPU router kernels", _library)


def _check(status: int, what: str) -> None:
    if status == 1:
        raise MemoryError(f"the CPU router head's {what} could not allocate its scratch buffer")
    if status != 0:
        raise ValueError(f"the CPU router head's {what} got impossible sizes (a top-k above the chapters, "
                         "or 2^24 chapters or more in float32)")  # fmt: skip


def forward(
    scores: torch.Tensor, w: torch.Tensor, n_shared: int, k: int, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """As ``head_forward_torch`` on ``scores + bias`` (bias (C,), added as each row is read): (top_p, top_i,
    load_balance, z_loss, counts, entropy, probs, lse, routed_share, shared_p)."""
    scores = scores.contiguous()
    return _forward(scores, None, None, bias, w, scores.shape[0], scores.shape[1], n_shared, k)


def forward_from_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, w: torch.Tensor, n_shared: int, k: int
) -> tuple[torch.Tensor, ...]:
    """:func:`forward` on the scores ``x @ weight.T + bias`` (x (N, D), weight (C, D), bias (C,)), which the
    kernel makes a few decisions at a time and never writes out."""
    x, weight = x.contiguous(), weight.to(x.dtype).contiguous()
    return _forward(None, x, weight, bias, w, x.shape[0], weight.shape[0], n_shared, k)


def _forward(
    scores: torch.Tensor | None, x: torch.Tensor | None, weight: torch.Tensor | None,
    bias: torch.Tensor | None, w: torch.Tensor, N: int, C: int, n_shared: int, k: int,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    like = scores if scores is not None else x
    assert like is not None
    lib = _built(like.dtype)
    w = w.to(like.dtype).contiguous()
    bias = None if bias is None else bias.to(like.dtype).contiguous()
    if bias is not None and bias.shape != (C,):
        raise ValueError(f"the router bias has shape {tuple(bias.shape)}: it needs one entry per chapter, "
                         f"({C},)")  # fmt: skip
    R, D = C - n_shared, 0 if x is None else x.shape[1]
    new = like.new_empty
    probs, top_p, top_i = new(N, R), new(N, k), torch.empty(N, k, dtype=torch.int64)
    lse, routed_share, shared_p, counts = new(N), new(N), new(N, n_shared), new(R)
    lb, z, entropy = new(()), new(()), new(())
    outs = (probs, top_p, top_i, lse, routed_share, shared_p, counts, lb, z, entropy)
    inputs = (scores, x, weight, bias, w)
    pointers = [None if t is None else t.data_ptr() for t in inputs] + [t.data_ptr() for t in outs]
    status = lib.router_forward(*pointers, N, C, n_shared, k, D)
    _check(status, "forward")
    return top_p, top_i, lb, z, counts, entropy, probs, lse, routed_share, shared_p


def backward_to_linear(
    d_top_p: torch.Tensor, d_lb: torch.Tensor, d_z: torch.Tensor, w: torch.Tensor, probs: torch.Tensor,
    top_p: torch.Tensor, top_i: torch.Tensor, lse: torch.Tensor, routed_share: torch.Tensor,
    shared_p: torch.Tensor, counts: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """From the gradients on top_p, the load balance and the z-loss (``head_backward_torch``'s arguments),
    the gradients on x (N, D), the linear layer's weight (C, D) and bias (C,) of scores = x weight^T +
    bias, without writing the scores' own: each decision's row of it goes to the products as it is made."""
    lib = _built(probs.dtype)
    (N, R), (k, S) = probs.shape, (top_p.shape[1], shared_p.shape[1])
    d_top_p, w = d_top_p.to(probs.dtype).contiguous(), w.to(probs.dtype).contiguous()
    x, weight = x.to(probs.dtype).contiguous(), weight.to(probs.dtype).contiguous()
    dx, d_weight, d_bias = torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])
    # contiguous copies held here, not in the call's arguments, so none is freed before the kernel reads it
    saved = (w, probs, top_p, top_i.to(torch.int64), lse, routed_share, shared_p, counts)
    tensors = [t.contiguous() for t in (*saved, x, weight, dx, d_weight, d_bias)]
    status = lib.router_backward(
        d_top_p.data_ptr(), float(d_lb), float(d_z), *(t.data_ptr() for t in tensors), N, S + R, S, k,
        x.shape[1],
    )  # fmt: skip
    _check(status, "backward")
    return dx, d_weight, d_bias
