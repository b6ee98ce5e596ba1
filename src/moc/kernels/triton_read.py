"""Triton kernels of the routed memory read (CUDA fast path; see ``routed_read`` for the maths).

A read is a set of (query tile, selected chapter) *pairs*: tile d reads chapters idx[d, 0..n-1]. Two
layouts of the work:

- **Chapter-grouped** (``layout="grouped"``, every small tile: token and causal routing). The pairs are
  sorted by chapter (a stable sort: the same order on every run) and cut into *work items* of
  ``BLOCK_M`` query rows that read the same chapter, so one program streams a chapter's keys and values
  once for up to ``BLOCK_M`` queries, whichever tiles they come from (token routing: ``BLOCK_M`` tokens
  that picked the chapter, instead of one token per program padded to 16 rows). The forward writes a
  partial output and log-sum-exp per pair, merged per query by log-sum-exp.
- **Per tile** (``layout="tiles"``, large tiles: sequence routing's document pieces): one program per
  (tile, head, block of the tile's queries) loops over the tile's chapters with an online softmax.

The backward always uses the chapter-grouped layout and no atomics: each work item writes its own
partial dK/dV (reduced per chapter in a fixed order by ``_segment_sum``), its own rows of dq and of the
per-pair weight gradients (summed by PyTorch). Two backward runs give bit-identical gradients.

Logits are kept in base 2 inside the kernels (``exp2``), chapter lengths are compile-time constants,
and a pair whose logit bias is -inf (the "logit" weighting of a zero weight) contributes nothing
instead of NaN. Tested against the PyTorch path on the CPU with ``TRITON_INTERPRET=1``
(tests/kernels) in fp32 and fp16.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moc.kernels.routed_read import chapter_coefficients

LOG2E = 1.4426950408889634
GROUPED_MAX_TILE = 16  # tiles of fewer queries than this use the chapter-grouped forward
ROWS_PER_WORK = 64  # query rows of one grouped work item on a GPU (16 in the interpreter)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------------------
# The chapter-grouped layout (PyTorch on the device, no host sync)
# --------------------------------------------------------------------------------------------------


@dataclass
class ChapterGroups:
    """The pairs of a read grouped by chapter and cut into work items.

    pairs:        (P,) pair ids (tile * n + slot), sorted by chapter, stable
    seg_start:    (U + 1,) the pairs of chapter u are ``pairs[seg_start[u]:seg_start[u + 1]]``
    work_start:   (U + 1,) the work items of chapter u are ``work_start[u]:work_start[u + 1]``
    work_chapter: (W,) each work item's chapter, -1 for the unused tail (W is a bound from shapes)
    work_row:     (W,) each work item's first row among its chapter's rows (pair * Qt + query)
    """

    pairs: torch.Tensor
    seg_start: torch.Tensor
    work_start: torch.Tensor
    work_chapter: torch.Tensor
    work_row: torch.Tensor


def chapter_groups(idx: torch.Tensor, n_chapters: int, tile_len: int, rows_per_work: int) -> ChapterGroups:
    """idx: (D, n) chapter rows in [0, n_chapters) -> the grouped layout (see :class:`ChapterGroups`)."""
    flat = idx.reshape(-1).long()
    order = torch.sort(flat, stable=True)
    dev = flat.device
    seg_start = torch.searchsorted(order.values, torch.arange(n_chapters + 1, device=dev))
    rows = (seg_start[1:] - seg_start[:-1]) * tile_len
    blocks = (rows + rows_per_work - 1) // rows_per_work
    work_start = torch.cat([blocks.new_zeros(1), blocks.cumsum(0)])
    n_work = triton.cdiv(flat.numel() * tile_len, rows_per_work) + n_chapters  # >= sum(blocks)
    w = torch.arange(n_work, device=dev)
    chapter = torch.searchsorted(work_start[1:], w, right=True)
    inside = chapter < n_chapters
    chapter = chapter.clamp(max=n_chapters - 1)
    row = (w - work_start[chapter]) * rows_per_work
    i32 = torch.int32
    return ChapterGroups(
        order.indices.to(i32),
        seg_start.to(i32),
        work_start.to(i32),
        torch.where(inside, chapter, -1).to(i32),
        row.to(i32),
    )


def chapter_loads(
    idx: torch.Tensor, n_chapters: int, tile_len: int, layout: str, block: int = ROWS_PER_WORK
) -> int:
    """How many times one query head's programs load a chapter's keys and values: ``tiles`` loads each
    tile's chapters once per block of ``block`` queries; ``grouped`` each chapter once per work item of
    ``block`` rows. Times T x hd x 2 x bytes per element, the K/V bytes a forward reads."""
    if layout == "tiles":
        return idx.numel() * triton.cdiv(tile_len, block)
    return int(chapter_groups(idx, n_chapters, tile_len, block).work_start[-1])


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _rows_of_work(PAIRS, SEG, WORK_CH, WORK_ROW, work, n_queries, n_sel, BLOCK_M: tl.constexpr):
    """A work item's chapter and its rows: (chapter, live, pair, query-in-tile, tile), rows of BLOCK_M."""
    chapter = tl.load(WORK_CH + work)
    used = chapter >= 0  # the tail of the work list (a bound from shapes) holds no rows
    chapter = tl.maximum(chapter, 0)
    seg0 = tl.load(SEG + chapter)
    seg1 = tl.load(SEG + chapter + 1)
    rows = tl.load(WORK_ROW + work) + tl.arange(0, BLOCK_M)
    live = rows < tl.where(used, (seg1 - seg0) * n_queries, 0)
    pair = tl.load(PAIRS + seg0 + rows // n_queries, mask=live, other=0)
    return chapter, live, pair, rows % n_queries, pair // n_sel


def _autotuned(kernel: triton.JITFunction) -> triton.JITFunction:
    """``kernel`` autotuned over warps and pipeline stages (per chapter length, head size and tile
    length); as it is in Triton's interpreter, where there is nothing to time. Every tuned kernel
    writes each output once, so the autotuner's repeated launches are harmless."""
    if _interpreting():
        return kernel
    configs = [triton.Config({}, num_warps=w, num_stages=st) for w in (4, 8) for st in (2, 3)]
    return triton.autotune(configs=configs, key=["T", "HEAD_DIM", "n_queries"])(kernel)


@triton.jit
def _read_chapter(q, K, V, base, stride_kt, offs_d, d_in, a, b, c, m_i, l_i, acc,
                  T: tl.constexpr, BLOCK_T: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """One chapter into a running online softmax: base-2 logits s = a (q . k) + b over the chapter's T
    keys at ``base``, values scaled by c; a, b, c per query row (BLOCK, 1) or one per chapter."""
    offs_t = tl.arange(0, BLOCK_T)
    for t0 in tl.range(0, T, BLOCK_T):
        t = t0 + offs_t
        t_in = t < T
        kv_off = base + t[:, None] * stride_kt + offs_d[None, :]
        kv_mask = t_in[:, None] & d_in[None, :]
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * a + b
        s = tl.where(t_in[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a -inf bias: nothing, not NaN
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot((p * c).to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _normalise(acc, m_i, l_i):
    """(output rows, natural log-sum-exp) of a finished online softmax; a row that read nothing: 0, -inf."""
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    return out, tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) * 0.6931471805599453, float("-inf"))


@_autotuned
@triton.jit
def _grouped_fwd(
    Q, K, V, PAIRS, SEG, WORK_CH, WORK_ROW, A, BIAS, C, OP, LSEP,
    stride_qd, stride_qt, stride_qh, stride_ku, stride_kt, stride_kh,
    n_queries, n_sel, group, n_heads, scale,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program per (work item, query head): BLOCK_M query rows that read one chapter.
    work = tl.program_id(0)
    head = tl.program_id(1)
    chapter, live, pair, qi, tile = _rows_of_work(
        PAIRS, SEG, WORK_CH, WORK_ROW, work, n_queries, n_sel, BLOCK_M
    )
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    q_row = tile.to(tl.int64) * stride_qd + qi * stride_qt + head * stride_qh
    q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=live[:, None] & d_in[None, :], other=0.0)
    a = tl.load(A + pair, mask=live, other=1.0) * (scale * 1.4426950408889634)  # base-2 logits
    b = tl.load(BIAS + pair, mask=live, other=0.0) * 1.4426950408889634
    c = tl.load(C + pair, mask=live, other=0.0)
    base = chapter.to(tl.int64) * stride_ku + (head // group) * stride_kh
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    m_i, l_i, acc = _read_chapter(
        q, K, V, base, stride_kt, offs_d, d_in, a[:, None], b[:, None], c[:, None], m_i, l_i, acc,
        T, BLOCK_T, PRECISION,
    )  # fmt: skip
    out, lse = _normalise(acc, m_i, l_i)
    o_row = (pair.to(tl.int64) * n_queries + qi) * (n_heads * HEAD_DIM) + head * HEAD_DIM
    tl.store(OP + o_row[:, None] + offs_d[None, :], out, mask=live[:, None] & d_in[None, :])
    tl.store(LSEP + (pair.to(tl.int64) * n_heads + head) * n_queries + qi, lse, mask=live)


@_autotuned
@triton.jit
def _tiles_fwd(
    Q, K, V, IDX, A, BIAS, C, O, LSE,
    stride_qd, stride_qt, stride_qh, stride_ku, stride_kt, stride_kh,
    n_queries, n_sel, group, n_heads, scale,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program per (query tile, head, block of the tile's queries), an online softmax over the
    # tile's chapters.
    tile = tl.program_id(0)
    head = tl.program_id(1)
    offs_q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    q_mask = (offs_q[:, None] < n_queries) & d_in[None, :]
    q_off = tile.to(tl.int64) * stride_qd + offs_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    m_i = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for j in range(0, n_sel):
        chapter = tl.load(IDX + tile * n_sel + j).to(tl.int64)
        a = tl.load(A + tile * n_sel + j) * (scale * 1.4426950408889634)
        b = tl.load(BIAS + tile * n_sel + j) * 1.4426950408889634
        c = tl.load(C + tile * n_sel + j)
        base = chapter * stride_ku + (head // group) * stride_kh
        m_i, l_i, acc = _read_chapter(
            q, K, V, base, stride_kt, offs_d, d_in, a, b, c, m_i, l_i, acc, T, BLOCK_T, PRECISION
        )
    out, lse = _normalise(acc, m_i, l_i)
    tl.store(O + q_off, out.to(O.dtype.element_ty), mask=q_mask)
    tl.store(LSE + (tile.to(tl.int64) * n_heads + head) * n_queries + offs_q, lse, mask=offs_q < n_queries)


@_autotuned
@triton.jit
def _grouped_bwd(
    Q, K, V, DO, LSE, DELTA, PAIRS, SEG, WORK_CH, WORK_ROW, A, BIAS, C,
    DQP, DKP, DVP, DWP,
    stride_qd, stride_qt, stride_qh, stride_ku, stride_kt, stride_kh,
    n_queries, n_sel, group, n_heads, n_kv_heads, scale,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, ROW_BLOCKS: tl.constexpr, WEIGHTING: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program per (work item, KV head, block of the chapter's tokens). A work item is ROW_BLOCKS x
    # BLOCK_M rows reading one chapter. It recomputes the probabilities from the log-sum-exp for every
    # query head of its KV head and writes, each to its own place (no atomics): its partial dK, dV
    # (DKP, DVP: (W, T, Hkv, hd)), its rows' dq (DQP: (P, Qt, H, T blocks, hd)) and their share of the
    # chapter-weight gradient (DWP: (P, Qt, Hkv, T blocks)).
    work = tl.program_id(0)
    kv_head = tl.program_id(1)
    tb = tl.program_id(2)
    n_tb = tl.num_programs(2)
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_in = t < T
    kv_mask = t_in[:, None] & d_in[None, :]
    chapter = tl.load(WORK_CH + work)
    used = chapter >= 0  # the tail of the work list (a bound from shapes) holds no rows
    chapter = tl.maximum(chapter, 0)
    kv_off = chapter.to(tl.int64) * stride_ku + kv_head * stride_kh + t[:, None] * stride_kt + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    seg0 = tl.load(SEG + chapter)
    n_rows = tl.where(used, (tl.load(SEG + chapter + 1) - seg0) * n_queries, 0)
    row0 = tl.load(WORK_ROW + work)
    for rb in range(ROW_BLOCKS):
        rows = row0 + rb * BLOCK_M + tl.arange(0, BLOCK_M)
        live = rows < n_rows
        pair = tl.load(PAIRS + seg0 + rows // n_queries, mask=live, other=0)
        qi = rows % n_queries
        tile = pair // n_sel
        a = tl.load(A + pair, mask=live, other=0.0)
        b = tl.load(BIAS + pair, mask=live, other=0.0)
        c = tl.load(C + pair, mask=live, other=0.0)
        dw = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for hh in range(group):
            head = kv_head * group + hh
            q_row = tile.to(tl.int64) * stride_qd + qi * stride_qt + head * stride_qh
            rd_mask = live[:, None] & d_in[None, :]
            q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=rd_mask, other=0.0)
            do = tl.load(DO + q_row[:, None] + offs_d[None, :], mask=rd_mask, other=0.0)
            lrow = (tile.to(tl.int64) * n_heads + head) * n_queries + qi
            lse = tl.load(LSE + lrow, mask=live, other=0.0)
            delta = tl.load(DELTA + lrow, mask=live, other=0.0)
            keep = live[:, None] & t_in[None, :] & (lse[:, None] > float("-inf"))
            r = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
            p = tl.where(
                keep, tl.exp2((r * a[:, None] + b[:, None] - lse[:, None]) * 1.4426950408889634), 0.0
            )
            dpc = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
            ds = p * (dpc * c[:, None] - delta[:, None])
            if WEIGHTING == "kv":  # d/dw of a = c = w
                dw += tl.sum(ds * r + dpc * p, 1)
            elif WEIGHTING == "v":  # c = w
                dw += tl.sum(dpc * p, 1)
            else:  # b = log w: d/dw = (d/db) / w, computed without the 0 / 0 of a zero weight
                pw = tl.where(keep, tl.exp2((r - lse[:, None]) * 1.4426950408889634), 0.0)
                dw += tl.sum(pw * (dpc - delta[:, None]), 1)
            dr = ds * (a[:, None] * scale)
            dq = tl.dot(dr.to(k.dtype), k, input_precision=PRECISION)
            dq_row = ((pair.to(tl.int64) * n_queries + qi) * n_heads + head) * n_tb + tb
            tl.store(DQP + dq_row[:, None] * HEAD_DIM + offs_d[None, :], dq, mask=rd_mask)
            dk += tl.dot(tl.trans(dr.to(q.dtype)), q, input_precision=PRECISION).to(tl.float32)
            dv += tl.dot(tl.trans((p * c[:, None]).to(do.dtype)), do, input_precision=PRECISION).to(
                tl.float32
            )
        dw_row = ((pair.to(tl.int64) * n_queries + qi) * n_kv_heads + kv_head) * n_tb + tb
        tl.store(DWP + dw_row, dw, mask=live)
    p_off = (
        (work.to(tl.int64) * T + t[:, None]) * (n_kv_heads * HEAD_DIM) + kv_head * HEAD_DIM + offs_d[None, :]
    )
    tl.store(DKP + p_off, dk, mask=kv_mask)
    tl.store(DVP + p_off, dv, mask=kv_mask)


@triton.jit
def _segment_sum(X, OUT, START, n_elems, BLOCK: tl.constexpr):
    # OUT[u] = sum of X[START[u]:START[u + 1]] in index order (deterministic), each row n_elems long.
    u = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elems
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    start = tl.load(START + u).to(tl.int64)
    for i in range(0, tl.load(START + u + 1) - tl.load(START + u)):
        acc += tl.load(X + (start + i) * n_elems + offs, mask=mask, other=0.0)
    tl.store(OUT + u.to(tl.int64) * n_elems + offs, acc, mask=mask)


# --------------------------------------------------------------------------------------------------
# Launchers: same contracts as routed_read_forward_torch / routed_read_backward_torch
# --------------------------------------------------------------------------------------------------


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    p = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return p if hi is None else min(p, hi)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs stay fp32 (no TF32 rounding), so fp32 training matches the PyTorch path.
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_m() -> int:
    return 16 if _interpreting() else ROWS_PER_WORK


def _coefficients(w: torch.Tensor, weighting: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b, c = chapter_coefficients(w, weighting)
    return a.float().contiguous(), b.float().contiguous(), c.float().contiguous()


def unsupported(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the kernels cannot run on these tensors (None: they can)."""
    if not (q.is_cuda or _interpreting()):
        return "tensors are not on a CUDA device"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        return f"dtype {q.dtype} / {k.dtype} (the kernels take matching fp16, bf16 or fp32)"
    if q.shape[-1] > 256:
        return f"head size {q.shape[-1]} > 256"
    return None


def pick_layout(tile_len: int) -> str:
    """The forward's layout for tiles of ``tile_len`` queries (see the module docstring)."""
    return "grouped" if tile_len < GROUPED_MAX_TILE else "tiles"


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
    layout: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q (D, Qt, H, hd), k/v (U, T, Hkv, hd), idx/w (D, n) -> out (D, Qt, H, hd), lse (D, H, Qt) fp32."""
    layout = layout or pick_layout(q.shape[1])
    a, b, c = _coefficients(w, weighting)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = idx.shape[1]
    meta = {
        "T": T,
        "HEAD_DIM": hd,
        "BLOCK_T": _pow2(T, hi=64),
        "BLOCK_D": _pow2(hd),
        "PRECISION": _precision(q.dtype),
    }
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))
    if layout == "tiles":
        out = torch.empty_like(q)
        lse = torch.empty(D, H, Qt, dtype=torch.float32, device=q.device)
        block_q = _pow2(Qt, hi=64)
        grid = (D, H, triton.cdiv(Qt, block_q))
        idx32 = idx.to(torch.int32).contiguous()
        _tiles_fwd[grid](
            q, k, v, idx32, a, b, c, out, lse, *strides, Qt, n, H // kvh, H, scale, BLOCK_Q=block_q, **meta
        )
        return out, lse
    block_m = _block_m()
    g = chapter_groups(idx, U, Qt, block_m)
    part = torch.empty(D * n, Qt, H, hd, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(D * n, H, Qt, dtype=torch.float32, device=q.device)
    grid = (g.work_chapter.numel(), H)
    _grouped_fwd[grid](
        q, k, v, g.pairs, g.seg_start, g.work_chapter, g.work_row, a, b, c, part, part_lse,
        *strides, Qt, n, H // kvh, H, scale, BLOCK_M=block_m, **meta,
    )  # fmt: skip
    return merge_partials(part.view(D, n, Qt, H, hd), part_lse.view(D, n, H, Qt), q.dtype)


def merge_partials(
    part: torch.Tensor, part_lse: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """part (D, n, Qt, H, hd), part_lse (D, n, H, Qt): each pair's softmax-normalised output and
    log-sum-exp -> the tile's (out (D, Qt, H, hd) in ``dtype``, lse (D, H, Qt))."""
    lse = torch.logsumexp(part_lse, dim=1)
    coef = torch.exp(part_lse - lse[:, None]).nan_to_num(0.0)  # a tile that read nothing: 0, not NaN
    out = (coef.permute(0, 1, 3, 2)[..., None] * part).sum(1)
    return out.to(dtype), lse


def backward(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, dw) of the read, deterministic (no atomics); contract of the PyTorch one."""
    a, b, c = _coefficients(w, weighting)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    do = do.to(q.dtype).contiguous()
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = idx.shape[1]
    # delta = do . out per query, the softmax backward's row term, laid out like lse: (D, H, Qt)
    delta = (do.float() * out.float()).sum(-1).transpose(1, 2).contiguous()
    block_m, row_blocks = _block_m(), 1 if _interpreting() else 4
    block_t = _pow2(T, hi=64)
    n_tb = triton.cdiv(T, block_t)
    g = chapter_groups(idx, U, Qt, block_m * row_blocks)
    W = g.work_chapter.numel()
    f32 = {"dtype": torch.float32, "device": q.device}
    dq_part = torch.empty(D * n, Qt, H, n_tb, hd, **f32)
    dk_part = torch.empty(W, T, kvh, hd, **f32)
    dv_part = torch.empty(W, T, kvh, hd, **f32)
    dw_part = torch.empty(D * n, Qt, kvh, n_tb, **f32)
    _grouped_bwd[(W, kvh, n_tb)](
        q, k, v, do, lse.contiguous(), delta, g.pairs, g.seg_start, g.work_chapter, g.work_row, a, b, c,
        dq_part, dk_part, dv_part, dw_part,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        Qt, n, H // kvh, H, kvh, scale,
        T=T, HEAD_DIM=hd, BLOCK_M=block_m, BLOCK_T=block_t, BLOCK_D=_pow2(hd), ROW_BLOCKS=row_blocks,
        WEIGHTING=weighting, PRECISION=_precision(q.dtype),
    )  # fmt: skip
    dk, dv = (_sum_per_chapter(x, g.work_start, U) for x in (dk_part, dv_part))
    dq = dq_part.sum(3).view(D, n, Qt, H, hd).sum(1)
    dw = dw_part.view(D, n, -1).sum(-1)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dw.to(w.dtype)


def _sum_per_chapter(part: torch.Tensor, work_start: torch.Tensor, n_chapters: int) -> torch.Tensor:
    """part (W, ...) per work item -> (n_chapters, ...): each chapter's work items summed in order."""
    out = torch.empty(n_chapters, *part.shape[1:], dtype=part.dtype, device=part.device)
    n_elems = part[0].numel()
    block = 1024
    _segment_sum[(n_chapters, triton.cdiv(n_elems, block))](part, out, work_start, n_elems, BLOCK=block)
    return out
