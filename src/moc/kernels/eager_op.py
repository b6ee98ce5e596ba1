"""A registered operator's pieces as a plain autograd Function, for eager calls.

``torch.library.custom_op`` is what lets ``torch.compile`` trace the router head and the routed read
without a graph break, but called eagerly with autograd on, its dispatch (the Python dispatcher, the
autograd wrapper around every output) costs about 0.15 ms a call on the CPU (router head, forward and
backward, 1,088 decisions: 1.78 ms through the op, 1.60 ms as a Function). Eager calls therefore run the
same implementation, context set-up and backward through :func:`eager_function`'s Function: the same
kernels and the same numbers, dispatched by autograd alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def eager_function(
    implementation: Callable[..., Any],
    setup_context: Callable[[Any, tuple[Any, ...], Any], None],
    backward: Callable[..., tuple[Any, ...]],
) -> Callable[..., Any]:
    """``apply`` of an autograd Function running ``implementation(*inputs)`` forward, then
    ``setup_context(ctx, inputs, output)``, and ``backward(ctx, *grads)``: the functions a custom op was
    registered with (``register_autograd(backward, setup_context=setup_context)``). Unlike the op's
    dispatch, outputs that nothing used send None to ``backward``, not zeros."""
    import torch

    class EagerOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, *inputs: Any) -> Any:  # type: ignore[override]
            output = implementation(*inputs)
            setup_context(ctx, inputs, output)
            ctx.set_materialize_grads(False)  # no zeros written for outputs nothing used
            return output

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:  # type: ignore[override]
            return backward(ctx, *grads)

    EagerOp.__name__ = EagerOp.__qualname__ = f"Eager_{implementation.__name__}"
    return EagerOp.apply
