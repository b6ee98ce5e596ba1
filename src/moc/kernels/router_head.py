"""The router head: a batch of chapter scores -> top-k probabilities and the router's losses, in one node.

For N routing decisions' scores l (N, C) over S shared chapters (first) and R = C - S routed ones, with
w (N,) 1.0 for a valid decision and n = max(sum w, 1):

    probs        p = softmax(l[:, S:])                         (N, R)
    top_p, top_i the k largest p per decision, ties to the lowest index (routed ids, 0-based)
    counts       top-k picks per chapter over valid decisions  (R,)
    load balance R sum_i f_i P_i, f_i = counts_i / (n k), P_i = sum_n w_n p_ni / n
    z-loss       sum_n w_n lse_n^2 / n, lse_n = logsumexp(l_n) over all C chapters
    entropy      sum_n w_n (lse_r,n - <p_n, l_n[S:]>) / n, lse_r = logsumexp(l[:, S:])

These are the numbers of ``moc.model.router``'s plain definitions (softmax, top-k, ``router_losses``,
``routing_entropy``) from one softmax, with a hand-written backward: the gradient on the routed
probabilities g (load balance: w_n c_i with c_i = d_lb R f_i / n; top-k: scattered onto the picks) through
the softmax's Jacobian p (g - <g, p>), plus the z-loss's 2 w_n lse_n / n times softmax over all C chapters.

:func:`head_forward_torch` / :func:`head_backward_torch` are the PyTorch implementation (any device, and
the one an exported Hugging Face folder runs); ``moc.kernels.cpu_router`` is the same contract in C for
the CPU. The forward also returns what the backward needs: probs, lse, routed_share = exp(lse_r - lse)
(N,) and shared_p = exp(l[:, :S] - lse) (N, S).

This file imports nothing from ``moc`` (it is exported with the model code).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

Head = tuple[torch.Tensor, ...]


def top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs.topk(k, dim=-1)`` for probabilities (>= 0): (values, indices) (..., k), largest first.

    On the CPU PyTorch's top-k is a per-row selection loop that no compiler fuses: under torch.compile a
    float32 top-k of k <= 4 runs as k vectorised max-reductions over (probability, index) keys instead
    (:func:`top_k_by_keys`; 2x faster for 511 routed chapters and k = 2). Eager, a row shorter than
    64 k entries is padded with -1 first (never picked): PyTorch's CPU top-k selects partially only from
    64 k entries per row and sorts whole rows below that, 5x slower for 127 routed chapters and k = 2 than
    for 128 (1088 rows, one thread). Either way the same values and indices as ``topk``, ties to the
    lowest index.
    """
    n = probs.shape[-1]
    if probs.device.type == "cpu":
        if k <= 4 and probs.dtype == torch.float32 and torch.compiler.is_compiling():
            return top_k_by_keys(probs, k)
        if k <= n < 64 * k:
            probs = F.pad(probs, (0, 64 * k - n), value=-1.0)
    return probs.topk(k, dim=-1)


def top_k_by_keys(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of float32 probabilities (>= 0) along the last dim as k max-reductions, largest first.

    Each entry becomes one int64 key: its bit pattern (monotone in the value for floats >= 0) above
    (n - 1 - index), so keys are distinct, the largest key is the largest value, and equal values rank
    the lower index first. The j-th pick is the largest key below the (j-1)-th. Each pass is a plain
    row maximum, which torch.compile fuses and vectorises (eager it materialises every key: use topk).
    """
    n = probs.shape[-1]
    key = (probs.view(torch.int32).to(torch.int64) << 32) | (n - 1 - torch.arange(n, device=probs.device))
    picks = [key.amax(-1, keepdim=True)]
    for _ in range(k - 1):
        picks.append(torch.where(key < picks[-1], key, -1).amax(-1, keepdim=True))
    best = torch.cat(picks, dim=-1)
    return (best >> 32).to(torch.int32).view(torch.float32), n - 1 - (best & 0xFFFFFFFF)


def head_forward_torch(scores: torch.Tensor, w: torch.Tensor, n_shared: int, k: int) -> Head:
    """scores (N, C), w (N,) -> (top_p, top_i, load_balance, z_loss, counts, entropy, probs, lse,
    routed_share, shared_p): the module docstring's quantities."""
    routed, shared = scores[:, n_shared:], scores[:, :n_shared]
    probs = routed.softmax(dim=-1)
    top_p, top_i = top_k(probs, k)
    lse_r = routed.gather(1, top_i[:, :1])[:, 0] - top_p[:, 0].log()  # l_top1 - log p_top1: no extra pass
    lse = torch.logaddexp(lse_r, shared.logsumexp(-1)) if n_shared else lse_r
    n = w.sum().clamp(min=1)
    n_routed = probs.shape[1]
    counts = probs.new_zeros(n_routed).index_add_(0, top_i.reshape(-1), w[:, None].expand(-1, k).reshape(-1))
    load_balance = n_routed * (counts * (w @ probs)).sum() / (n * k * n)
    z_loss = (w * lse.square()).sum() / n
    entropy = (w * (lse_r - torch.linalg.vecdot(probs, routed))).sum() / n
    routed_share, shared_p = torch.exp(lse_r - lse), torch.exp(shared - lse[:, None])
    return top_p, top_i, load_balance, z_loss, counts, entropy, probs, lse, routed_share, shared_p


def head_backward_torch(
    d_top_p: torch.Tensor,
    d_lb: torch.Tensor,
    d_z: torch.Tensor,
    w: torch.Tensor,
    probs: torch.Tensor,
    top_p: torch.Tensor,
    top_i: torch.Tensor,
    lse: torch.Tensor,
    routed_share: torch.Tensor,
    shared_p: torch.Tensor,
    counts: torch.Tensor,
) -> torch.Tensor:
    """The gradient on the scores (N, C) from those on top_p (N, k), the load balance and the z-loss
    (0-d), and what :func:`head_forward_torch` returned."""
    n = w.sum().clamp(min=1)
    n_routed, k = probs.shape[1], top_p.shape[1]
    top_g = d_top_p * top_p  # g_nj p_nj at the picks
    c = (d_lb * n_routed / (n * n * k)) * counts  # (R,): the load balance's g_ni = w_n c_i
    zt = d_z * 2 * w * lse / n  # (N,): the z-loss's weight on softmax over all chapters
    coef = zt * routed_share - (w * (probs @ c) + top_g.sum(-1))  # ... minus <g_n, p_n>
    d_routed = torch.addr(coef[:, None].expand_as(probs), w, c).mul_(probs).scatter_add_(1, top_i, top_g)
    return torch.cat([zt[:, None] * shared_p, d_routed], dim=1)


class RouterHead(torch.autograd.Function):
    """The router head as an autograd node running :func:`head_forward_torch` and its backward.

    forward(scores (N, C), w (N,), n_shared, k) -> top_p (N, k), top_i (N, k), load balance, z-loss
    (scalars), counts (C_routed,), entropy (scalar). Saves the probabilities (N x C_routed), as the unfused
    graph does.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, scores: torch.Tensor, w: torch.Tensor, n_shared: int, k: int
    ) -> tuple[torch.Tensor, ...]:
        top_p, top_i, lb, z, counts, entropy, *saved = head_forward_torch(scores, w, n_shared, k)
        ctx.save_for_backward(w, top_p, top_i, counts, *saved)
        ctx.mark_non_differentiable(top_i, counts, entropy)
        return top_p, top_i, lb, z, counts, entropy

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        d_top_p: torch.Tensor | None,
        _d_top_i: Any,
        d_lb: torch.Tensor | None,
        d_z: torch.Tensor | None,
        _d_counts: Any,
        _d_entropy: Any,
    ) -> tuple[torch.Tensor | None, ...]:
        w, top_p, top_i, counts, probs, lse, routed_share, shared_p = ctx.saved_tensors
        d_top_p, d_lb, d_z = zero_if_none(d_top_p, d_lb, d_z, like=top_p)
        d_scores = head_backward_torch(d_top_p, d_lb, d_z, w, probs, top_p, top_i, lse, routed_share,
                                       shared_p, counts)  # fmt: skip
        return d_scores, None, None, None


def zero_if_none(
    d_top_p: torch.Tensor | None, d_lb: torch.Tensor | None, d_z: torch.Tensor | None, like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's incoming gradients with zeros for the outputs that nothing used."""
    zero = like.new_zeros(())
    return (
        d_top_p if d_top_p is not None else torch.zeros_like(like),
        d_lb if d_lb is not None else zero,
        d_z if d_z is not None else zero,
    )
