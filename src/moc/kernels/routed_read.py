"""The routed memory read: query tiles attend to their own selected chapters, by index, no K/V copies.

Shapes (D query tiles, each served by one routing decision):

    q       (D, Qt, H, hd)      the tile's queries (a causal chunk, a document piece, or one token)
    idx     (D, n)              the decision's selected chapters, as rows of ``k``/``v``
    w       (D, n)              their chapter weights
    k, v    (U, T, Hkv, hd)     keys/values of the U distinct chapters in the batch, projected once

For tile d, query i, head h (KV head h // (H / Hkv)), chapter j, chapter token t:

    s[j, t] = a[d, j] * (q_i . k[idx[d, j], t]) / sqrt(hd) + b[d, j]
    out_i   = sum_{j,t} softmax(s)[j, t] * c[d, j] * v[idx[d, j], t]

with (a, b, c) from the chapter weighting: "kv" (the paper: the weight scales the memory vector
before W_K and W_V, and K, V are linear) a = c = w, b = 0; "v" a = 1, b = 0, c = w; "logit" a = c = 1,
b = log w.

:class:`RoutedRead` is a ``torch.autograd.Function`` blocked over tiles. Forward keeps only q, the output
and the log-sum-exp (FlashAttention-style); it does not even keep ``k``/``v``: they come from
``kv_fn(*kv_inputs)`` (the bank rows, W_K, W_V) and backward recomputes them, so nothing the size of
the selected chapters is saved for backward whatever the number of decisions. Each block gathers its
tiles' chapters transiently (at most ``block_elements`` scores and gathered keys/values at once) and
frees them.

The PyTorch loops run in one of two orders. Tile-major (above) suits tiles of many queries (causal
chunks): one gather of a tile's chapters serves all its queries. Token routing has one query per tile,
and every tile would gather its own copy of its chapters' keys and values. There the loops go
chapter-major instead: the (tile, chapter) pairs are sorted by chapter, each chapter's queries attend to
it in one product, and the per-chapter results are merged by their log-sum-exp, so no chapter is ever
copied per tile (:func:`reads_by_chapter` decides which order runs).

This file imports nothing from ``moc``: Hugging Face exports copy it next to the model code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

WEIGHTINGS = ("kv", "v", "logit")
# Entries (scores and gathered keys/values) one block holds at once: 64 MiB in fp32 on the CPU, 512 MiB
# on a GPU (fewer, larger kernels). Backward holds about twice as much.
DEFAULT_BLOCK_ELEMENTS = 1 << 24
CUDA_BLOCK_ELEMENTS = 1 << 27
# Chapter-major loops when the tile-major ones would copy at least this many key/value entries per chapter
# (the copies it saves, against one more loop iteration). Measured on the CPU in a training step: the
# real-text demo's token-routed read (1.3M per chapter) 16x faster, a text causal read (20k) 1.8x;
# the capacity models' reads (0.8k-13k) ran slower chapter-major (MoC 2k's step 37 ms against 24).
CHAPTER_MAJOR_MIN_COPIES = 1 << 14


def default_block_elements(q: torch.Tensor) -> int:
    """The blocked loops' block size for q's device: GPU-sized blocks on CUDA (few, large kernels)."""
    return CUDA_BLOCK_ELEMENTS if q.is_cuda else DEFAULT_BLOCK_ELEMENTS


def chapter_coefficients(w: torch.Tensor, weighting: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w: (D, n) chapter weights -> (logit scale a, logit bias b, value scale c), each (D, n), >= fp32."""
    w = w.to(torch.promote_types(w.dtype, torch.float32))
    if weighting == "kv":
        return w, torch.zeros_like(w), w
    if weighting == "v":
        return torch.ones_like(w), torch.zeros_like(w), w
    if weighting == "logit":
        return torch.ones_like(w), w.log(), torch.ones_like(w)
    raise ValueError(f"chapter weighting {weighting!r} is not one of {WEIGHTINGS}")


def tiles_per_block(q_shape: torch.Size, n_keys: int, kv_width: int, block_elements: int) -> int:
    """How many tiles one block processes so that its scores plus its gathered keys and values (and
    their re-laid-out copies) hold <= block_elements entries. kv_width = Hkv * hd."""
    _, Qt, H, _ = q_shape
    per_tile = Qt * H * n_keys + 4 * n_keys * kv_width
    return max(1, block_elements // per_tile)


def _heads_first(x: torch.Tensor, kvh: int) -> torch.Tensor:
    """(Db, Qt, H, hd) -> (Db, Hkv, g * Qt, hd), query heads grouped under their KV head."""
    Db, Qt, H, hd = x.shape
    return x.view(Db, Qt, kvh, H // kvh, hd).permute(0, 2, 3, 1, 4).reshape(Db, kvh, -1, hd)


def _heads_last(x: torch.Tensor, Qt: int) -> torch.Tensor:
    """Inverse of :func:`_heads_first`: (Db, Hkv, g * Qt, hd) -> (Db, Qt, H, hd)."""
    Db, kvh, gQ, hd = x.shape
    return x.view(Db, kvh, gQ // Qt, Qt, hd).permute(0, 3, 1, 2, 4).reshape(Db, Qt, -1, hd)


def reads_by_chapter(q_shape: torch.Size, k_shape: torch.Size, n_selected: int) -> bool:
    """Whether the PyTorch loops run chapter-major for q (D, Qt, H, hd) reading n_selected of the
    k (U, T, Hkv, hd) chapters per tile: when tile-major loops would copy each chapter many times."""
    U, T, kvh, hd = k_shape
    return q_shape[0] * n_selected * T * kvh * hd >= CHAPTER_MAJOR_MIN_COPIES * U


class _ChapterPairs:
    """The (tile, chapter) pairs of idx (D, n) sorted by chapter: ``tile[i]`` is pair i's tile;
    ``blocks`` lists (chapter u, slice of the sorted pairs reading u), at most ``per_block`` pairs each;
    ``unsort`` puts per-pair values back in idx's (D * n) order."""

    def __init__(self, idx: torch.Tensor, n_chapters: int, per_block: int) -> None:
        flat = idx.reshape(-1)
        self.order = torch.argsort(flat, stable=True)
        self.tile = self.order // idx.shape[1]
        counts = torch.bincount(flat, minlength=n_chapters).tolist()
        self.blocks: list[tuple[int, slice]] = []  # (chapter, pairs) in blocks of <= per_block pairs
        start = 0
        for u, count in enumerate(counts):
            for s0 in range(start, start + count, per_block):
                self.blocks.append((u, slice(s0, min(start + count, s0 + per_block))))
            start += count

    def sorted(self, x: torch.Tensor) -> torch.Tensor:
        """(D, n) per-pair values -> (D * n,) in chapter order."""
        return x.reshape(-1)[self.order]

    def unsort(self, x: torch.Tensor) -> torch.Tensor:
        """(D * n,) or (Hkv, D * n, ...) in chapter order -> the same values in idx's order."""
        out = torch.empty_like(x)
        if x.dim() == 1:
            out[self.order] = x
        else:
            out[:, self.order] = x
        return out


def _pairs_per_block(q_shape: torch.Size, T: int, hd: int, block_elements: int) -> int:
    """Pairs one chapter-major block holds: scores and gathered queries <= block_elements entries."""
    _, Qt, H, _ = q_shape
    return max(1, block_elements // (Qt * H * (T + 2 * hd)))


def _kv_head_major(x: torch.Tensor, kvh: int) -> torch.Tensor:
    """(D, Qt, H, hd) -> (Hkv, D, gQ, hd): each KV head's queries, so that one chapter's product is a
    batched matmul over KV heads with no broadcast copy of the chapter."""
    return _heads_first(x, kvh).transpose(0, 1).contiguous()


def _forward_by_chapter(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    abc: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scale: float,
    block_elements: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter-major forward: (out (D, Qt, H, hd), lse (D, H, Qt)), as routed_read_forward_torch."""
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = idx.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    pairs = _ChapterPairs(idx, U, _pairs_per_block(q.shape, T, hd, block_elements))
    a, b, c = (pairs.sorted(x)[None, :, None, None] for x in abc)  # (1, D * n, 1, 1)
    qk = _kv_head_major(q, kvh)  # (Hkv, D, gQ, hd)
    gQ = qk.shape[2]
    m = q.new_empty(kvh, D * n, gQ, dtype=acc)  # each pair's log-sum-exp over its chapter alone
    o = q.new_empty(kvh, D * n, gQ, hd, dtype=acc)  # each pair's read of its chapter alone
    kt, vt = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)  # (U, Hkv, T, hd)
    for u, sl in pairs.blocks:
        qs = qk[:, pairs.tile[sl]].view(kvh, -1, hd)  # (Hkv, P * gQ, hd)
        s = torch.bmm(qs, kt[u].transpose(-1, -2)).to(acc).view(kvh, -1, gQ, T)
        s = s * (scale * a[:, sl]) + b[:, sl]
        mu = s.logsumexp(-1)
        p = (s - mu.masked_fill(mu == -math.inf, 0)[..., None]).exp()  # a chapter of weight 0: p = 0
        o[:, sl] = torch.bmm(p.to(v.dtype).view(kvh, -1, T), vt[u]).to(acc).view(kvh, -1, gQ, hd) * c[:, sl]
        m[:, sl] = mu
    m = pairs.unsort(m).view(kvh, D, n, gQ)
    lse = m.logsumexp(2)  # (Hkv, D, gQ): over all the tile's chapters
    share = (m - lse[:, :, None]).exp()  # each chapter's share of the tile's softmax
    out = (share[..., None] * pairs.unsort(o).view(kvh, D, n, gQ, hd)).sum(2)  # (Hkv, D, gQ, hd)
    out = _heads_last(out.transpose(0, 1).to(q.dtype), Qt).contiguous()
    return out, lse.transpose(0, 1).reshape(D, H, Qt).contiguous()


def _backward_by_chapter(
    do: torch.Tensor,
    q: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    abc: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scale: float,
    block_elements: int,
) -> tuple[torch.Tensor, ...]:
    """The chapter-major backward: (dq, dk, dv, da, db, dc), the same sums as the tile-major loops."""
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = idx.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    pairs = _ChapterPairs(idx, U, _pairs_per_block(q.shape, T, hd, block_elements))
    a, b, c = (pairs.sorted(x)[None, :, None, None] for x in abc)
    qk, dok = _kv_head_major(q, kvh), _kv_head_major(do, kvh)  # (Hkv, D, gQ, hd)
    gQ = qk.shape[2]
    lse = lse.reshape(D, kvh, gQ).transpose(0, 1)  # (Hkv, D, gQ)
    delta = (dok.to(acc) * _kv_head_major(out, kvh).to(acc)).sum(-1)  # (Hkv, D, gQ)
    kt, vt = k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)  # (U, Hkv, T, hd)
    dq = q.new_zeros(kvh, D, gQ, hd, dtype=acc)
    dk = torch.zeros(U, kvh, T, hd, dtype=acc, device=k.device)
    dv = torch.zeros(U, kvh, T, hd, dtype=acc, device=v.device)
    da, db, dc = (q.new_empty(D * n, dtype=acc) for _ in range(3))
    for u, sl in pairs.blocks:
        tiles = pairs.tile[sl]
        qs, dos = qk[:, tiles].view(kvh, -1, hd), dok[:, tiles].view(kvh, -1, hd)  # (Hkv, P * gQ, hd)
        r = torch.bmm(qs, kt[u].transpose(-1, -2)).to(acc).view(kvh, -1, gQ, T) * scale  # scaled raw scores
        a_p, c_p = a[:, sl], c[:, sl]
        p = (r * a_p + b[:, sl] - lse[:, tiles, :, None]).exp()
        dpc = torch.bmm(dos, vt[u].transpose(-1, -2)).to(acc).view(kvh, -1, gQ, T)  # d loss / d (p * c)
        dc[sl] = (dpc * p).sum((0, 2, 3))
        ds = p * (dpc * c_p - delta[:, tiles, :, None])  # d loss / d s (softmax backward)
        da[sl], db[sl] = (ds * r).sum((0, 2, 3)), ds.sum((0, 2, 3))
        dr = (ds * a_p * scale).to(q.dtype).view(kvh, -1, T)
        dq.index_add_(1, tiles, torch.bmm(dr, kt[u]).to(acc).view(kvh, -1, gQ, hd))
        dk[u] += torch.bmm(dr.transpose(-1, -2), qs).to(acc)  # summed over the chapter's queries
        dv[u] += torch.bmm((p * c_p).to(do.dtype).view(kvh, -1, T).transpose(-1, -2), dos).to(acc)
    da, db, dc = (pairs.unsort(x).view(D, n) for x in (da, db, dc))
    dk, dv = dk.transpose(1, 2).contiguous(), dv.transpose(1, 2).contiguous()  # (U, T, Hkv, hd) as k, v
    return _heads_last(dq.transpose(0, 1).to(q.dtype), Qt).contiguous(), dk, dv, da, db, dc


def _gather(kv: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """kv: (U, T, Hkv, hd), idx: (Db, n) -> (Db, Hkv, n * T, hd): one block's chapters (transient)."""
    Db, n = idx.shape
    _, T, kvh, hd = kv.shape
    return kv[idx].permute(0, 3, 1, 2, 4).reshape(Db, kvh, n * T, hd)


def _per_key(x: torch.Tensor, T: int) -> torch.Tensor:
    """(Db, n) per-chapter coefficient -> (Db, 1, 1, n * T) per key."""
    return x.repeat_interleave(T, dim=1)[:, None, None, :]


def _per_chapter(x: torch.Tensor, T: int) -> torch.Tensor:
    """(Db, Hkv, gQ, n * T) -> (Db, n): summed over heads, queries and the chapter's tokens."""
    Db = x.shape[0]
    return x.sum((1, 2)).view(Db, -1, T).sum(-1)


def routed_read_forward_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    by_chapter: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The read, blocked over tiles (or chapter-major: ``by_chapter``, None = :func:`reads_by_chapter`).
    Returns out (D, Qt, H, hd) in q's dtype and lse (D, H, Qt) (>= fp32)."""
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (fp64 stays fp64)
    a, b, c = chapter_coefficients(w, weighting)
    if reads_by_chapter(q.shape, k.shape, idx.shape[1]) if by_chapter is None else by_chapter:
        return _forward_by_chapter(q, k, v, idx, (a, b, c), scale, block_elements)
    out = q.new_empty(D, Qt, H, hd)
    lse = q.new_empty(D, kvh, (H // kvh) * Qt, dtype=acc)  # same memory order as (D, H, Qt)
    step = tiles_per_block(q.shape, idx.shape[1] * T, kvh * hd, block_elements)
    for d0 in range(0, D, step):
        d1 = min(D, d0 + step)
        qb, kb, vb = _heads_first(q[d0:d1], kvh), _gather(k, idx[d0:d1]), _gather(v, idx[d0:d1])
        s = torch.matmul(qb, kb.transpose(-1, -2)).to(acc) * (scale * _per_key(a[d0:d1], T))
        s = s + _per_key(b[d0:d1], T)
        m = s.logsumexp(-1)
        p = (s - m[..., None]).exp() * _per_key(c[d0:d1], T)
        out[d0:d1] = _heads_last(torch.matmul(p.to(vb.dtype), vb), Qt)
        lse[d0:d1] = m
    return out, lse.view(D, H, Qt)


def routed_read_backward_torch(
    do: torch.Tensor,
    q: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    by_chapter: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the read from the saved q, out, lse: (dq, dk, dv, dw), recomputing the scores.

    do: (D, Qt, H, hd); lse: (D, H, Qt). dk, dv are accumulated in >= fp32 over the tiles that read a chapter.
    ``by_chapter`` as in :func:`routed_read_forward_torch`.
    """
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    a, b, c = chapter_coefficients(w, weighting)
    if reads_by_chapter(q.shape, k.shape, idx.shape[1]) if by_chapter is None else by_chapter:
        dq, dk, dv, da, db, dc = _backward_by_chapter(
            do, q, out, lse, k, v, idx, (a, b, c), scale, block_elements
        )
        return dq, dk.to(k.dtype), dv.to(v.dtype), _chapter_weight_grad(w, weighting, da, db, dc)
    lse = lse.reshape(D, kvh, -1)
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc, device=v.device)
    da, db, dc = (torch.zeros_like(a) for _ in range(3))
    step = tiles_per_block(q.shape, idx.shape[1] * T, kvh * hd, block_elements)
    for d0 in range(0, D, step):
        d1 = min(D, d0 + step)
        ib = idx[d0:d1]
        qb, kb, vb = _heads_first(q[d0:d1], kvh), _gather(k, ib), _gather(v, ib)
        dob = _heads_first(do[d0:d1], kvh)
        delta = (dob.to(acc) * _heads_first(out[d0:d1], kvh).to(acc)).sum(-1, keepdim=True)
        a_k, c_k = _per_key(a[d0:d1], T), _per_key(c[d0:d1], T)
        r = torch.matmul(qb, kb.transpose(-1, -2)).to(acc) * scale  # scaled raw scores
        p = (r * a_k + _per_key(b[d0:d1], T) - lse[d0:d1, ..., None]).exp()
        pc = p * c_k
        dpc = torch.matmul(dob, vb.transpose(-1, -2)).to(acc)  # d loss / d (p * c)
        dc[d0:d1] = _per_chapter(dpc * p, T)
        ds = p * (dpc * c_k - delta)  # d loss / d s (softmax backward)
        da[d0:d1] = _per_chapter(ds * r, T)
        db[d0:d1] = _per_chapter(ds, T)
        dr = (ds * a_k * scale).to(qb.dtype)
        dq[d0:d1] = _heads_last(torch.matmul(dr, kb), Qt)
        n = ib.shape[1]

        def per_chapter_rows(x: torch.Tensor, n: int = n) -> torch.Tensor:
            # (Db, Hkv, n * T, hd) -> (Db * n, T, Hkv, hd), the layout of k/v rows
            return x.view(x.shape[0], kvh, n, T, hd).permute(0, 2, 3, 1, 4).reshape(-1, T, kvh, hd)

        dk.index_add_(0, ib.reshape(-1), per_chapter_rows(torch.matmul(dr.transpose(-1, -2), qb).to(acc)))
        dv.index_add_(
            0, ib.reshape(-1), per_chapter_rows(torch.matmul(pc.to(dob.dtype).transpose(-1, -2), dob).to(acc))
        )
    return dq, dk.to(k.dtype), dv.to(v.dtype), _chapter_weight_grad(w, weighting, da, db, dc)


def _chapter_weight_grad(
    w: torch.Tensor, weighting: str, da: torch.Tensor, db: torch.Tensor, dc: torch.Tensor
) -> torch.Tensor:
    """d loss / d w (D, n) from the gradients of the chapter coefficients (a, b, c)."""
    if weighting == "kv":
        dw = da + dc
    elif weighting == "v":
        dw = dc
    else:
        dw = db / w.to(da.dtype)
    return dw.to(w.dtype)


def gathered_read(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float | None = None,
) -> torch.Tensor:
    """The read as plain differentiable ops on all tiles at once: q (D, Qt, H, hd), k/v (U, T, Hkv, hd),
    idx/w (D, n) -> out (D, Qt, H, hd).

    It exists for ``torch.compile`` on the CPU: the compiler turns these broadcast products and sums into
    a few fused loops that read the chapters by index, several times faster than the blocked loops (or a
    batched matmul of tiny matrices) for the small, token-routed reads of toy models. Autograd keeps the
    gathered chapters and the probabilities (D x n*T x (Hkv*hd*2 + H*Qt) entries), which
    :class:`RoutedRead` never does, so the model uses it only for reads that small. Run eagerly it is
    correct but slow: the products are materialised.
    """
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    a, b, c = chapter_coefficients(w, weighting)
    # (D, 1, Hkv, 1, n*T, hd): each tile's chapters, key-major, under its KV head
    kb = k[idx].reshape(D, -1, kvh, hd).transpose(1, 2)[:, None, :, None]
    vb = v[idx].reshape(D, -1, kvh, hd).transpose(1, 2)[:, None, :, None]
    qh = q.view(D, Qt, kvh, H // kvh, 1, hd)  # query heads grouped under their KV head

    def per_key(x: torch.Tensor) -> torch.Tensor:  # (D, n) -> (D, 1, 1, 1, n*T)
        return x.repeat_interleave(T, dim=1)[:, None, None, None, :]

    s = (qh * kb).sum(-1).to(a.dtype) * (scale * per_key(a))  # (D, Qt, Hkv, g, n*T)
    if weighting == "logit":
        s = s + per_key(b)
    p = s.softmax(-1)
    if weighting != "logit":
        p = p * per_key(c)
    out = (p.to(vb.dtype)[..., None] * vb).sum(-2)  # (D, Qt, Hkv, g, hd)
    return out.reshape(D, Qt, H, hd)


class RoutedRead(torch.autograd.Function):
    """out = routed read of q into ``kv_fn(*kv_inputs)`` (see the module docstring); saves q, out, lse.

    ``kv_fn`` maps ``kv_inputs`` (tensors: bank rows' source, W_K, W_V, chapter ids, ...) to
    ``(k, v)`` of shape (U, T, Hkv, hd). Backward recomputes them and backpropagates into kv_inputs.
    ``forward_impl`` computes (out, lse) from (q, k, v, idx, w, weighting, scale) and ``backward_impl``
    (dq, dk, dv, dw) from (do, q, out, lse, k, v, idx, w, weighting, scale): the blocked PyTorch loops
    when None, or the Triton kernels on CUDA.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        idx: torch.Tensor,
        w: torch.Tensor,
        weighting: str,
        scale: float,
        block_elements: int,
        forward_impl: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None,
        backward_impl: Callable[..., tuple[torch.Tensor, ...]] | None,
        kv_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        *kv_inputs: torch.Tensor,
    ) -> torch.Tensor:
        k, v = kv_fn(*kv_inputs)
        if forward_impl is None:
            out, lse = routed_read_forward_torch(q, k, v, idx, w, weighting, scale, block_elements)
        else:
            out, lse = forward_impl(q, k, v, idx, w, weighting, scale)
        del k, v  # recomputed in backward: never saved
        ctx.save_for_backward(q, idx, w, out, lse, *kv_inputs)
        ctx.cfg = (weighting, scale, block_elements, kv_fn, backward_impl)
        device = q.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return out

    @staticmethod
    def backward(ctx: Any, do: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, idx, w, out, lse, *kv_inputs = ctx.saved_tensors
        weighting, scale, block_elements, kv_fn, backward_impl = ctx.cfg
        device, autocast_on, autocast_dtype = ctx.autocast
        wants = ctx.needs_input_grad[9:]
        leaves = [t.detach().requires_grad_(bool(g)) for t, g in zip(kv_inputs, wants)]
        with torch.enable_grad(), torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            k, v = kv_fn(*leaves)
        args = (do.contiguous(), q, out, lse, k.detach(), v.detach(), idx, w, weighting, scale)
        if backward_impl is None:
            dq, dk, dv, dw = routed_read_backward_torch(*args, block_elements)
        else:
            dq, dk, dv, dw = backward_impl(*args)
        need = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad((k, v), need, (dk, dv), allow_unused=True) if need else ())
        kv_grads = [next(grads) if t.requires_grad else None for t in leaves]
        dw_out = dw if ctx.needs_input_grad[2] else None
        return (dq, None, dw_out, None, None, None, None, None, None, *kv_grads)


def routed_read(
    q: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    kv_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    kv_inputs: tuple[torch.Tensor, ...],
    weighting: str = "kv",
    scale: float | None = None,
    block_elements: int | None = None,
    forward_impl: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    backward_impl: Callable[..., tuple[torch.Tensor, ...]] | None = None,
) -> torch.Tensor:
    """q: (D, Qt, H, hd), idx/w: (D, n), kv_fn(*kv_inputs) -> k, v (U, T, Hkv, hd) => out (D, Qt, H, hd)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"chapter weighting {weighting!r} is not one of {WEIGHTINGS}")
    if idx.shape != w.shape or idx.shape[0] != q.shape[0]:
        raise ValueError(
            f"idx {tuple(idx.shape)} and w {tuple(w.shape)} must both be (tiles={q.shape[0]}, n_selected)"
        )
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if block_elements is None:
        block_elements = default_block_elements(q)
    return RoutedRead.apply(
        q, idx, w, weighting, scale, block_elements, forward_impl, backward_impl, kv_fn, *kv_inputs
    )
