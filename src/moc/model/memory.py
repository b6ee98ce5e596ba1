"""Mixture of Chapters: a memory layer reads a few routed chapters of a learnable bank.

The bank M (``bank.py``) holds N_m = C * T latent tokens: C chapters of T tokens. For hidden states H
(B, L, d), each routing *decision* picks chapters S from a pooled summary r_bar of the router input
r (RMSNorm(H), or the block's input with ``router_input: block_input``; ``router.py``):

    l        = W_r r_bar + b_r                                 scores of all C chapters
    S        = shared chapters  +  top-k of softmax(l[routed])
    w_c      = renormalise([1] * n_shared + s * p_top-k / sum p_top-k)        chapter weights
    M_S      = RMSNorm(M[S])                                   (no learned scale)
    Q        = RMSNorm(H) W_Q,   K = (w * M_S) W_K,   V = (w * M_S) W_V       ("kv" weighting)
    H'       = H + W_O softmax(Q K^T / sqrt(d_h)) V            (W_O starts at zero)
    aux      = coef_lb * C_routed * sum_i f_i P_i  +  coef_z * mean logsumexp(l)^2

``chapter_weighting`` "v" scales only V; "logit" adds log(w_c) to chapter c's attention logits.
Which positions a decision pools and serves (``memory.routing``):

    sequence  one per document, r_bar = mean of all its positions — the paper's; NOT causal
    causal    one per chunk [g*c, (g+1)*c) of a document, r_bar = mean of its positions < g*c (chunk 0:
              zero, the bias decides; or per position with ``causal_first_chunk: per_token``)
    token     one per position, r_bar = r_t

Documents, chunks and query tiles (``routing_layout``) are laid out once per forward in a
:class:`RoutingContext` that every memory layer reads. The read (``moc.kernels.routed_read``, run by
``read_backend``) projects K/V once per distinct chapter of the batch (W_K, W_V have no bias, so
K(w m) = w K(m) and the weights enter inside the read) and each query tile attends to its decision's
chapters by index: nothing per decision is materialised or saved for backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .bank import MemoryBank
from .layers import RMSNorm, float32_or_wider, rms_normalize, scaled_dot_product_attention
from .read_backend import cpu_kernels_run, read_functions, run_read
from .router import ChapterRouter, Decisions, RoutingInfo
from .routing_layout import (
    RoutingContext,
    TileLayout,
    causal_tile_sums,
    chunk_group,
    document_sums,
    from_tiles,
    prefix_sums,
    splits_first_chunk,
    to_tiles,
)

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import MemoryConfig
    except ImportError:
        pass


@dataclass
class MemoryState:
    """Per-layer decode state: the running sum of the last document's router inputs and the current
    decision's K/V."""

    prefix_sum: torch.Tensor | None = None  # (B, d) sum of the router inputs of the current document
    prefix_count: torch.Tensor | None = None  # (B,)
    group: torch.Tensor | None = None  # (B,) chunk id of the cached decision (causal)
    k: torch.Tensor | None = None  # (B, n_kv_heads, N_sel, head_dim), chapter weights applied
    v: torch.Tensor | None = None
    bias: torch.Tensor | None = None  # (B, 1, 1, N_sel) log chapter weights ("logit" weighting only)

    # Every write to the state goes through these three methods.

    def start(
        self,
        prefix_sum: torch.Tensor,
        prefix_count: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
        group: torch.Tensor | None = None,
    ) -> None:
        """After the prompt: its last document's router-input sum (B, d) and count (B,), the current
        decision's K/V/bias (None for token routing, which decides afresh) and its chunk (causal only)."""
        self.prefix_sum, self.prefix_count, self.group = prefix_sum, prefix_count, group
        if kv is not None:
            self.k, self.v, self.bias = kv

    def switch(
        self,
        new: torch.Tensor,
        group: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    ) -> None:
        """Causal decoding entered a new chunk in the rows ``new`` (B,): take their new decision's K/V."""
        k, v, bias = kv
        sel = new[:, None, None, None]
        self.k = torch.where(sel, k, self.k)
        self.v = torch.where(sel, v, self.v)
        if bias is not None:
            self.bias = torch.where(sel, bias, self.bias)
        self.group = torch.where(new, group, self.group)

    def append(self, r: torch.Tensor, valid: torch.Tensor) -> None:
        """One decoded position: add its router input r (B, d) where valid (B,)."""
        self.prefix_sum = self.prefix_sum + float32_or_wider(r) * valid[:, None]
        self.prefix_count = self.prefix_count + valid.float()


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

    @property
    def weighting(self) -> str:
        return self.cfg.chapter_weighting

    @property
    def split_first_chunk(self) -> bool:
        """Causal routing decides each position of a document's first chunk on its own."""
        return splits_first_chunk(self.cfg)

    # -- the read -----------------------------------------------------------------------------------

    @staticmethod
    def distinct_chapters(indices: torch.Tensor, n_chapters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """indices: (...) chapter ids -> (chapters (U,), indices as rows of ``chapters``).

        U = min(n_chapters, indices.numel()) is a bound known from shapes alone (no host sync, unlike
        ``torch.unique``). When U is the whole bank, every chapter in order and ``indices`` unchanged;
        otherwise the distinct chapters come first, in ascending order. Any unread rows are projected,
        never read, so they get exactly zero gradient.
        """
        flat = indices.reshape(-1)
        if flat.numel() >= n_chapters:
            # The bound is the whole bank: read it in place (no gather forward, no scatter into the
            # bank's gradient backward). Same K/V per chapter, so the same read as the general path.
            return torch.arange(n_chapters, device=flat.device), indices
        used = torch.zeros(n_chapters, dtype=torch.int32, device=flat.device).index_fill_(0, flat, 1)
        rank = used.cumsum(0) - 1  # row of chapter c among the used ones
        chapters = torch.argsort(1 - used, stable=True)[: min(n_chapters, flat.numel())]
        return chapters, rank[indices]

    def kv_source(
        self, bank: MemoryBank, chapters: torch.Tensor
    ) -> tuple[Callable[..., tuple[torch.Tensor, torch.Tensor]], tuple[torch.Tensor, ...]]:
        """(kv_fn, inputs): ``kv_fn(*inputs)`` -> K, V (U, T, n_kv_heads, head_dim) of ``chapters``.

        Each memory vector is RMS-normalised (no learned scale) and projected, unweighted: the chapter
        weights enter inside the read. The inputs are the bank's parameters and W_K, W_V, so the read
        can recompute K and V in backward instead of saving them.
        """
        T, eps, kvh, hd = bank.chapter_size, self.eps, self.n_kv_heads, self.head_dim
        # distinct_chapters lists every chapter, in order, exactly when its bound is the whole bank
        whole = chapters.shape[0] == bank.n_chapters
        # the C read's layout, only where the C read takes it (the other reads gather rows of K, V)
        tokens_last = not chapters.is_cuda and cpu_kernels_run(bank.params[0].dtype, hd, T, self.cfg.kernel)

        def kv_fn(
            chapters: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, *bank_params: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            mem = rms_normalize(bank.chapters(None if whole else chapters, *bank_params), eps)  # (U, T, dim)
            U, w_kv = mem.shape[0], torch.cat((wk, wv))  # K and V in one product: one GEMM, not two
            if not tokens_last:
                kv = F.linear(mem, w_kv).view(U, T, 2, kvh, hd)
                return kv[:, :, 0], kv[:, :, 1]
            # Each chapter's tokens last ((2, kvh, hd, U, T) in memory), the layout the C read
            # (moc.kernels.cpu_read) reads in place; any other code sees the same (U, T, kvh, hd) values.
            # One chapter of zero rows pads each row of K^T, V^T: rows U T floats apart (a multiple of
            # 4 KiB for banks of 1k, 2k, ... tokens) would share one L1 cache set, and a chapter's 2 kvh hd
            # rows would evict each other (1.5x the C read's backward at 8k tokens, measured).
            mem_t = F.pad(mem.reshape(U * T, -1), (0, 0, 0, T)).t()  # (dim, U T + T)
            kv_t = (w_kv @ mem_t)[:, : U * T].view(2, kvh, hd, U, T)
            return kv_t[0].permute(2, 3, 0, 1), kv_t[1].permute(2, 3, 0, 1)

        return kv_fn, (chapters, self.k_proj.weight, self.v_proj.weight, *bank.params)

    def read(
        self,
        q: torch.Tensor,
        bank: MemoryBank,
        indices: torch.Tensor,
        weights: torch.Tensor,
        tile_decision: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q: (D, Qt, H, hd) query tiles; indices, weights: (N, n_sel) the N decisions; tile_decision:
        (D,) which decision each tile reads (None: tile d reads decision d) -> (D, Qt, H, hd).

        Keys/values are projected once per distinct chapter of the decisions and read by index; nothing
        per decision is materialised or saved for backward (see ``moc.kernels.routed_read``).
        """
        chapters, rows = self.distinct_chapters(indices, bank.n_chapters)
        if tile_decision is not None:
            rows, weights = rows[tile_decision], weights[tile_decision]
        kv_fn, inputs = self.kv_source(bank, chapters)
        kv_elements = 2 * chapters.shape[0] * bank.chapter_size * self.k_proj.out_features
        return run_read(
            q, rows, weights, kv_fn, inputs, self.weighting, self.cfg.kernel, bank.chapter_size, kv_elements
        )

    def dense_kv(
        self, bank: MemoryBank, indices: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Decoding: one decision per row. indices, weights: (B, n_sel) ->
        K, V (B, n_kv_heads, n_sel * T, hd) with the weights applied, and a logit bias (B, 1, 1, n_sel * T)
        for the "logit" weighting (else None). Small (B rows), so materialising it is fine here."""
        chapters, rows = self.distinct_chapters(indices, bank.n_chapters)
        kv_fn, inputs = self.kv_source(bank, chapters)
        k, v = kv_fn(*inputs)
        a, b, c = read_functions()[1](weights, self.weighting)  # chapter_coefficients
        B, n = indices.shape
        T = k.shape[1]
        k = (k[rows] * a.to(k.dtype)[..., None, None, None]).reshape(B, n * T, *k.shape[2:]).transpose(1, 2)
        v = (v[rows] * c.to(v.dtype)[..., None, None, None]).reshape(B, n * T, *v.shape[2:]).transpose(1, 2)
        bias = b.repeat_interleave(T, dim=1)[:, None, None].to(k.dtype) if self.weighting == "logit" else None
        return k, v, bias

    def route(self, summary: torch.Tensor, valid: torch.Tensor) -> Decisions:
        """summary: (B, G, d) pooled router inputs; valid: (B, G) decisions serving a real token."""
        return self.router.decide(summary, valid, self.layer_idx, self.cfg.kernel)

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        h: torch.Tensor,
        bank: MemoryBank,
        routing: RoutingContext,
        state: MemoryState | None = None,
        route_input: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo | None]:
        """h: (B, L, d) -> (memory update (B, L, d), aux loss, routing info).

        ``routing``: the forward's positions, padding and query tiles (:class:`RoutingContext`, built
        once per forward; a direct caller builds one with ``RoutingContext.build(layer.cfg, ...)``).
        With ``state`` (incremental decoding) the routing decisions and their K/V are kept in it.
        ``route_input`` (B, L, d): what the router pools instead of RMSNorm(h) (``router_input:
        block_input`` passes the block's input residual stream).
        """
        x = self.norm(h)
        r = x if route_input is None else route_input
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        decoding = state is not None and state.prefix_count is not None
        if decoding:
            out = self._decode(r, q, bank, routing, state)
            return self.o_proj(out.reshape(B, L, -1)), x.new_zeros((), dtype=torch.float32), None
        if self.cfg.routing == "token":
            out, aux, info = self._read_token(r, q, bank, routing.valid, state)
        else:
            out, aux, info = self._read_tiled(r, q, bank, routing, state)
        return self.o_proj(out.reshape(B, L, -1)), aux, info

    def _read_token(
        self,
        r: torch.Tensor,
        q: torch.Tensor,
        bank: MemoryBank,
        valid: torch.Tensor,
        state: MemoryState | None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo]:
        """Every position its own decision: B * L tiles of one query. r: (B, L, d); q: (B, L, H, hd)."""
        B, L, H, hd = q.shape
        dec = self.route(r, valid)  # (B, L, n_sel)
        out = self.read(q.reshape(B * L, 1, H, hd), bank, *_flat(dec))
        if state is not None:  # decoding routes every new token afresh: only the running sum is kept
            state.start((float32_or_wider(r) * valid[..., None]).sum(1), valid.sum(1).float())
        return out.view(B, L, H, hd), dec.aux, dec.info

    def _read_tiled(
        self,
        r: torch.Tensor,
        q: torch.Tensor,
        bank: MemoryBank,
        routing: RoutingContext,
        state: MemoryState | None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo]:
        """Causal and sequence routing: the positions of one document in one chunk form a query tile
        (see ``routing_layout``). Causal: one decision per tile, from the mean of the document's earlier
        tokens. Sequence: one decision per document, from the mean of all of it (or of its positions
        below ``sequence_route_len``), read by each of its tiles. r: (B, L, d); q: (B, L, H, hd).
        """
        lay, valid = routing.plan, routing.valid
        if lay is None:  # the context's owner decides whether tiles are laid out, never a layer
            raise ValueError("a causal or sequence memory read needs a RoutingContext with its tiles")
        prefix = prefix_sums(r, valid) if self.cfg.routing == "causal" or state is not None else None
        if self.cfg.routing == "causal":
            sums, counts = causal_tile_sums(*prefix, lay)
            dec_valid, tile_decision = lay.tile_valid, None  # tile = decision
        else:
            sums, counts = document_sums(r, valid, routing.sequence_pool(), lay)
            dec_valid, tile_decision = lay.doc_valid, lay.tile_document_decision()
        summary = (sums / counts.clamp(min=1)[..., None]).to(r.dtype)  # (B, G, d); 0 where nothing pooled
        dec = self.route(summary, dec_valid)  # (B, G, n_sel)
        tiles = to_tiles(q, lay, self.cfg.causal_chunk_size)
        out = from_tiles(self.read(tiles, bank, *_flat(dec), tile_decision), lay)
        if state is not None:
            self._prefill(state, lay, dec, bank, prefix)
        return out, dec.aux, dec.info

    def _prefill(
        self,
        state: MemoryState,
        lay: TileLayout,
        dec: Decisions,
        bank: MemoryBank,
        prefix: tuple[torch.Tensor, torch.Tensor],
    ) -> None:
        """Remember what decoding needs: the last document's running sum, its current decision's K/V."""
        csum, ccount = prefix
        B, _, n = dec.indices.shape
        rows = torch.arange(B, device=dec.indices.device)
        causal = self.cfg.routing == "causal"
        with torch.no_grad():
            # The current decision: the last tile (causal) or the last document (sequence).
            last = (lay.n_tiles if causal else lay.doc_valid.sum(1)).clamp(min=1) - 1  # (B,)
            take = last[:, None, None].expand(B, 1, n)
            kv = self.dense_kv(bank, dec.indices.gather(1, take)[:, 0], dec.weights.gather(1, take)[:, 0])
            state.start(
                float32_or_wider(csum[:, -1] - csum[rows, lay.last_doc_row]),
                (ccount[:, -1] - ccount[rows, lay.last_doc_row]).float(),
                kv,
                lay.last_chunk if causal else None,
            )

    def _decode(
        self,
        r: torch.Tensor,
        q: torch.Tensor,
        bank: MemoryBank,
        routing: RoutingContext,
        state: MemoryState,
    ) -> torch.Tensor:
        """Incremental decoding: one position at a time, reusing the cached decision where it holds.
        r: (B, L, d); q: (B, L, H, hd) -> (B, L, H, hd)."""
        outs, position_ids, valid = [], routing.position_ids, routing.valid
        for t in range(r.shape[1]):
            rt, qt, vt = r[:, t], q[:, t], valid[:, t]  # (B, d), (B, H, hd), (B,)
            mode = self.cfg.routing
            if mode == "token":
                idx, w, _, _ = self.router(rt)  # (B, n_sel)
                k, v, bias = self.dense_kv(bank, idx, w)
            else:  # sequence: the decision made on the prompt stands for the whole generation
                if mode == "causal":
                    group = chunk_group(
                        position_ids[:, t], self.cfg.causal_chunk_size, self.split_first_chunk
                    )
                    new = (group != state.group) & vt
                    if bool(new.any()):
                        summary = state.prefix_sum / state.prefix_count.clamp(min=1)[:, None]
                        idx, w, _, _ = self.router(summary.to(r.dtype))
                        state.switch(new, group, self.dense_kv(bank, idx, w))
                k, v, bias = state.k, state.v, state.bias
            out = scaled_dot_product_attention(
                qt[:, :, None], k, v, bias, is_causal=False, enable_gqa=self.n_kv_heads != self.n_heads
            )
            outs.append(out[:, :, 0])  # (B, H, hd)
            state.append(rt, vt)
        return torch.stack(outs, dim=1)


def _flat(dec: Decisions) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) of the decisions as (N, n_sel) rows, the read's layout."""
    n = dec.indices.shape[-1]
    return dec.indices.reshape(-1, n), dec.weights.reshape(-1, n)
