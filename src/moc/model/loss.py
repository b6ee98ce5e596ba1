"""The LM loss without full logits: linear projection + cross-entropy, a chunk of tokens at a time.

``F.cross_entropy(F.linear(h, W).float(), y)`` over N tokens holds the (N, V) logits, their fp32 copy
and, for backward, the softmax: at N = 4096 tokens and V = 49,152 each fp32 copy is 805 MB.
:func:`chunked_linear_cross_entropy` projects and scores ``chunk_size`` tokens at a time under
activation checkpointing (``torch.utils.checkpoint``): forward keeps only the scalar loss of each chunk,
backward recomputes one chunk's logits at a time. Peak memory of the loss then scales with
``chunk_size * V`` instead of ``N * V``, for one extra projection (``2 * N * d * V`` FLOPs) in backward.

Fused kernels (e.g. liger-kernel's fused linear cross-entropy, Triton, CUDA only) go further: they
compute the gradient during forward and never recompute, so they save the extra projection too. This
version is plain PyTorch, runs anywhere (CPU included) and is exact up to float summation order.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .layers import float32_or_wider

IGNORE_INDEX = -100


def _chunk_loss(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one chunk. h: (n, d); weight: (V, d); labels: (n,) -> scalar, fp32 (fp64
    for fp64 inputs)."""
    logits = float32_or_wider(F.linear(h, weight))
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")


def chunked_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """``cross_entropy(hidden @ weight.T, labels)`` without holding all logits.

    hidden: (N, d) final hidden states; weight: (V, d) output embedding; labels: (N,) targets with
    -100 ignored. ``reduction="mean"`` divides by the number of targets (NaN when there are none, like
    ``F.cross_entropy``); ``"sum"`` returns the summed token losses. ``chunk_size <= 0``: one shot.
    """
    if hidden.dim() != 2 or labels.shape != hidden.shape[:1]:
        raise ValueError(
            f"hidden must be (N, d) and labels (N,), got {tuple(hidden.shape)} and {tuple(labels.shape)}"
        )
    n = hidden.shape[0]
    if chunk_size <= 0 or n <= chunk_size:
        total = _chunk_loss(hidden, weight, labels)
    else:
        total = hidden.new_zeros((), dtype=torch.float32)
        for lo in range(0, n, chunk_size):
            h, y = hidden[lo : lo + chunk_size], labels[lo : lo + chunk_size]
            total = total + checkpoint(_chunk_loss, h, weight, y, use_reentrant=False)
    if reduction == "sum":
        return total
    return total / (labels != IGNORE_INDEX).sum()
