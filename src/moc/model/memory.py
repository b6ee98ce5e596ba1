"""Mixture of Chapters: a learnable memory bank, cut into chapters, read through a router.

The bank ``M`` holds ``N_m = C * T`` latent tokens (C chapters of T tokens). A memory layer reads it:

    S        = shared chapters  +  router top-k of the routed chapters
    M_S      = RMSNorm(M[S]) * chapter weight              (no learned scale)
    H'       = H + W_O softmax(Q K^T / sqrt(d_h)) V        Q = RMSNorm(H) W_Q, K = M_S W_K, V = M_S W_V

Each routing *decision* picks S for a group of positions:

    sequence  one decision per document from the mean of all its (valid) positions — the paper's mode.
              NOT causal: the chapters read at position t depend on tokens after t.
    causal    positions [g*c, (g+1)*c) of a document (c = causal_chunk_size) share one decision made from
              the mean of the document's positions < g*c. Strictly causal. Chunk 0 of every document
              has seen no content yet: with ``causal_first_chunk: bias`` its summary is zero, so the
              router bias alone picks its chapters (the same for every document's first c tokens); with
              ``per_token`` each of its positions t is a decision of its own, from the mean of positions < t.
    token     every position decides from its own hidden state. Causal.

Documents: a row may pack several; a new one starts at a valid position whose id is 0 or not greater
than the previous valid position's (Hugging Face's packed convention). Routing never pools across
documents, and chunks are counted in *positions* from the document's start, so left padding does not
move them. With positions from an attention mask every row is one document. The bookkeeping (documents,
chunks, query tiles, pooling) lives in ``routing_layout``.

The router pools RMSNorm(h) (``router_input: memory_norm``) or the block's input residual stream
(``block_input``, the paper's code). ``chapter_weighting`` says how a chapter's weight enters the read:
"kv" (the paper) scales the memory vectors before W_K and W_V; "v" only the values; "logit" adds
log(weight) to that chapter's attention logits.

The read (``moc.kernels.routed_read``): keys and values are projected once per distinct selected chapter
in the batch (W_K, W_V have no bias, so K(w * m) = w * K(m): the weights are applied inside the read);
each query tile (a causal chunk, a piece of a document, or a token) attends to its own decision's
chapters by index. Nothing per decision is materialised or saved for backward: backward recomputes the
scores from the indices, the weights, q, the output and the log-sum-exp, and (eagerly on the CPU) the
chapters' K/V too; on CUDA and under torch.compile the read is a registered op that keeps the distinct
chapters' K/V instead (``moc.kernels.op``). On CUDA Triton kernels do the forward and backward
(``memory.kernel``: auto, triton or torch; see ``moc.kernels.dispatch``). The bank is indexed directly —
never expanded per batch element — so its gradient is one N_m x d tensor, non-zero only on the selected
chapters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .layers import RMSNorm, rms_normalize
from .router import ChapterRouter, Decisions, RoutingInfo
from .routing_layout import (
    TileLayout,
    causal_tile_sums,
    chunk_group,
    document_sums,
    from_tiles,
    prefix_sums,
    routing_plan,
    to_tiles,
)

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

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        """The tensors the bank is made of: (A, B) for a factorized bank, else (weight,)."""
        return (self.A, self.B) if self.kind == "factorized" else (self.weight,)

    def chapters(self, idx: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """idx: (U,) chapter ids -> (U, T, dim). Indexes the bank directly (no batch expansion).

        ``params`` (default: :attr:`params`) lets a read that recomputes in backward pass them in.
        """
        params = params or self.params
        if self.kind == "factorized":
            a, b = params
            return a.view(self.n_chapters, self.chapter_size, -1)[idx] @ b.t()
        return params[0].view(self.n_chapters, self.chapter_size, -1)[idx]


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
        self.prefix_sum = self.prefix_sum + r.float() * valid[:, None]
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
        return self.cfg.routing == "causal" and self.cfg.causal_first_chunk == "per_token"

    def plan(self, position_ids: torch.Tensor, valid: torch.Tensor, one_document: bool) -> TileLayout | None:
        """The query tiles of this layer's routing mode for (B, L) positions (``routing_plan``)."""
        chunk, split = self.cfg.causal_chunk_size, self.split_first_chunk
        return routing_plan(self.cfg.routing, position_ids, valid, chunk, split, one_document)

    # -- the read -----------------------------------------------------------------------------------

    @staticmethod
    def distinct_chapters(indices: torch.Tensor, n_chapters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """indices: (...) chapter ids -> (chapters (U,), indices as rows of ``chapters``).

        U = min(n_chapters, indices.numel()) is a bound known from shapes alone (no host sync, unlike
        ``torch.unique``): the distinct chapters come first, in ascending order, and any remaining rows
        are unread chapters (projected, never read, so they get exactly zero gradient).
        """
        flat = indices.reshape(-1)
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

        def kv_fn(
            chapters: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, *bank_params: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            mem = rms_normalize(bank.chapters(chapters, *bank_params), eps)  # (U, T, dim)
            U = mem.shape[0]
            return F.linear(mem, wk).view(U, T, kvh, hd), F.linear(mem, wv).view(U, T, kvh, hd)

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
        if torch.compiler.is_compiling() and not q.is_cuda and _gathered_fits(q, rows, bank.chapter_size):
            # Compiled on the CPU with a small read: plain gather-and-attend ops that the compiler fuses
            # (autograd keeps the gathered chapters and the probabilities, a few MB at these sizes).
            k, v = kv_fn(*inputs)
            return _read_functions()[2](q, k, v, rows, weights, self.weighting)
        op = _read_op() if q.is_cuda or torch.compiler.is_compiling() else None
        if op is not None:  # the registered op: K/V of the distinct chapters kept for backward
            k, v = kv_fn(*inputs)
            return op(q, k, v, rows, weights, self.weighting, kernel=self.cfg.kernel)
        # Eager on the CPU (and in an exported folder): the autograd Function, which recomputes K/V in
        # backward, so saved memory stays independent of how many chapters a batch reads.
        routed_read = _read_functions()[0]
        fwd, bwd = _read_impls(q.device, self.cfg.kernel)
        return routed_read(
            q, rows, weights, kv_fn, inputs, self.weighting, forward_impl=fwd, backward_impl=bwd
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
        chapter_coefficients = _read_functions()[1]
        a, b, c = chapter_coefficients(weights, self.weighting)
        B, n = indices.shape
        T = k.shape[1]
        k = (k[rows] * a.to(k.dtype)[..., None, None, None]).reshape(B, n * T, *k.shape[2:]).transpose(1, 2)
        v = (v[rows] * c.to(v.dtype)[..., None, None, None]).reshape(B, n * T, *v.shape[2:]).transpose(1, 2)
        bias = b.repeat_interleave(T, dim=1)[:, None, None].to(k.dtype) if self.weighting == "logit" else None
        return k, v, bias

    def route(self, summary: torch.Tensor, valid: torch.Tensor) -> Decisions:
        """summary: (B, G, d) pooled router inputs; valid: (B, G) decisions serving a real token."""
        return self.router.decide(summary, valid, self.layer_idx)

    # -- forward ------------------------------------------------------------------------------------

    def forward(
        self,
        h: torch.Tensor,
        bank: MemoryBank,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        state: MemoryState | None = None,
        sequence_route_len: int | torch.Tensor | None = None,
        route_input: torch.Tensor | None = None,
        one_document: bool = False,
        plan: TileLayout | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo | None]:
        """h: (B, L, d); position_ids, valid: (B, L) -> (memory update (B, L, d), aux loss, routing info).

        With ``state`` (incremental decoding) the routing decisions and their K/V are kept in it.
        ``sequence_route_len`` (sequence routing only) pools just the positions below it, e.g. the prompt.
        ``route_input`` (B, L, d): what the router pools instead of RMSNorm(h) (``router_input:
        block_input`` passes the block's input residual stream). ``one_document``: the caller knows every
        row is one document with positions 0, 1, ... (positions from an attention mask), so the tiles
        per row have a bound known from L (``routing_layout.max_tiles``) and the read needs no host sync
        (checked on the device). ``plan``: the forward's tiles (:meth:`plan`), shared by every memory
        layer; built here when not given.
        """
        x = self.norm(h)
        r = x if route_input is None else route_input
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim)
        decoding = state is not None and state.prefix_count is not None
        if decoding:
            out = self._decode(r, q, bank, position_ids, valid, state)
            return self.o_proj(out.reshape(B, L, -1)), x.new_zeros((), dtype=torch.float32), None
        if self.cfg.routing == "token":
            out, aux, info = self._read_token(r, q, bank, valid, state)
        else:
            out, aux, info = self._read_tiled(
                r, q, bank, position_ids, valid, state, sequence_route_len, one_document, plan
            )
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
            state.start((r.float() * valid[..., None]).sum(1), valid.sum(1).float())
        return out.view(B, L, H, hd), dec.aux, dec.info

    def _read_tiled(
        self,
        r: torch.Tensor,
        q: torch.Tensor,
        bank: MemoryBank,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        state: MemoryState | None,
        sequence_route_len: int | torch.Tensor | None,
        one_document: bool,
        plan: TileLayout | None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo]:
        """Causal and sequence routing: the positions of one document in one chunk form a query tile
        (see ``routing_layout``). Causal: one decision per tile, from the mean of the document's earlier
        tokens. Sequence: one decision per document, from the mean of all of it (or of its positions
        below ``sequence_route_len``), read by each of its tiles. r: (B, L, d); q: (B, L, H, hd).
        """
        chunk = self.cfg.causal_chunk_size
        lay = plan if plan is not None else self.plan(position_ids, valid, one_document)
        prefix = prefix_sums(r, valid) if self.cfg.routing == "causal" or state is not None else None
        if self.cfg.routing == "causal":
            sums, counts = causal_tile_sums(*prefix, lay)
            dec_valid, tile_decision = lay.tile_valid, None  # tile = decision
        else:
            pool = valid if sequence_route_len is None else valid & (position_ids < sequence_route_len)
            sums, counts = document_sums(r, valid, pool, lay)
            dec_valid, tile_decision = lay.doc_valid, lay.tile_document_decision()
        summary = (sums / counts.clamp(min=1)[..., None]).to(r.dtype)  # (B, G, d); 0 where nothing pooled
        dec = self.route(summary, dec_valid)  # (B, G, n_sel)
        out = from_tiles(self.read(to_tiles(q, lay, chunk), bank, *_flat(dec), tile_decision), lay)
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
                (csum[:, -1] - csum[rows, lay.last_doc_row]).float(),
                (ccount[:, -1] - ccount[rows, lay.last_doc_row]).float(),
                kv,
                lay.last_chunk if causal else None,
            )

    def _decode(
        self,
        r: torch.Tensor,
        q: torch.Tensor,
        bank: MemoryBank,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        state: MemoryState,
    ) -> torch.Tensor:
        """Incremental decoding: one position at a time, reusing the cached decision where it holds.
        r: (B, L, d); q: (B, L, H, hd) -> (B, L, H, hd)."""
        outs = []
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
            out = F.scaled_dot_product_attention(
                qt[:, :, None], k, v, attn_mask=bias, enable_gqa=self.n_kv_heads != self.n_heads
            )
            outs.append(out[:, :, 0])  # (B, H, hd)
            state.append(rt, vt)
        return torch.stack(outs, dim=1)


def _flat(dec: Decisions) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, weights) of the decisions as (N, n_sel) rows, the read's layout."""
    n = dec.indices.shape[-1]
    return dec.indices.reshape(-1, n), dec.weights.reshape(-1, n)


def _read_functions() -> tuple[Callable[..., Any], ...]:
    """(routed_read, chapter_coefficients, gathered_read): from moc, or the copy an exported Hugging Face
    folder holds (imported by name: transformers copies the files a remote-code module imports that way)."""
    try:
        from moc.kernels.routed_read import chapter_coefficients, gathered_read, routed_read
    except ImportError:  # an exported folder: moc.hf.export copies routed_read.py beside this file
        from .routed_read import chapter_coefficients, gathered_read, routed_read
    return routed_read, chapter_coefficients, gathered_read


# Reads whose gathered keys, values and scores hold at most this many entries run as plain ops when
# compiled on the CPU (a token-routed toy model: ~10^6); larger ones keep the memory-bounded read.
GATHERED_READ_ELEMENTS = 1 << 24


def _gathered_fits(q: torch.Tensor, rows: torch.Tensor, chapter_size: int) -> bool:
    """Whether the read of q (D, Qt, H, hd) over rows (D, n) is small enough to gather whole."""
    D, Qt, H, hd = q.shape
    keys = rows.shape[1] * chapter_size
    return D * keys * (Qt * H + 2 * hd) <= GATHERED_READ_ELEMENTS


def _read_op() -> Callable[..., torch.Tensor] | None:
    """``moc.kernels.op.read`` (the read as a registered op, traceable by torch.compile), or None in an
    exported folder without ``moc``."""
    try:
        from moc.kernels.op import read
    except ImportError:
        return None
    return read


def _read_impls(device: torch.device, kernel: str) -> tuple[Callable[..., object] | None, ...]:
    """The routed read's (forward, backward) implementations for ``memory.kernel`` on ``device``
    (``moc.kernels.dispatch``), or (None, None): the blocked PyTorch loops. An exported folder without
    ``moc`` has no Triton path: on CUDA it says so once."""
    try:
        from moc.kernels.dispatch import read_impls
    except ImportError as e:
        if device.type == "cuda" and kernel != "torch":
            reason = f"memory read: Triton fast path unavailable on CUDA ({e}); using the PyTorch path"
            try:
                from moc.errors import warn_once
            except ImportError:  # no moc at all: Python's default filter says it once per place
                warnings.warn(reason, stacklevel=3)
            else:
                warn_once(reason, stacklevel=3)
        return None, None
    return read_impls(device, kernel)

