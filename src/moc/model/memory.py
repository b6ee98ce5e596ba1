"""Mixture of Chapters: a learnable memory bank, cut into chapters, read through a router.

The bank ``M`` holds ``N_m = C * T`` latent tokens (C chapters of T tokens). A memory layer reads it:

    S        = shared chapters  +  router top-k of the routed chapters
    M_S      = RMSNorm(M[S]) * chapter weight              (no learned scale)
    H'       = H + W_O softmax(Q K^T / sqrt(d_h)) V        Q = RMSNorm(H) W_Q, K = M_S W_K, V = M_S W_V

Each routing *decision* picks S for a group of positions:

    sequence  one decision per sequence from the mean of all its (valid) positions — the paper's mode.
              NOT causal: the chapters read at position t depend on tokens after t.
    causal    positions [g*S, (g+1)*S) (S = causal_chunk_size) share one decision made from the mean
              of the positions < g*S; chunk 0 routes from the router bias alone. Strictly causal.
    token     every position decides from its own hidden state. Causal.

Chunks are counted in *positions* (from ``position_ids``), so left padding does not move them.

Because W_K and W_V have no bias, K(w * m) = w * K(m): keys and values are projected once per
distinct selected chapter and then scaled by each decision's weight. The bank is indexed directly —
never expanded per batch element — so its gradient is one N_m x d tensor, non-zero only on the
selected chapters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RMSNorm, rms_normalize

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import MemoryConfig
    except ImportError:
        pass


class MemoryBank(nn.Module):
    """``n_tokens`` latent memory tokens viewed as ``n_chapters`` chapters of equal size.

    kind "full":        weight (N_m, dim)
    kind "factorized":  A (N_m, rank) @ B^T with B (dim, rank) — a low-rank bank
    kind "reduced":     weight (N_m, dim) with dim = bank_dim < d_model; attention runs in that dim
    """

    def __init__(self, n_tokens: int, n_chapters: int, dim: int, kind: str, rank: int, init_std: float):
        super().__init__()
        self.n_chapters, self.chapter_size, self.dim, self.kind = (
            n_chapters,
            n_tokens // n_chapters,
            dim,
            kind,
        )
        if kind == "factorized":
            # Entries of A @ B^T then have std ~= init_std.
            factor_std = math.sqrt(init_std / math.sqrt(rank))
            self.A = nn.Parameter(torch.randn(n_tokens, rank) * factor_std)
            self.B = nn.Parameter(torch.randn(dim, rank) * factor_std)
        else:
            self.weight = nn.Parameter(torch.randn(n_tokens, dim) * init_std)

    def chapters(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: (U,) chapter ids -> (U, T, dim). Indexes the bank directly (no batch expansion)."""
        if self.kind == "factorized":
            rows = self.A.view(self.n_chapters, self.chapter_size, -1)[idx]
            return rows @ self.B.t()
        return self.weight.view(self.n_chapters, self.chapter_size, self.dim)[idx]


def bank_owners(cfg: MemoryConfig, n_memory_layers: int) -> list[int]:
    """Which bank each memory layer reads (in layer order): one shared, one each, or one per group."""
    if cfg.bank_sharing == "shared":
        return [0] * n_memory_layers
    if cfg.bank_sharing == "per_layer":
        return list(range(n_memory_layers))
    return [j // cfg.bank_group_size for j in range(n_memory_layers)]


def build_banks(cfg: MemoryConfig, d_model: int, n_banks: int) -> nn.ModuleList:
    """``n_banks`` memory banks as the config describes (a reduced bank lives in ``bank_dim`` dims)."""
    dim = cfg.bank_dim if cfg.bank_type == "reduced" else d_model
    return nn.ModuleList(
        MemoryBank(cfg.n_tokens, cfg.n_chapters, dim, cfg.bank_type, cfg.bank_rank, cfg.bank_init_std)
        for _ in range(n_banks)
    )


@dataclass
class RoutingInfo:
    """What one memory layer's router decided (detached), for losses' logging and inspection.

    indices/weights: (B, G, n_selected) selected chapter ids (shared first) and their weights;
    valid: (B, G) decisions that serve at least one real token.
    """

    layer: int
    indices: torch.Tensor
    weights: torch.Tensor
    valid: torch.Tensor
    entropy: float
    load_balance: float
    z_loss: float
    chapter_counts: torch.Tensor = field(repr=False)


@dataclass
class MemoryState:
    """Per-layer decode state: the running sum of pooled states and the current decision's K/V."""

    prefix_sum: torch.Tensor | None = None  # (B, d) sum of normalised hidden states seen so far
    prefix_count: torch.Tensor | None = None  # (B,)
    group: torch.Tensor | None = None  # (B,) chunk id of the cached decision (causal)
    k: torch.Tensor | None = None  # (B, n_kv_heads, N_sel, head_dim)
    v: torch.Tensor | None = None


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
        # Chapters removed for ablation (see moc.analysis): never selected, never read.
        self.register_buffer("disabled", torch.zeros(cfg.n_chapters, dtype=torch.bool), persistent=False)

    def forward(self, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """summary: (..., d) -> (indices, weights, logits, probs).

        indices, weights: (..., n_shared + k); logits: (..., C); probs: (..., C_routed).
        """
        logits = self.proj(summary).float()
        routed = logits[..., self.n_shared :]
        shared = torch.arange(self.n_shared, device=logits.device)
        if self.disabled.any():
            routed = routed.masked_fill(self.disabled[self.n_shared :], float("-inf"))
            shared = shared[~self.disabled[: self.n_shared]]
        probs = routed.softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        routed_w = self.scale * top_p / top_p.sum(dim=-1, keepdim=True)
        shared_w = routed_w.new_ones(*routed_w.shape[:-1], len(shared))
        weights = torch.cat([shared_w, routed_w], dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        shared_i = shared.expand(*top_i.shape[:-1], len(shared))
        return torch.cat([shared_i, top_i + self.n_shared], dim=-1), weights, logits, probs


def router_losses(
    logits: torch.Tensor, probs: torch.Tensor, indices: torch.Tensor, valid: torch.Tensor, n_shared: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load-balance loss, z-loss and per-chapter selection counts over the valid decisions.

    indices: (..., n_shared + k) with the ``n_shared`` shared-chapter columns first.

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


class MemoryLayer(nn.Module):
    """One memory read: router + cross-attention from the token stream into the selected chapters."""

    def __init__(self, d_model: int, norm_eps: float, cfg: MemoryConfig, layer_idx: int) -> None:
        super().__init__()
        self.cfg, self.layer_idx, self.eps = cfg, layer_idx, norm_eps
        attn_dim = cfg.bank_dim if cfg.bank_type == "reduced" else d_model
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = attn_dim // cfg.n_heads
        self.norm = RMSNorm(d_model, norm_eps)
        self.router = ChapterRouter(d_model, cfg)
        self.q_proj = nn.Linear(d_model, attn_dim, bias=False)
        self.k_proj = nn.Linear(attn_dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(attn_dim, cfg.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(attn_dim, d_model, bias=False)

    # -- the read -----------------------------------------------------------------------------------

    def selected_kv(
        self, bank: MemoryBank, indices: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """indices, weights: (B, G, n_sel) -> K, V: (B, G, n_kv_heads, n_sel * T, head_dim)."""
        uniq, inverse = torch.unique(indices, return_inverse=True)
        mem = rms_normalize(bank.chapters(uniq), self.eps)  # (U, T, dim)
        U, T, _ = mem.shape
        k = self.k_proj(mem).view(U, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(mem).view(U, T, self.n_kv_heads, self.head_dim)
        w = weights.to(k.dtype)[..., None, None, None]  # (B, G, n_sel, 1, 1, 1)
        B, G, n_sel = indices.shape
        k = (k[inverse] * w).reshape(B, G, n_sel * T, self.n_kv_heads, self.head_dim).transpose(2, 3)
        v = (v[inverse] * w).reshape(B, G, n_sel * T, self.n_kv_heads, self.head_dim).transpose(2, 3)
        return k, v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: (N, heads, Lq, hd); k, v: (N, kv_heads, Lk, hd) -> (N, heads, Lq, hd).

        No mask: every selected memory token is visible to every query.
        """
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=self.n_kv_heads != self.n_heads)

    def route(
        self, summary: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """summary: (B, G, d); valid: (B, G) -> indices, weights, aux loss, stats."""
        indices, weights, logits, probs = self.router(summary)
        n_shared = indices.shape[-1] - self.cfg.top_k
        lb, z, counts = router_losses(logits, probs, indices, valid, n_shared)
        aux = self.cfg.load_balance_coef * lb + self.cfg.z_loss_coef * z
        entropy = -(probs * probs.clamp_min(1e-20).log()).sum(-1)
        entropy = (entropy * valid).sum() / valid.sum().clamp(min=1)
        stats = {"lb": lb.detach(), "z": z.detach(), "counts": counts, "entropy": entropy.detach()}
        return indices, weights, aux, stats

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        h: torch.Tensor,
        bank: MemoryBank,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        state: MemoryState | None = None,
        sequence_route_len: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo | None]:
        """h: (B, L, d); position_ids, valid: (B, L) -> (memory update (B, L, d), aux loss, routing info).

        With ``state`` (incremental decoding) the routing decisions and their K/V are kept in it.
        ``sequence_route_len`` (sequence routing only) pools just the positions below it, e.g. the prompt.
        """
        x = self.norm(h)
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        decoding = state is not None and state.prefix_count is not None
        if decoding:
            out = self._decode(x, q, bank, position_ids, valid, state)
            return self.o_proj(out.reshape(B, L, -1)), x.new_zeros((), dtype=torch.float32), None
        mode = self.cfg.routing
        if mode == "sequence":
            pool = valid if sequence_route_len is None else valid & (position_ids < sequence_route_len)
            out, aux, info = self._read_sequence(x, q, bank, pool, state)
        elif mode == "causal":
            out, aux, info = self._read_causal(x, q, bank, position_ids, valid, state)
        else:
            out, aux, info = self._read_token(x, q, bank, valid)
        if state is not None:  # prefill: remember what the next tokens need
            state.prefix_sum = (x.float() * valid[..., None]).sum(1)
            state.prefix_count = valid.sum(1).float()
        return self.o_proj(out.reshape(B, L, -1)), aux, info

    def _info(
        self, stats: dict, indices: torch.Tensor, weights: torch.Tensor, valid: torch.Tensor
    ) -> RoutingInfo:
        return RoutingInfo(
            layer=self.layer_idx,
            indices=indices.detach(),
            weights=weights.detach(),
            valid=valid.detach(),
            entropy=float(stats["entropy"]),
            load_balance=float(stats["lb"]),
            z_loss=float(stats["z"]),
            chapter_counts=stats["counts"],
        )

    def _read_sequence(self, x, q, bank, valid, state):  # noqa: ANN001, ANN202
        vf = valid.to(x.dtype)[..., None]
        summary = (x * vf).sum(1, keepdim=True) / vf.sum(1, keepdim=True).clamp(min=1)  # (B, 1, d)
        dec_valid = valid.any(1, keepdim=True)
        indices, weights, aux, stats = self.route(summary, dec_valid)
        k, v = self.selected_kv(bank, indices, weights)  # (B, 1, kvh, N, hd)
        out = self.attend(q.transpose(1, 2), k[:, 0], v[:, 0]).transpose(1, 2)
        if state is not None:
            state.k, state.v = k[:, 0], v[:, 0]
        return out, aux, self._info(stats, indices, weights, dec_valid)

    def _read_token(self, x, q, bank, valid):  # noqa: ANN001, ANN202
        B, L, _ = x.shape
        indices, weights, aux, stats = self.route(x, valid)  # one decision per position
        k, v = self.selected_kv(bank, indices, weights)  # (B, L, kvh, N, hd)
        qt = q.reshape(B * L, 1, self.n_heads, self.head_dim).transpose(1, 2)
        out = self.attend(qt, k.flatten(0, 1), v.flatten(0, 1))  # (B*L, heads, 1, hd)
        return out.reshape(B, L, self.n_heads, self.head_dim), aux, self._info(stats, indices, weights, valid)

    def _read_causal(self, x, q, bank, position_ids, valid, state):  # noqa: ANN001, ANN202
        B, L, d = x.shape
        S = self.cfg.causal_chunk_size
        pos = torch.where(valid, position_ids, torch.zeros_like(position_ids))
        G = int(pos.max()) // S + 1
        P = G * S
        # Lay tokens out by position (slot P is a bin for padding), so chunk g is slots [g*S, (g+1)*S).
        slot = torch.where(valid, pos, torch.full_like(pos, P))
        slot_d = slot[..., None].expand(B, L, d)
        by_pos = x.new_zeros(B, P + 1, d, dtype=torch.float32).scatter(
            1, slot_d, x.float() * valid[..., None]
        )
        filled = x.new_zeros(B, P + 1, dtype=torch.float32).scatter(1, slot, valid.float())
        # Router input of chunk g: mean of the positions < g*S (zeros for chunk 0: the bias decides).
        csum, ccount = by_pos[:, :P].cumsum(1), filled[:, :P].cumsum(1)
        before = torch.arange(G, device=x.device) * S - 1  # last position before chunk g
        sums = torch.where(before[None, :, None] >= 0, csum[:, before.clamp(min=0)], 0.0)
        counts = torch.where(before[None] >= 0, ccount[:, before.clamp(min=0)], 0.0)
        summary = (sums / counts.clamp(min=1)[..., None]).to(x.dtype)  # (B, G, d)
        dec_valid = filled[:, :P].view(B, G, S).sum(-1) > 0
        indices, weights, aux, stats = self.route(summary, dec_valid)
        k, v = self.selected_kv(bank, indices, weights)  # (B, G, kvh, N, hd)
        hd, H = self.head_dim, self.n_heads
        slot_q = slot[..., None, None].expand(B, L, H, hd)
        q_by_pos = q.new_zeros(B, P + 1, H, hd).scatter(1, slot_q, q)[:, :P]
        q_chunks = q_by_pos.reshape(B * G, S, H, hd).transpose(1, 2)
        out = self.attend(q_chunks, k.flatten(0, 1), v.flatten(0, 1))  # (B*G, H, S, hd)
        out = out.transpose(1, 2).reshape(B, P, H, hd)
        out = torch.cat([out, out.new_zeros(B, 1, H, hd)], dim=1).gather(1, slot_q)
        if state is not None:
            last_group = pos.max(1).values // S  # (B,)
            take = last_group[:, None, None, None, None].expand(B, 1, *k.shape[2:])
            state.k, state.v = k.gather(1, take)[:, 0], v.gather(1, take)[:, 0]
            state.group = last_group
        return out, aux, self._info(stats, indices, weights, dec_valid)

    def _decode(self, x, q, bank, position_ids, valid, state: MemoryState) -> torch.Tensor:  # noqa: ANN001
        """Incremental decoding: one position at a time, reusing the cached decision where it holds."""
        outs = []
        for t in range(x.shape[1]):
            xt, qt, vt = x[:, t], q[:, t], valid[:, t]  # (B, d), (B, H, hd), (B,)
            mode = self.cfg.routing
            if mode == "token":
                idx, w, _, _ = self.router(xt[:, None])  # (B, 1, n_sel)
                k, v = (a[:, 0] for a in self.selected_kv(bank, idx, w))
            elif mode == "causal":
                group = position_ids[:, t] // self.cfg.causal_chunk_size
                new = (group != state.group) & vt
                if bool(new.any()):
                    summary = state.prefix_sum / state.prefix_count.clamp(min=1)[:, None]
                    idx, w, _, _ = self.router(summary.to(x.dtype)[:, None])
                    k_new, v_new = (a[:, 0] for a in self.selected_kv(bank, idx, w))
                    sel = new[:, None, None, None]
                    state.k = torch.where(sel, k_new, state.k)
                    state.v = torch.where(sel, v_new, state.v)
                    state.group = torch.where(new, group, state.group)
                k, v = state.k, state.v
            else:  # sequence: the decision made on the prompt stands for the whole generation
                k, v = state.k, state.v
            outs.append(self.attend(qt[:, :, None], k, v)[:, :, 0])  # (B, H, hd)
            state.prefix_sum = state.prefix_sum + xt.float() * vt[:, None]
            state.prefix_count = state.prefix_count + vt.float()
        return torch.stack(outs, dim=1)
