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
the router head (``moc.kernels.router_head.RouterHead``) computes the same numbers for the training
forward with a hand-written backward: its (decisions x chapters) work is one softmax, one top-k, two row
reductions forward and two broadcast passes backward. On the CPU moc's C kernels run it
(:func:`c_router_head` says where).

This file imports ``moc`` only inside try blocks: it is exported with the model code, and an exported
folder without moc imports the router head's copy beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

try:  # the router head: from moc, or the copy an exported Hugging Face folder holds beside this file
    from moc.kernels.router_head import RouterHead, top_k
except ImportError:
    from .router_head import RouterHead, top_k

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


def routing_entropy(probs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the router's distribution over the valid decisions. probs: (..., C_routed)."""
    entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1)
    return (entropy * valid).sum() / valid.sum().clamp(min=1)


# Under torch.compile the compiler fuses the PyTorch head into few passes, and below this many chapters
# they cost less than the C kernels' fixed work per decision (bench/router_head.py, compiled, PyTorch
# against C: 128 chapters 0.53 ms against 0.61, 256: 0.88 against 0.79, 512: 1.50 against 1.17).
COMPILED_C_HEAD_MIN_CHAPTERS = 256


def c_router_head(x: torch.Tensor, weight: torch.Tensor, kernel: str) -> Callable[..., tuple] | None:
    """moc's C router head (``moc.kernels.router_op.router_head``) where it runs the router on ``x`` (N, d):
    ``memory.kernel: auto``, float32 on the CPU without autocast, and under torch.compile only for
    ``COMPILED_C_HEAD_MIN_CHAPTERS`` chapters or more; None: :class:`RouterHead`'s PyTorch ops (always in
    an exported folder)."""
    on_cpu = x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
    small = weight.shape[0] < COMPILED_C_HEAD_MIN_CHAPTERS
    if kernel != "auto" or not on_cpu or torch.is_autocast_enabled("cpu"):
        return None
    if small and torch.compiler.is_compiling():
        return None
    try:
        from moc.kernels.router_op import router_head
    except ImportError:  # an exported folder without moc
        return None
    return router_head


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

    def decide(
        self, summary: torch.Tensor, valid: torch.Tensor, layer: int, kernel: str = "auto"
    ) -> Decisions:
        """summary: (B, G, d) pooled router inputs; valid: (B, G) decisions serving a real token ->
        the decisions, their aux loss (coefficients applied) and the record of them. ``kernel`` is the
        layer's ``memory.kernel``: "auto" runs the router head's C kernels on the CPU."""
        if self.any_disabled():  # ablation: the plain path, which masks the disabled chapters
            indices, weights, logits, probs = self(summary)
            lb, z, counts = router_losses(logits, probs, indices, valid, indices.shape[-1] - self.top_k)
            with torch.no_grad():  # for logging only: keeps (decisions x C) tensors out of the graph
                entropy = routing_entropy(probs, valid)
        else:
            x, s, k = summary.reshape(-1, summary.shape[-1]), self.n_shared, self.top_k
            w = valid.reshape(-1).float()
            c_head = c_router_head(x, self.proj.weight, kernel)
            if c_head is not None:  # the scores' matmul in the op: its backward orders the products
                top_p, top_i, lb, z, counts, entropy = c_head(x, self.proj.weight, self.proj.bias, w, s, k)
            else:
                top_p, top_i, lb, z, counts, entropy = RouterHead.apply(self.proj(x).float(), w, s, k)
            lead = summary.shape[:-1]
            shared_ids = torch.arange(s, device=x.device)
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
