"""The routed read as registered PyTorch operators (``torch.library``), so ``torch.compile`` traces a memory
layer without a graph break at the read.

``torch.ops.moc.routed_read(q, k, v, idx, w, weighting, scale, kernel) -> (out, lse)`` and its backward
``torch.ops.moc.routed_read_backward`` run the Triton kernels or the blocked PyTorch loops as
``memory.kernel`` says (``moc.kernels.dispatch``). Each has a fake (meta) implementation giving output
shapes from input shapes, and the backward is registered as the forward's autograd formula; eager calls
of :func:`read` run the same functions as a plain autograd Function (``moc.kernels.eager_op``). Unlike
:class:`moc.kernels.routed_read.RoutedRead` (which recomputes the projected chapters in backward from a
Python callable), the op takes the keys and values of the distinct chapters as tensors and keeps them
for backward: they scale with the chapters read (at most the bank), not with the routing decisions.

Shapes: q (D, Qt, H, hd), k/v (U, T, Hkv, hd), idx/w (D, n) -> out (D, Qt, H, hd), lse (D, H, Qt).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moc.kernels.dispatch import read_backward, read_forward
from moc.kernels.eager_op import eager_function
from moc.kernels.routed_read import WEIGHTINGS


def _routed_read(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
    kernel: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return read_forward(kernel, q, k, v, idx, w, weighting, scale)


routed_read_op = torch.library.custom_op("moc::routed_read", mutates_args=())(_routed_read)


@routed_read_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
      weighting: str, scale: float, kernel: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    D, Qt, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((D, H, Qt), dtype=torch.promote_types(q.dtype, torch.float32))


def _routed_read_backward(
    do: torch.Tensor,
    q: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
    kernel: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dw = read_backward(kernel, do.contiguous(), q, out, lse, k, v, idx, w, weighting, scale)
    return dq, _as_fake_lays_out(dk, k), _as_fake_lays_out(dv, v), dw


routed_read_backward_op = torch.library.custom_op("moc::routed_read_backward", mutates_args=())(
    _routed_read_backward
)


def _as_fake_lays_out(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient on x laid out as ``torch.empty_like(x)``, what the fake below promises a compiled
    graph: the implementations lay dk, dv out their own way (the PyTorch loops contiguous, the C kernels
    as the tokens-last k, v they read)."""
    like = torch.empty_like(x)
    return grad if like.stride() == grad.stride() else like.copy_(grad)


@routed_read_backward_op.register_fake
def _(do: torch.Tensor, q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, k: torch.Tensor,
      v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, weighting: str, scale: float,
      kernel: str) -> tuple[torch.Tensor, ...]:  # fmt: skip
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(w)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    q, k, v, idx, w, weighting, scale, kernel = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, idx, w, out, lse)
    ctx.settings = (weighting, scale, kernel)


def _backward_through(read_backward: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., Any]:
    """The read's autograd formula, computing the gradients with ``read_backward``."""

    def backward(
        ctx: Any, d_out: torch.Tensor, _d_lse: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        """The gradients on q, k, v and w (None for the rest)."""
        q, k, v, idx, w, out, lse = ctx.saved_tensors
        dq, dk, dv, dw = read_backward(d_out, q, out, lse, k, v, idx, w, *ctx.settings)
        return dq, dk, dv, None, dw, None, None, None

    return backward


routed_read_op.register_autograd(_backward_through(routed_read_backward_op), setup_context=_setup_context)
# Eager calls skip torch.library's dispatch (moc.kernels.eager_op): the same functions, less overhead.
_eager_routed_read = eager_function(_routed_read, _setup_context, _backward_through(_routed_read_backward))


def read(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str = "kv",
    scale: float | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """The routed read through the registered op: q (D, Qt, H, hd), k/v (U, T, Hkv, hd), idx/w (D, n)
    -> out (D, Qt, H, hd). Checks the arguments (outside the op, so a compiled graph keeps no checks)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"chapter weighting {weighting!r} is not one of {WEIGHTINGS}")
    if idx.shape != w.shape or idx.shape[0] != q.shape[0]:
        raise ValueError(
            f"idx {tuple(idx.shape)} and w {tuple(w.shape)} must both be (tiles={q.shape[0]}, n_selected)"
        )
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    run = routed_read_op if torch.compiler.is_compiling() else _eager_routed_read
    return run(q, k, v, idx, w, weighting, scale, kernel)[0]
