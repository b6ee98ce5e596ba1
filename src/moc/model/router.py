"""The chapter router: scores every chapter from a pooled hidden state, picks shared + top-k, and its losses.

For one routing decision with router input ``x`` (d) and C = n_shared + C_routed chapters:

    scores   l = W x + b                                   (C,)   W: (C, d), the paper's linear layer
    probs    p = softmax(l[n_shared:])                     (C_routed,)
    picks    top-k of p; routed weight_j = s * p_j / sum_top-k p   (s = routed_scaling_factor)
    weights  [1] * n_shared + routed weights, renormalised to sum 1

Losses over the N valid decisions of a batch (both independent of k):

    load balance = C_routed * sum_i f_i * P_i      f_i: share of all top-k picks that went to chapter i
                                                   P_i: mean router probability of chapter i
    z-loss       = mean over decisions of logsumexp(l)^2

:func:`router_losses` states them plainly (the readable definition, used when chapters are disabled);
:class:`RouterHead` computes the same numbers for the training forward with a hand-written backward:
its (decisions x chapters) work is one softmax, one top-k, two row reductions forward and two
broadcast passes backward, which is what a router with thousands of decisions per step costs on a CPU.

This file imports nothing from ``moc`` (it is exported with the model code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import MemoryConfig
    except ImportError:
        pass


@dataclass
class RoutingInfo:
    """What one memory layer's router decided (detached), for losses' logging and inspection.

    indices/weights: (B, G, n_selected) selected chapter ids (shared first) and their weights, G the
    decisions per row: documents (sequence), (document, chunk) tiles (causal) or positions (token);
    valid: (B, G) decisions that serve at least one real token. ``entropy``, ``load_balance`` and
    ``z_loss`` are Python floats read from ``stats`` on first use, so the forward pass itself never
    waits for the device (no host sync, no graph break under torch.compile).
    """

    layer: int
    indices: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    stats: torch.Tensor = field(repr=False)  # (3,): mean routing entropy, load balance, z-loss
    chapter_counts: torch.Tensor = field(repr=False)

    @property
    def entropy(self) -> float:
        return float(self.stats[0])

    @property
    def load_balance(self) -> float:
        return float(self.stats[1])

    @property
    def z_loss(self) -> float:
        return float(self.stats[2])


@dataclass
class Decisions:
    """What :meth:`ChapterRouter.decide` returns: the decisions for the read and the record of them.

    indices, weights: (B, G, n_selected), the weights still in the autograd graph (the read trains the
    router through them); aux: the scalar router loss (load balance + z-loss, with their coefficients);
    info: the detached record for logging and inspection.
    """

    indices: torch.Tensor
    weights: torch.Tensor
    aux: torch.Tensor
    info: RoutingInfo


def router_losses(
    logits: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor, n_shared: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load-balance loss, z-loss and per-chapter selection counts over the valid decisions.

    logits: (..., C); probs: (..., C_routed); indices: (..., n_shared + k) with the ``n_shared``
    shared-chapter columns first; valid: (...).

    Load balance = C_routed * sum_i f_i * P_i, with f_i the fraction of all top-k picks that went to
    chapter i and P_i its mean router probability: exactly 1 at uniform routing, whatever k is.
    z-loss = mean over decisions of logsumexp(scores)^2.
    """
    n_routed = probs.shape[-1]
    w = valid.to(probs.dtype).reshape(-1)
    n = w.sum().clamp(min=1)
    first_routed = logits.shape[-1] - n_routed  # routed chapter ids start after the shared ones
    routed_idx = indices[..., n_shared:].reshape(-1, indices.shape[-1] - n_shared) - first_routed
    picks = torch.zeros(routed_idx.shape[0], n_routed, device=probs.device, dtype=probs.dtype)
    picks.scatter_(1, routed_idx, 1.0)
    counts = (picks * w[:, None]).sum(0)
    f = counts / (n * routed_idx.shape[-1])
    p_mean = (probs.reshape(-1, n_routed) * w[:, None]).sum(0) / n
    load_balance = n_routed * (f * p_mean).sum()
    z = torch.logsumexp(logits.reshape(-1, logits.shape[-1]), dim=-1).square()
    z_loss = (z * w).sum() / n
    return load_balance, z_loss, counts.detach()


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


def routing_entropy(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the router's distribution over the valid decisions. probs: (..., C_routed)."""
    entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1)
    return (entropy * valid).sum() / valid.sum().clamp(min=1)


class RouterHead(torch.autograd.Function):
    """The router's (decisions x chapters) work in one node: scores -> top-k probabilities and losses.

    forward(routed (N, C_routed) and shared (N, n_shared) scores, w (N,) 1.0 for a valid decision, k) ->
        top_p (N, k), top_i (N, k) routed ids (0-based among the routed chapters), load balance, z-loss
        (scalars, over the valid decisions), counts (C_routed,) top-k picks per chapter, entropy (scalar).

    Same numbers as softmax + top-k + :func:`router_losses` + :func:`routing_entropy` (rounding aside),
    from one softmax: lse of the routed scores is l_top1 - log p_top1, the z-loss's lse adds the shared
    chapters' scores to it, and the entropy is lse - sum p l. Backward, with g the gradient on the
    routed probabilities (load balance: C_routed f_i w_n / n; top-k: scattered) and the softmax's
    Jacobian p (g - <g, p>), plus the z-loss's 2 w_n lse_n / n times softmax over all C chapters.
    Saves the probabilities (N x C_routed), as the unfused graph does.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, routed: torch.Tensor, shared: torch.Tensor, w: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, ...]:
        probs = routed.softmax(dim=-1)
        top_p, top_i = top_k(probs, k)
        lse_r = routed.gather(1, top_i[:, :1])[:, 0] - top_p[:, 0].log()
        lse = torch.logaddexp(lse_r, shared.logsumexp(-1)) if shared.shape[1] else lse_r
        n = w.sum().clamp(min=1)
        n_routed = probs.shape[1]
        picks_w = w[:, None].expand(-1, k).reshape(-1)
        counts = probs.new_zeros(n_routed).index_add_(0, top_i.reshape(-1), picks_w)
        f = counts / (n * k)
        load_balance = n_routed * (f * (w @ probs / n)).sum()
        z_loss = (w * lse.square()).sum() / n
        entropy = (w * (lse_r - torch.linalg.vecdot(probs, routed))).sum() / n  # lse - sum p l
        ctx.save_for_backward(probs, top_p, top_i, w, lse_r, lse, shared, f, n)
        ctx.mark_non_differentiable(top_i, counts, entropy)
        return top_p, top_i, load_balance, z_loss, counts, entropy

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
        probs, top_p, top_i, w, lse_r, lse, shared, f, n = ctx.saved_tensors
        n_routed = probs.shape[1]
        d_lb = d_lb if d_lb is not None else probs.new_zeros(())
        d_z = d_z if d_z is not None else probs.new_zeros(())
        top_g = d_top_p * top_p if d_top_p is not None else torch.zeros_like(top_p)  # g_nj p_nj at the picks
        c = (d_lb * n_routed / n) * f  # (C_routed,): the load balance's g_ni = w_n c_i
        zt = d_z * 2 * w * lse / n  # (N,): the z-loss's weight on softmax over all chapters
        coef = zt * torch.exp(lse_r - lse) - (w * (probs @ c) + top_g.sum(-1))  # ... minus <g_n, p_n>
        d_routed = torch.addr(coef[:, None].expand_as(probs), w, c).mul_(probs).scatter_add_(1, top_i, top_g)
        d_shared = zt[:, None] * torch.exp(shared - lse[:, None])
        return d_routed, d_shared, None, None


class ChapterRouter(nn.Module):
    """Scores every chapter from a pooled hidden state and selects shared + top-k chapters.

    The linear layer scores all C chapters (as in the paper's parameter count); the shared chapters
    are always read, so their scores only enter the z-loss. Top-k runs over the routed chapters.
    """

    disabled: torch.Tensor

    def __init__(self, d_model: int, cfg: MemoryConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, cfg.n_chapters)
        self.n_shared, self.top_k, self.scale = cfg.n_shared_chapters, cfg.top_k, cfg.routed_scaling_factor
        self.lb_coef, self.z_coef = cfg.load_balance_coef, cfg.z_loss_coef
        # Chapters removed for ablation (see moc.analysis): never selected, never read.
        self.register_buffer("disabled", torch.zeros(cfg.n_chapters, dtype=torch.bool), persistent=False)
        self._disabled_seen: tuple = (None, -1, False)  # (buffer, its version, any disabled)

    def any_disabled(self) -> bool:
        """Whether any chapter is disabled. Re-read from the device only when the buffer was replaced or
        modified in place (its version counter), so routing does not sync with the device every call."""
        buf, version, flag = self._disabled_seen
        if torch.compiler.is_compiling():
            # A compiled graph cannot read the device without a break: it uses the flag of the last eager
            # call and checks on the device, without a sync, that the buffer still agrees.
            torch._assert_async(
                self.disabled.any() == flag,
                "chapters were disabled or re-enabled after this model was compiled: run one eager forward "
                "(or torch.compiler.reset()) after changing router.disabled",
            )
            return flag
        if buf is not self.disabled or version != self.disabled._version:
            flag = bool(self.disabled.any())
            self._disabled_seen = (self.disabled, self.disabled._version, flag)
        return flag

    def _weights(
        self, top_p: torch.Tensor, top_i: torch.Tensor, shared: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """top-k probabilities and routed ids (..., k), the shared ids -> (indices, weights) (..., n_sel)."""
        routed_w = self.scale * top_p / top_p.sum(dim=-1, keepdim=True)
        shared_w = routed_w.new_ones(*routed_w.shape[:-1], len(shared))
        weights = torch.cat([shared_w, routed_w], dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        shared_i = shared.expand(*top_i.shape[:-1], len(shared))
        return torch.cat([shared_i, top_i + self.n_shared], dim=-1), weights

    def forward(self, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """summary: (..., d) -> (indices, weights, logits, probs).

        indices, weights: (..., n_shared + k); logits: (..., C); probs: (..., C_routed).
        """
        logits = self.proj(summary).float()
        routed = logits[..., self.n_shared :]
        shared = torch.arange(self.n_shared, device=logits.device)
        if self.any_disabled():
            routed = routed.masked_fill(self.disabled[self.n_shared :], float("-inf"))
            shared = shared[~self.disabled[: self.n_shared]]
        probs = routed.softmax(dim=-1)
        top_p, top_i = top_k(probs, self.top_k)
        indices, weights = self._weights(top_p, top_i, shared)
        return indices, weights, logits, probs

    def decide(self, summary: torch.Tensor, valid: torch.Tensor, layer: int) -> Decisions:
        """summary: (B, G, d) pooled router inputs; valid: (B, G) decisions serving a real token ->
        the decisions, their aux loss (coefficients applied) and the record of them."""
        if self.any_disabled():  # ablation: the plain path, which masks the disabled chapters
            indices, weights, logits, probs = self(summary)
            lb, z, counts = router_losses(logits, probs, indices, valid, indices.shape[-1] - self.top_k)
            with torch.no_grad():  # for logging only: keeps (decisions x C) tensors out of the graph
                entropy = routing_entropy(probs, valid)
        else:
            # Routed and shared scores as two products: the softmax then runs on a contiguous tensor.
            wt, b, s = self.proj.weight, self.proj.bias, self.n_shared
            x = summary.reshape(-1, summary.shape[-1])
            routed, shared = F.linear(x, wt[s:], b[s:]).float(), F.linear(x, wt[:s], b[:s]).float()
            w = valid.reshape(-1).to(routed.dtype)
            top_p, top_i, lb, z, counts, entropy = RouterHead.apply(routed, shared, w, self.top_k)
            lead = summary.shape[:-1]
            shared_ids = torch.arange(s, device=routed.device)
            indices, weights = self._weights(top_p.view(*lead, -1), top_i.view(*lead, -1), shared_ids)
        aux = self.lb_coef * lb + self.z_coef * z
        info = RoutingInfo(
            layer=layer,
            indices=indices.detach(),
            weights=weights.detach(),
            valid=valid.detach(),
            stats=torch.stack([entropy.detach(), lb.detach(), z.detach()]).float(),
            chapter_counts=counts.detach(),
        )
        return Decisions(indices, weights, aux, info)
