"""The router's linear layer and head as registered PyTorch operators (``torch.library``), running the C
kernels on the CPU.

``torch.ops.moc.router_head(x, weight, bias, w, n_shared, k)`` runs the head of ``moc.kernels.cpu_router``
on the chapter scores ``x @ weight.T + bias``, which the C kernel makes itself a few decisions at a time
(never writing the (N, C) scores); its backward ``torch.ops.moc.router_head_backward``
takes the gradient on the scores to x, weight and bias inside the C kernel, a few decisions at a time,
without writing the (N, C) gradient.
``torch.compile`` traces both without a graph break; eager calls run the same functions as a plain
autograd Function (``moc.kernels.eager_op``), without torch.library's dispatch. Where the C kernels
cannot be built they say so once and run ``moc.kernels.router_head``'s PyTorch head instead. Outputs:
``moc.kernels.router_head`` (x (N, d), weight (C, d), bias (C,), w (N,)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from moc.errors import warn_once
from moc.kernels import cpu_router
from moc.kernels.eager_op import eager_function
from moc.kernels.router_head import head_backward_torch, head_forward_torch, zero_if_none

T = torch.Tensor
# top_p, top_i, load_balance, z_loss, counts, entropy, then what backward needs: probs, lse, routed_share,
# shared_p (torch.library needs the tuple spelt out)
HeadOutputs = tuple[T, T, T, T, T, T, T, T, T, T]


def _c_kernels_run(dtype: torch.dtype) -> bool:
    reason = cpu_router.unavailable(dtype)
    if reason is not None:
        warn_once(
            f"router head: CPU kernel unavailable ({reason}); using PyTorch ops "
            "(memory.kernel: torch says this is intended)",
            stacklevel=3,
        )
    return reason is None


def _router_head(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, n_shared: int, k: int
) -> HeadOutputs:
    if _c_kernels_run(x.dtype):  # the kernel makes the scores itself, a few decisions at a time
        return cpu_router.forward_from_linear(x, weight, bias, w, n_shared, k)  # type: ignore[return-value]
    scores = torch.addmm(bias, x, weight.t())
    return tuple(t.contiguous() for t in head_forward_torch(scores, w, n_shared, k))  # type: ignore[return-value]


router_head_op = torch.library.custom_op("moc::router_head", mutates_args=())(_router_head)


@router_head_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, n_shared: int,
      k: int) -> HeadOutputs:  # fmt: skip
    N, C, new = x.shape[0], weight.shape[0], x.new_empty
    top_i = torch.empty((N, k), dtype=torch.int64, device=x.device)
    lb, z, entropy = new(()), new(()), new(())
    R = C - n_shared
    return new(N, k), top_i, lb, z, new(R), entropy, new(N, R), new(N), new(N), new(N, n_shared)


def _router_head_backward(
    d_top_p: torch.Tensor,
    d_lb: torch.Tensor,
    d_z: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    w: torch.Tensor,
    probs: torch.Tensor,
    top_p: torch.Tensor,
    top_i: torch.Tensor,
    lse: torch.Tensor,
    routed_share: torch.Tensor,
    shared_p: torch.Tensor,
    counts: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    saved = (w, probs, top_p, top_i, lse, routed_share, shared_p, counts)
    if _c_kernels_run(probs.dtype):
        return cpu_router.backward_to_linear(d_top_p, d_lb, d_z, *saved, x, weight)
    d_scores = head_backward_torch(d_top_p, d_lb, d_z, *saved)
    return d_scores @ weight, (x.t() @ d_scores).t().contiguous(), d_scores.sum(0)


router_head_backward_op = torch.library.custom_op("moc::router_head_backward", mutates_args=())(
    _router_head_backward
)


@router_head_backward_op.register_fake
def _(d_top_p: torch.Tensor, d_lb: torch.Tensor, d_z: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
      w: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor, top_i: torch.Tensor, lse: torch.Tensor,
      routed_share: torch.Tensor, shared_p: torch.Tensor, counts: torch.Tensor
      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
    x, weight, _, w, _, _ = inputs
    top_p, top_i, _, _, counts, _, probs, lse, routed_share, shared_p = output
    ctx.save_for_backward(x, weight, w, probs, top_p, top_i, lse, routed_share, shared_p, counts)
    ctx.mark_non_differentiable(top_i, counts)


def _backward_through(head_backward: Callable[..., tuple[torch.Tensor, ...]]) -> Callable[..., Any]:
    """The head's autograd formula, taking the gradients to x, weight and bias with ``head_backward``."""

    def backward(ctx: Any, d_top_p: torch.Tensor | None, _d_top_i: Any, d_lb: torch.Tensor | None,
                 d_z: torch.Tensor | None, *_unused: Any) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
        x, weight, w, probs, top_p, top_i, lse, routed_share, shared_p, counts = ctx.saved_tensors
        d_top_p, d_lb, d_z = zero_if_none(d_top_p, d_lb, d_z, like=top_p)
        dx, d_weight, d_bias = head_backward(d_top_p, d_lb, d_z, x, weight, w, probs, top_p, top_i, lse,
                                             routed_share, shared_p, counts)  # fmt: skip
        return dx, d_weight, d_bias, None, None, None

    return backward


router_head_op.register_autograd(_backward_through(router_head_backward_op), setup_context=_setup_context)
# Eager calls skip torch.library's dispatch (moc.kernels.eager_op): the same functions, about 0.15 ms less.
_eager_router_head = eager_function(_router_head, _setup_context, _backward_through(_router_head_backward))


def router_head(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, w: torch.Tensor, n_shared: int, k: int
) -> tuple[torch.Tensor, ...]:
    """x (N, d), the linear layer's weight (C, d) and bias (C,) on the CPU, in one dtype; w (N,) ->
    (top_p, top_i, load_balance, z_loss, counts, entropy) of the scores ``x @ weight.T + bias``, as
    ``moc.kernels.router_head.RouterHead``, through the registered op."""
    n_routed = weight.shape[0] - n_shared
    if not 1 <= k <= n_routed:
        raise ValueError(f"top_k={k} must be between 1 and the {n_routed} routed chapters")
    if {x.device.type, weight.device.type, bias.device.type} != {"cpu"}:
        raise ValueError(f"the router head's op runs on the CPU, not {x.device}: on other devices use "
                         "moc.kernels.router_head.RouterHead")  # fmt: skip
    if not x.dtype == weight.dtype == bias.dtype:
        raise TypeError(f"the router head takes x, weight and bias of one dtype, not {x.dtype}, "
                        f"{weight.dtype}, {bias.dtype}")  # fmt: skip
    head = router_head_op if torch.compiler.is_compiling() else _eager_router_head
    return head(x, weight, bias, w.to(x.dtype), n_shared, k)[:6]
