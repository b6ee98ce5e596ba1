"""Which code runs the routed read: the Triton kernels (``triton_read``) on CUDA, the C kernels
(``cpu_read``) on the CPU, or the blocked PyTorch loops.

``memory.kernel`` chooses:

- ``auto`` (default): the Triton kernels on CUDA and the C kernels on the CPU where they can run;
  otherwise the PyTorch loops, saying once why (Triton missing, no C compiler, an unsupported dtype,
  head or chapter size, or a Triton kernel that failed for some shapes: remembered per shape, so other
  shapes keep the kernels).
- ``triton``: the Triton kernels or an error that names the reason (never a silent slow path).
- ``torch``: always the PyTorch loops.

:func:`paths_used` tells a benchmark which path actually ran.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from moc.errors import MocError, one_line, warn_once
from moc.kernels import cpu_read
from moc.kernels.routed_read import (
    default_block_elements,
    routed_read_backward_torch,
    routed_read_forward_torch,
)

KERNELS = ("auto", "triton", "torch")

_FAILED: dict[tuple[Any, ...], str] = {}  # shape key -> why the kernel failed for those shapes
_USED: set[str] = set()


class KernelError(MocError, RuntimeError):
    """``memory.kernel: triton`` was asked for and the Triton kernels cannot run."""


def paths_used(reset: bool = False) -> list[str]:
    """The read paths run since the last reset, e.g. ``["triton grouped forward", "triton backward"]``."""
    used = sorted(_USED)
    if reset:
        _USED.clear()
    return used


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def environment_problem() -> str | None:
    """Why the Triton kernels cannot run on this machine at all (None: they may)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"Triton is not installed ({one_line(e)}): pip install triton"
    if _interpreting():
        return None
    if not cpu_read.has_compiler():
        return "no C compiler found (Triton builds its kernel launcher with one): install gcc or set CC"
    return None


def read_impls(device: torch.device, kernel: str = "auto") -> tuple[Callable[..., Any] | None, ...]:
    """(forward_impl, backward_impl) for ``moc.kernels.routed_read.routed_read`` on ``device``, or
    (None, None) for its PyTorch loops."""
    if kernel not in KERNELS:
        raise KernelError(f"memory.kernel {kernel!r} is not one of {KERNELS}")
    if kernel == "torch":
        return None, None
    if device.type != "cuda" and not _interpreting():
        if kernel == "triton":
            raise KernelError(
                f"memory.kernel: triton needs a CUDA device, the model is on {device.type}: "
                "set memory.kernel: auto (or torch)"
            )
        return (_cpu_forward, _cpu_backward) if device.type == "cpu" else (None, None)
    problem = environment_problem()
    if problem is not None:
        if kernel == "triton":
            raise KernelError(f"memory.kernel: triton cannot run: {problem}")
        warn_once(
            f"memory read: Triton kernels unavailable ({problem}); using the PyTorch path "
            "(memory.kernel: torch says this is intended)",
            stacklevel=3,
        )
        return None, None
    strict = kernel == "triton"
    return functools.partial(_forward, strict), functools.partial(_backward, strict)


def read_forward(
    kernel: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of the read by the path ``kernel`` picks on q's device (contract of
    ``routed_read_forward_torch``)."""
    forward, _ = read_impls(q.device, kernel)
    if forward is None:
        return routed_read_forward_torch(q, k, v, idx, w, weighting, scale, default_block_elements(q))
    return forward(q, k, v, idx, w, weighting, scale)


def read_backward(kernel: str, *args: Any) -> tuple[torch.Tensor, ...]:
    """(dq, dk, dv, dw) by the path ``kernel`` picks; args as ``routed_read_backward_torch``'s."""
    _, backward = read_impls(args[1].device, kernel)
    if backward is None:
        return routed_read_backward_torch(*args, default_block_elements(args[1]))
    return backward(*args)


def _shape_key(direction: str, q: torch.Tensor, k: torch.Tensor, weighting: str) -> tuple[Any, ...]:
    from moc.kernels.triton_read import pick_layout

    return (
        direction,
        pick_layout(q.shape[1]),
        q.dtype,
        q.shape[2],
        q.shape[3],
        k.shape[1],
        k.shape[2],
        weighting,
    )


def _describe(key: tuple[Any, ...]) -> str:
    direction, layout, dtype, H, hd, T, kvh, weighting = key
    return (
        f"{layout} {direction}, {str(dtype).removeprefix('torch.')}, {H} heads / {kvh} KV heads of {hd}, "
        f"chapters of {T}, weighting {weighting}"
    )


def _run(
    strict: bool, key: tuple[Any, ...], q: torch.Tensor, k: torch.Tensor, launch: Callable[[], Any]
) -> Any:
    """launch() if the kernel can run for ``key``; None (after saying why, once) if not."""
    from moc.kernels import triton_read

    reason = triton_read.unsupported(q, k) or _FAILED.get(key)
    if reason is None:
        try:
            result = launch()
            _USED.add(f"triton {key[1] if key[0] == 'forward' else 'grouped'} {key[0]}")
            return result
        except Exception as e:  # a kernel that fails to compile must not stop training under "auto"
            reason = _FAILED[key] = (
                f"the kernel failed for {_describe(key)}: {type(e).__name__}: {one_line(e)}"
            )
    if strict:
        raise KernelError(f"memory.kernel: triton: {reason}")
    warn_once(f"memory read: Triton kernel skipped ({reason}); using the PyTorch path there", stacklevel=3)
    _USED.add(f"torch {key[0]}")
    return None


def _forward(strict: bool, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor,
             w: torch.Tensor, weighting: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    from moc.kernels import triton_read

    key = _shape_key("forward", q, k, weighting)
    out = _run(strict, key, q, k, lambda: triton_read.forward(q, k, v, idx, w, weighting, scale))
    if out is not None:
        return out
    return routed_read_forward_torch(q, k, v, idx, w, weighting, scale, default_block_elements(q))


def _backward(strict: bool, *args: Any) -> tuple[torch.Tensor, ...]:
    from moc.kernels import triton_read

    do, q, out, lse, k, v, idx, w, weighting, scale = args
    key = _shape_key("backward", q, k, weighting)
    grads = _run(strict, key, q, k, lambda: triton_read.backward(*args))
    if grads is not None:
        return grads
    return routed_read_backward_torch(*args, default_block_elements(q))


def cpu_kernel_problem(q: torch.Tensor, k: torch.Tensor, n_selected: int) -> str | None:
    """Why the C kernels cannot run this CPU read (None: they can). Said once per reason."""
    if q.device.type != "cpu" or k.dtype != q.dtype:
        reason: str | None = (
            f"the CPU kernels read CPU tensors of one dtype, not {q.device} {q.dtype}, {k.dtype}"
        )
    else:
        reason = cpu_read.unavailable(q.dtype, k.shape[1], q.shape[-1], n_selected)
    if reason is not None:
        warn_once(
            f"memory read: CPU kernel unavailable ({reason}); using the PyTorch loops "
            "(memory.kernel: torch says this is intended)",
            stacklevel=5,  # where the read was called: the op, or the autograd Function
        )
    return reason


def _cpu_kernels_read(q: torch.Tensor, k: torch.Tensor, n_selected: int) -> bool:
    """Whether the C kernels run this CPU read: they suit its size and can run (else said once)."""
    return cpu_read.suits(q.shape[-1], k.shape[1]) and cpu_kernel_problem(q, k, n_selected) is None


def _cpu_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
                 weighting: str, scale: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    if _cpu_kernels_read(q, k, idx.shape[1]):
        _USED.add("cpu forward")
        return cpu_read.forward(q, k, v, idx, w, weighting, scale)
    _USED.add("torch forward")
    return routed_read_forward_torch(q, k, v, idx, w, weighting, scale, default_block_elements(q))


def _cpu_backward(*args: Any) -> tuple[torch.Tensor, ...]:
    q, k, idx = args[1], args[4], args[6]
    if _cpu_kernels_read(q, k, idx.shape[1]):
        _USED.add("cpu backward")
        return cpu_read.backward(*args)
    _USED.add("torch backward")
    return routed_read_backward_torch(*args, default_block_elements(q))
