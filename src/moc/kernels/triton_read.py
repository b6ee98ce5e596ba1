"""Triton kernels of the routed memory read (CUDA fast path; see ``routed_read`` for the maths).

A read is a set of (query tile, selected chapter) *pairs*: tile d reads chapters idx[d, 0..n-1]. Two
layouts of the forward:

- **Chapter-grouped** (``layout="grouped"``, tiles of fewer than ``GROUPED_MAX_TILE`` queries: token
  routing, short causal chunks). The pairs are sorted by chapter (a stable sort: the same order on every
  run); each chapter's query rows are cut into *work items* of at most ``rows_per_item`` rows. One
  program per (work item, head) loads its chapter's keys and values once and streams the item's rows
  past them in blocks of ``BLOCK_M``, whichever tiles they come from, writing each pair's normalised
  partial output and log-sum-exp; ``_merge`` combines a query's partials by log-sum-exp straight into
  the output (no second buffer of the partials' size).
- **Per tile** (``layout="tiles"``, larger tiles: sequence routing's document pieces, causal chunks):
  one program per (tile, head, block of the tile's queries) loops over the tile's chapters with an
  online softmax; nothing per pair is stored.

The **backward** is chapter-grouped for every layout, FlashAttention-2 style on the key side: one
program per (work item, KV head, block of the chapter's tokens) owns that block of the chapter's keys
and values, recomputes the probabilities of the item's rows from the saved log-sum-exp and accumulates
dK, dV in registers over all of them. A chapter with a single work item (almost all of them) writes its
dK, dV directly; the few chapters split over several items (the shared chapter, read by every query)
write one fp32 slot per item, summed in item order by ``_finish_kv``, which also zeroes unread chapters.
Each pair's share of dq goes to a per-pair buffer in the compute dtype's range (bf16 for bf16 inputs,
else fp32) and is summed over the query's chapters in a fixed order. No atomics anywhere: two backward
runs give bit-identical gradients (for one autotuned config: the autotuner picks per process).

Per-pair buffers (the forward's partials, the backward's dq shares) are the only temporaries that grow
with the pairs; both layouts process the heads in groups so that they stay under ``TEMP_BUDGET`` bytes
(heads are independent, so a group costs no extra loads). Work items with nothing to do (the tail of
the work list, a bound from shapes; the row blocks past a chapter's last row) return at once.

Logits are kept in base 2 inside the kernels (``exp2``), chapter lengths are compile-time constants,
and a pair whose logit bias is -inf (the "logit" weighting of a zero weight) contributes nothing
instead of NaN; a query whose every chapter weight is zero reads nothing: output 0, log-sum-exp -inf,
zero gradients. Tested against an independent float64 read on the CPU with ``TRITON_INTERPRET=1``
(tests/kernels) in fp32 and fp16; compiled ahead of time for sm_80 and sm_90a by ``moc.kernels.aot``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

from moc.kernels.routed_read import chapter_coefficients

LOG2E = 1.4426950408889634
GROUPED_MAX_TILE = 16  # tiles of fewer queries than this use the chapter-grouped forward
BLOCK_M_FWD = 64  # query rows per block in the grouped forward on a GPU (16 in the interpreter)
BLOCK_M_BWD = 16  # query rows per block in the backward: 32 or 64 spill on sm_80 (see CONFIGS)
ITEM_BLOCKS = 64  # row blocks of BLOCK_M_FWD per work item on a GPU (2 in the interpreter, to split)
TEMP_BUDGET = 512 * 2**20  # bytes of per-pair buffers one head group may hold (see heads_per_group)
MAX_HEAD_DIM = 128  # the largest head size every autotune config compiles for without spilling


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


# --------------------------------------------------------------------------------------------------
# Allocation log: what the launchers allocate, for moc.kernels.traffic's count (no effect otherwise)
# --------------------------------------------------------------------------------------------------

_ALLOCATIONS: list[list[tuple[str, int]]] = []


@contextmanager
def record_allocations() -> Iterator[list[tuple[str, int]]]:
    """Within the block, every temporary the launchers allocate is logged as (name, bytes)."""
    log: list[tuple[str, int]] = []
    _ALLOCATIONS.append(log)
    try:
        yield log
    finally:
        _ALLOCATIONS.pop()


def _empty(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device=device)
    for log in _ALLOCATIONS:
        log.append((name, t.numel() * t.element_size()))
    return t


_LAUNCHES: list[list[tuple[str, tuple[int, ...], dict[str, Any]]]] = []


@contextmanager
def record_launches() -> Iterator[list[tuple[str, tuple[int, ...], dict[str, Any]]]]:
    """Within the block, kernel launches are logged as (kernel name, grid, arguments by name) and not
    run: with meta tensors for the data, the launchers then only plan (moc.kernels.traffic counts)."""
    log: list[tuple[str, tuple[int, ...], dict[str, Any]]] = []
    _LAUNCHES.append(log)
    try:
        yield log
    finally:
        _LAUNCHES.pop()


def _jit(kernel: Any) -> triton.JITFunction:
    """The JIT function of a kernel, under its autotuner if it has one."""
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    if _LAUNCHES:
        fn = _jit(kernel)
        _LAUNCHES[-1].append((fn.__name__, grid, dict(zip(fn.arg_names, args)) | kwargs))
        return
    kernel[grid](*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# The chapter-grouped layout (PyTorch on the device, no host sync)
# --------------------------------------------------------------------------------------------------


@dataclass
class ChapterGroups:
    """The pairs of a read grouped by chapter and cut into work items of <= ``rows_per_item`` rows.

    pairs:        (P,) pair ids (tile * n + slot), sorted by chapter, stable
    seg_start:    (U + 1,) the pairs of chapter u are ``pairs[seg_start[u]:seg_start[u + 1]]``
    work_start:   (U + 1,) the work items of chapter u are ``work_start[u]:work_start[u + 1]``
    work_chapter: (W,) each work item's chapter, -1 for the unused tail (W is a bound from shapes)
    work_row:     (W,) each work item's first row among its chapter's rows (pair * Qt + query)
    work_slot:    (W,) for an item of a chapter split over several items, its fp32 slot of partial dK/dV
                  (the chapter's slots are consecutive, in item order); -1 for a chapter's only item
    slot_start:   (U,) the first slot of chapter u (meaningful where it has several items)
    n_slots:      a bound from shapes on the slots used (>= 1)
    """

    pairs: torch.Tensor
    seg_start: torch.Tensor
    work_start: torch.Tensor
    work_chapter: torch.Tensor
    work_row: torch.Tensor
    work_slot: torch.Tensor
    slot_start: torch.Tensor
    rows_per_item: int
    n_slots: int


def chapter_groups(idx: torch.Tensor, n_chapters: int, tile_len: int, rows_per_item: int) -> ChapterGroups:
    """idx: (D, n) chapter rows in [0, n_chapters) -> the grouped layout (see :class:`ChapterGroups`).

    Every length is a bound from shapes (no host sync): W = cdiv(P * Qt, rows_per_item) + U items, and
    2 * cdiv(P * Qt, rows_per_item) slots (a chapter of r > R rows has ceil(r / R) < 2 r / R items)."""
    flat = idx.reshape(-1).long()
    order = torch.sort(flat, stable=True)
    dev = flat.device
    seg_start = torch.searchsorted(order.values, torch.arange(n_chapters + 1, device=dev))
    rows = (seg_start[1:] - seg_start[:-1]) * tile_len
    items = (rows + rows_per_item - 1) // rows_per_item
    work_start = torch.cat([items.new_zeros(1), items.cumsum(0)])
    total_rows = flat.numel() * tile_len
    n_work = triton.cdiv(total_rows, rows_per_item) + n_chapters
    w = torch.arange(n_work, device=dev)
    chapter = torch.searchsorted(work_start[1:], w, right=True)
    inside = chapter < n_chapters
    chapter = chapter.clamp(max=n_chapters - 1)
    first = work_start[chapter]
    split = items > 1
    slots = torch.where(split, items, 0)
    slot_start = slots.cumsum(0) - slots
    slot = torch.where(inside & split[chapter], slot_start[chapter] + w - first, -1)
    i32 = torch.int32
    return ChapterGroups(
        order.indices.to(i32),
        seg_start.to(i32),
        work_start.to(i32),
        torch.where(inside, chapter, -1).to(i32),
        ((w - first) * rows_per_item).to(i32),
        slot.to(i32),
        slot_start.to(i32),
        rows_per_item,
        max(1, 2 * triton.cdiv(total_rows, rows_per_item)),
    )


def fwd_blocks() -> tuple[int, int]:
    """(BLOCK_M, rows per work item) of the grouped forward and of the backward's work list."""
    if _interpreting():
        return 16, 32
    return BLOCK_M_FWD, BLOCK_M_FWD * ITEM_BLOCKS


def chapter_loads(
    idx: torch.Tensor, n_chapters: int, tile_len: int, layout: str, block: int = BLOCK_M_FWD
) -> int:
    """How many times one query head's forward programs load a chapter's keys and values: ``tiles``
    loads each tile's chapters once per block of ``block`` queries; ``grouped`` each chapter once per
    work item (of up to ``block * ITEM_BLOCKS`` rows). Times T x hd x 2 x bytes per element, the K/V
    bytes a forward reads."""
    if layout == "tiles":
        return idx.numel() * triton.cdiv(tile_len, block)
    return int(chapter_groups(idx, n_chapters, tile_len, block * ITEM_BLOCKS).work_start[-1])


# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------

# Autotune configs per kernel: (num_warps, num_stages). Every one compiles for sm_80 and sm_90a in fp16
# and bf16 at head sizes 64 and 128 with no spilled register and within shared memory (moc.kernels.aot,
# tests/kernels/test_aot.py; the table is in docs/benchmarks.md). The backward steps 16 rows at a time
# with its scores transposed (FlashAttention-2's dK/dV loop): with 32 or 64 rows, or 4 warps and 3
# stages at head size 128, it spills on sm_80 (255 registers).
CONFIGS: dict[str, list[tuple[int, int]]] = {
    "_grouped_fwd": [(4, 2), (4, 3), (8, 2), (8, 3)],
    "_tiles_fwd": [(4, 2), (4, 3)],  # 8 warps spill 32 bytes at head size 128 on sm_80
    "_grouped_bwd": [(4, 2), (8, 2), (8, 3)],
    "_merge": [(4, 1)],  # not tuned: a streaming pass launched with this one config
    "_finish_kv": [(4, 1)],
}


def _fixed(name: str) -> dict[str, int]:
    """Launch options of an untuned kernel: its one config."""
    ((warps, stages),) = CONFIGS[name]
    return {"num_warps": warps, "num_stages": stages}


def _autotuned(kernel: triton.JITFunction) -> triton.JITFunction:
    """``kernel`` autotuned over ``CONFIGS`` (per chapter length, head size and tile length); as it is
    in Triton's interpreter, where there is nothing to time. Every tuned kernel writes each output once
    and reads no output, so the autotuner's repeated launches are harmless."""
    if _interpreting():
        return kernel
    configs = [triton.Config({}, num_warps=w, num_stages=s) for w, s in CONFIGS[kernel.__name__]]
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
    n_queries, n_sel, group, head0, n_group_heads, scale,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, ITEM_BLOCKS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program per (work item, query head of the group): up to ITEM_BLOCKS x BLOCK_M rows that read
    # one chapter. Writes each row's normalised partial output OP (P * Qt, heads of the group, hd) and
    # log-sum-exp LSEP (P * Qt, heads of the group).
    work = tl.program_id(0)
    hl = tl.program_id(1)
    head = head0 + hl
    chapter = tl.load(WORK_CH + work)
    if chapter < 0:  # the tail of the work list (a bound from shapes) holds no rows
        return
    seg0 = tl.load(SEG + chapter)
    row0 = tl.load(WORK_ROW + work)
    n_rows = (tl.load(SEG + chapter + 1) - seg0) * n_queries
    n_blocks = tl.minimum(ITEM_BLOCKS, tl.cdiv(n_rows - row0, BLOCK_M))
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    base = chapter.to(tl.int64) * stride_ku + (head // group) * stride_kh
    offs_t = tl.arange(0, BLOCK_T)
    kv_off = base + offs_t[:, None] * stride_kt + offs_d[None, :]
    kv_mask = (offs_t < T)[:, None] & d_in[None, :]
    if T <= BLOCK_T:  # the whole chapter in one block: its keys and values are loaded once per item
        k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
        v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    for rb in range(0, n_blocks):
        rows = row0 + rb * BLOCK_M + tl.arange(0, BLOCK_M)
        live = rows < n_rows
        pair = tl.load(PAIRS + seg0 + rows // n_queries, mask=live, other=0)
        qi = rows % n_queries
        tile = pair // n_sel
        q_row = tile.to(tl.int64) * stride_qd + qi * stride_qt + head * stride_qh
        q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=live[:, None] & d_in[None, :], other=0.0)
        a = tl.load(A + pair, mask=live, other=1.0) * (scale * 1.4426950408889634)  # base-2 logits
        b = tl.load(BIAS + pair, mask=live, other=0.0) * 1.4426950408889634
        c = tl.load(C + pair, mask=live, other=0.0)
        if T <= BLOCK_T:
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * a[:, None] + b[:, None]
            s = tl.where((offs_t < T)[None, :], s, float("-inf"))
            m_i = tl.max(s, 1)
            m_safe = tl.where(m_i == float("-inf"), 0.0, m_i)  # a -inf bias: nothing, not NaN
            p = tl.exp2(s - m_safe[:, None])
            l_i = tl.sum(p, 1)
            acc = tl.dot((p * c[:, None]).to(v.dtype), v, input_precision=PRECISION).to(tl.float32)
        else:
            m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
            l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
            acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
            m_i, l_i, acc = _read_chapter(
                q, K, V, base, stride_kt, offs_d, d_in, a[:, None], b[:, None], c[:, None], m_i, l_i, acc,
                T, BLOCK_T, PRECISION,
            )  # fmt: skip
        out, lse = _normalise(acc, m_i, l_i)
        prow = (pair.to(tl.int64) * n_queries + qi) * n_group_heads + hl
        tl.store(OP + prow[:, None] * HEAD_DIM + offs_d[None, :], out.to(OP.dtype.element_ty),
                 mask=live[:, None] & d_in[None, :])  # fmt: skip
        tl.store(LSEP + prow, lse, mask=live)


@triton.jit
def _merge(
    OP, LSEP, O, LSE,
    stride_od, stride_ot, stride_oh,
    n_queries, n_sel, head0, n_group_heads, n_heads,
    HEAD_DIM: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # One program per (tile, block of its (query, head) rows): the tile's n partials of each row merged
    # by log-sum-exp, in slot order (deterministic), straight into the output and its log-sum-exp.
    tile = tl.program_id(0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_in = r < n_queries * n_group_heads
    qi = r // n_group_heads
    hl = r % n_group_heads
    offs_d = tl.arange(0, BLOCK_D)
    mask = r_in[:, None] & (offs_d < HEAD_DIM)[None, :]
    m_i = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for j in range(0, n_sel):
        prow = (tile.to(tl.int64) * n_sel + j) * (n_queries * n_group_heads) + r
        lse_j = tl.load(LSEP + prow, mask=r_in, other=float("-inf"))
        m_new = tl.maximum(m_i, lse_j)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row that read nothing: 0, not NaN
        alpha = tl.exp(m_i - m_safe)
        beta = tl.exp(lse_j - m_safe)
        part = tl.load(OP + prow[:, None] * HEAD_DIM + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + part * beta[:, None]
        l_i = l_i * alpha + beta
        m_i = m_new
    has = l_i > 0
    out = acc / tl.where(has, l_i, 1.0)[:, None]
    lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
    head = head0 + hl
    o_off = tile.to(tl.int64) * stride_od + qi * stride_ot + head * stride_oh
    tl.store(O + o_off[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=mask)
    tl.store(LSE + (tile.to(tl.int64) * n_heads + head) * n_queries + qi, lse, mask=r_in)


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
    Q, K, V, DO, LSE, DELTA, PAIRS, SEG, WORK_CH, WORK_ROW, WORK_SLOT, A, BIAS, C,
    DK, DV, DKS, DVS, DQP, DWP,
    stride_qd, stride_qt, stride_qh, stride_ku, stride_kt, stride_kh,
    n_queries, n_sel, group, n_heads, n_kv_heads, kv0, n_group_kv, scale,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr, ITEM_BLOCKS: tl.constexpr, WEIGHTING: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # One program per (work item, KV head of the group, block of the chapter's tokens). It holds that
    # block of the chapter's keys and values, recomputes the probabilities of the item's rows (up to
    # ITEM_BLOCKS x BLOCK_M) from the log-sum-exp for every query head of its KV head, accumulates dK,
    # dV over all of them and writes, each to its own place (no atomics): dK, dV (DK, DV: (U, T, Hkv,
    # hd) in k's dtype, or its chapter's fp32 slot DKS, DVS: (slots, T, KV heads of the group, hd)),
    # its rows' share of dq (DQP: (P * Qt, T blocks, query heads of the group, hd)) and of the
    # chapter-weight gradient (DWP: (P * Qt, T blocks, KV heads of the group)).
    work = tl.program_id(0)
    kvl = tl.program_id(1)
    tb = tl.program_id(2)
    n_tb = tl.num_programs(2)
    chapter = tl.load(WORK_CH + work)
    if chapter < 0:  # the tail of the work list (a bound from shapes) holds no rows
        return
    kv_head = kv0 + kvl
    offs_d = tl.arange(0, BLOCK_D)
    d_in = offs_d < HEAD_DIM
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    t_in = t < T
    kv_mask = t_in[:, None] & d_in[None, :]
    kv_off = chapter.to(tl.int64) * stride_ku + kv_head * stride_kh + t[:, None] * stride_kt + offs_d[None, :]
    k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
    v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    dv = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    seg0 = tl.load(SEG + chapter)
    n_rows = (tl.load(SEG + chapter + 1) - seg0) * n_queries
    row0 = tl.load(WORK_ROW + work)
    n_blocks = tl.minimum(ITEM_BLOCKS, tl.cdiv(n_rows - row0, BLOCK_M))
    for rb in range(0, n_blocks):
        rows = row0 + rb * BLOCK_M + tl.arange(0, BLOCK_M)
        live = rows < n_rows
        pair = tl.load(PAIRS + seg0 + rows // n_queries, mask=live, other=0)
        qi = rows % n_queries
        tile = pair // n_sel
        prow = (pair.to(tl.int64) * n_queries + qi) * n_tb + tb
        a = tl.load(A + pair, mask=live, other=0.0)
        b = tl.load(BIAS + pair, mask=live, other=0.0)
        c = tl.load(C + pair, mask=live, other=0.0)
        dw = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for hh in range(group):
            head = kv_head * group + hh
            q_row = tile.to(tl.int64) * stride_qd + qi * stride_qt + head * stride_qh
            rd_mask = live[:, None] & d_in[None, :]
            # scores transposed, (chapter tokens, rows), as FlashAttention-2's dK/dV loop: the layout
            # that keeps dK, dV and the scores' gradients within the registers of sm_80
            q_t = tl.load(Q + q_row[None, :] + offs_d[:, None], mask=live[None, :] & d_in[:, None], other=0.0)
            do = tl.load(DO + q_row[:, None] + offs_d[None, :], mask=rd_mask, other=0.0)
            lrow = (tile.to(tl.int64) * n_heads + head) * n_queries + qi
            lse = tl.load(LSE + lrow, mask=live, other=0.0)
            delta = tl.load(DELTA + lrow, mask=live, other=0.0)
            # a row that read nothing has lse -inf: no probability (exp2(-inf + inf) would be NaN)
            keep = live[None, :] & t_in[:, None] & (lse[None, :] > float("-inf"))
            r = tl.dot(k, q_t, input_precision=PRECISION).to(tl.float32) * scale
            p = tl.where(
                keep, tl.exp2((r * a[None, :] + b[None, :] - lse[None, :]) * 1.4426950408889634), 0.0
            )
            dpc = tl.dot(v, tl.trans(do), input_precision=PRECISION).to(tl.float32)
            ds = p * (dpc * c[None, :] - delta[None, :])
            if WEIGHTING == "kv":  # d/dw of a = c = w
                dw += tl.sum(ds * r + dpc * p, 0)
            elif WEIGHTING == "v":  # c = w
                dw += tl.sum(dpc * p, 0)
            else:  # b = log w: d/dw = (d/db) / w, computed without the 0 / 0 of a zero weight
                pw = tl.where(keep, tl.exp2((r - lse[None, :]) * 1.4426950408889634), 0.0)
                dw += tl.sum(pw * (dpc - delta[None, :]), 0)
            dr = (ds * (a[None, :] * scale)).to(k.dtype)
            dq = tl.dot(tl.trans(dr), k, input_precision=PRECISION)
            dq_row = prow * (n_group_kv * group) + kvl * group + hh
            dq_off = dq_row[:, None] * HEAD_DIM + offs_d[None, :]
            tl.store(DQP + dq_off, dq.to(DQP.dtype.element_ty), mask=rd_mask)
            dk += tl.dot(dr, tl.trans(q_t), input_precision=PRECISION).to(tl.float32)
            dv += tl.dot((p * c[None, :]).to(do.dtype), do, input_precision=PRECISION).to(tl.float32)
        tl.store(DWP + prow * n_group_kv + kvl, dw, mask=live)
    slot = tl.load(WORK_SLOT + work)
    if slot < 0:  # the chapter's only work item: its gradients are final
        tl.store(DK + kv_off, dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + kv_off, dv.to(DV.dtype.element_ty), mask=kv_mask)
    else:
        s_off = ((slot.to(tl.int64) * T + t[:, None]) * n_group_kv + kvl) * HEAD_DIM + offs_d[None, :]
        tl.store(DKS + s_off, dk, mask=kv_mask)
        tl.store(DVS + s_off, dv, mask=kv_mask)


@triton.jit
def _finish_kv(
    DK, DV, DKS, DVS, WORK_START, SLOT_START, kv0, n_group_kv, n_kv_heads,
    T: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    # One program per (chapter, block of its T x (KV heads of the group) x hd gradient entries): a
    # chapter no work item read gets zeros; one split over several items the sum of its fp32 slots in
    # item order (deterministic); a chapter's only item has already written its gradients.
    u = tl.program_id(0)
    n_items = tl.load(WORK_START + u + 1) - tl.load(WORK_START + u)
    if n_items == 1:
        return
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    width = n_group_kv * HEAD_DIM
    mask = e < T * width
    dk = tl.zeros((BLOCK,), dtype=tl.float32)
    dv = tl.zeros((BLOCK,), dtype=tl.float32)
    slot0 = tl.load(SLOT_START + u).to(tl.int64)
    for i in range(0, n_items):  # n_items == 0: zeros
        dk += tl.load(DKS + (slot0 + i) * (T * width) + e, mask=mask, other=0.0)
        dv += tl.load(DVS + (slot0 + i) * (T * width) + e, mask=mask, other=0.0)
    off = (u.to(tl.int64) * T + e // width) * (n_kv_heads * HEAD_DIM) + kv0 * HEAD_DIM + e % width
    tl.store(DK + off, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(DV + off, dv.to(DV.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------
# Launchers: same contracts as routed_read_forward_torch / routed_read_backward_torch
# --------------------------------------------------------------------------------------------------


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    p = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return p if hi is None else min(p, hi)


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs stay fp32 (no TF32 rounding), so fp32 training matches the PyTorch path.
    return "ieee" if dtype == torch.float32 else "tf32"


def partial_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of per-pair buffers (partial outputs, dq shares): bf16 for bf16 inputs (the output's
    own precision, with fp32's range), else fp32 (fp16's range would lose small dq shares)."""
    return torch.bfloat16 if dtype == torch.bfloat16 else torch.float32


def _coefficients(w: torch.Tensor, weighting: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b, c = chapter_coefficients(w, weighting)
    return a.float().contiguous(), b.float().contiguous(), c.float().contiguous()


def unsupported(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the kernels cannot run on these tensors (None: they can)."""
    if not (q.is_cuda or _interpreting()):
        return "tensors are not on a CUDA device"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        return f"dtype {q.dtype} / {k.dtype} (the kernels take matching fp16, bf16 or fp32)"
    if q.shape[-1] > MAX_HEAD_DIM:
        return (
            f"head size {q.shape[-1]} > {MAX_HEAD_DIM}: no kernel config compiles for it without spilling "
            "or exceeding an A100's shared memory"
        )
    return None


def pick_layout(tile_len: int) -> str:
    """The forward's layout for tiles of ``tile_len`` queries (see the module docstring)."""
    return "grouped" if tile_len < GROUPED_MAX_TILE else "tiles"


def heads_per_group(per_kv_head_bytes: int, kv_heads: int, budget: int | None = None) -> int:
    """How many KV heads one pass takes so that its per-pair buffers (``per_kv_head_bytes`` per KV
    head) stay within ``budget`` (default ``TEMP_BUDGET``); at least one."""
    budget = TEMP_BUDGET if budget is None else budget
    return max(1, min(kv_heads, budget // max(per_kv_head_bytes, 1)))


def forward_group_bytes(P: int, Qt: int, group: int, hd: int, dtype: torch.dtype) -> int:
    """Bytes of the grouped forward's per-pair partials per KV head: output and log-sum-exp per row."""
    return P * Qt * group * (hd * partial_dtype(dtype).itemsize + 4)


def backward_group_bytes(P: int, Qt: int, group: int, hd: int, n_tb: int, n_slots: int, T: int,
                         dtype: torch.dtype) -> int:  # fmt: skip
    """Bytes of the backward's per-pair buffers per KV head: dq shares, dw shares, dK/dV slots."""
    return P * Qt * n_tb * (group * hd * partial_dtype(dtype).itemsize + 4) + 2 * n_slots * T * hd * 4


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
    out = torch.empty_like(q)
    lse = torch.empty(D, H, Qt, dtype=torch.float32, device=q.device)
    if layout == "tiles":
        block_q = _pow2(Qt, hi=64)
        grid = (D, H, triton.cdiv(Qt, block_q))
        idx32 = idx.to(torch.int32).contiguous()
        _launch(
            _tiles_fwd,
            grid,
            q,
            k,
            v,
            idx32,
            a,
            b,
            c,
            out,
            lse,
            *strides,
            Qt,
            n,
            H // kvh,
            H,
            scale,
            BLOCK_Q=block_q,
            **meta,
        )
        return out, lse
    block_m, rows_per_item = fwd_blocks()
    g = chapter_groups(idx, U, Qt, rows_per_item)
    group = H // kvh
    per_group = heads_per_group(forward_group_bytes(D * n, Qt, group, hd, q.dtype), kvh) * group
    part = _empty("forward partial outputs", (D * n * Qt * per_group * hd,), partial_dtype(q.dtype), q.device)
    part_lse = _empty("forward partial log-sum-exp", (D * n * Qt * per_group,), torch.float32, q.device)
    for head0 in range(0, H, per_group):
        hg = min(per_group, H - head0)
        _launch(
            _grouped_fwd, (g.work_chapter.numel(), hg),
            q, k, v, g.pairs, g.seg_start, g.work_chapter, g.work_row, a, b, c, part, part_lse,
            *strides, Qt, n, group, head0, hg, scale,
            BLOCK_M=block_m, ITEM_BLOCKS=rows_per_item // block_m, **meta,
        )  # fmt: skip
        block_r = _pow2(Qt * hg, hi=64)
        _launch(
            _merge, (D, triton.cdiv(Qt * hg, block_r)),
            part, part_lse, out, lse, out.stride(0), out.stride(1), out.stride(2),
            Qt, n, head0, hg, H, HEAD_DIM=hd, BLOCK_R=block_r, BLOCK_D=_pow2(hd), **_fixed("_merge"),
        )  # fmt: skip
    return out, lse


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
    """Gradients (dq, dk, dv, dw) of the read, deterministic (no atomics); contract of the PyTorch one.

    do, q, out (D, Qt, H, hd); lse (D, H, Qt); k, v (U, T, Hkv, hd); idx, w (D, n)."""
    a, b, c = _coefficients(w, weighting)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    do = do.to(q.dtype).contiguous()
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = idx.shape[1]
    group = H // kvh
    dev = q.device
    # delta = do . out per query, the softmax backward's row term, laid out like lse: (D, H, Qt)
    delta = (do.float() * out.float()).sum(-1).transpose(1, 2).contiguous()
    block_m = 16 if _interpreting() else BLOCK_M_BWD
    _, rows_per_item = fwd_blocks()
    block_t = _pow2(T, hi=64)
    n_tb = triton.cdiv(T, block_t)
    g = chapter_groups(idx, U, Qt, rows_per_item)
    W = g.work_chapter.numel()
    per_kv = backward_group_bytes(D * n, Qt, group, hd, n_tb, g.n_slots, T, q.dtype)
    kv_per_group = heads_per_group(per_kv, kvh)
    pdt = partial_dtype(q.dtype)
    dq_part = _empty("backward dq shares", (D * n * Qt * n_tb * kv_per_group * group * hd,), pdt, dev)
    dw_part = _empty("backward dw shares", (D * n * Qt * n_tb * kv_per_group,), torch.float32, dev)
    dk_slots = _empty("backward dK slots", (g.n_slots * T * kv_per_group * hd,), torch.float32, dev)
    dv_slots = _empty("backward dV slots", (g.n_slots * T * kv_per_group * hd,), torch.float32, dev)
    dq = torch.empty_like(q)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dw = torch.zeros(D, n, dtype=torch.float32, device=dev)
    lse = lse.contiguous()
    for kv0 in range(0, kvh, kv_per_group):
        gk = min(kv_per_group, kvh - kv0)
        _launch(
            _grouped_bwd, (W, gk, n_tb),
            q, k, v, do, lse, delta, g.pairs, g.seg_start, g.work_chapter, g.work_row, g.work_slot, a, b, c,
            dk, dv, dk_slots, dv_slots, dq_part, dw_part,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            Qt, n, group, H, kvh, kv0, gk, scale,
            T=T, HEAD_DIM=hd, BLOCK_M=block_m, BLOCK_T=block_t, BLOCK_D=_pow2(hd),
            ITEM_BLOCKS=rows_per_item // block_m, WEIGHTING=weighting, PRECISION=_precision(q.dtype),
        )  # fmt: skip
        block = 1024
        _launch(
            _finish_kv, (U, triton.cdiv(T * gk * hd, block)),
            dk, dv, dk_slots, dv_slots, g.work_start, g.slot_start, kv0, gk, kvh,
            T=T, HEAD_DIM=hd, BLOCK=block, **_fixed("_finish_kv"),
        )  # fmt: skip
        # each query's dq: its chapters' shares summed in slot order (torch's sums are deterministic)
        shares = dq_part[: D * n * Qt * n_tb * gk * group * hd].view(D, n, Qt, n_tb, gk * group, hd)
        dq[:, :, kv0 * group : (kv0 + gk) * group] = shares.sum((1, 3), dtype=torch.float32).to(q.dtype)
        dw += dw_part[: D * n * Qt * n_tb * gk].view(D, n, -1).sum(-1)
    return dq, dk, dv, dw.to(w.dtype)


def launches() -> dict[str, Callable[..., Any]]:
    """The Triton kernels by name (for moc.kernels.aot): the JIT functions under any autotuner."""
    return {
        name: _jit(k)
        for name, k in {
            "_grouped_fwd": _grouped_fwd,
            "_merge": _merge,
            "_tiles_fwd": _tiles_fwd,
            "_grouped_bwd": _grouped_bwd,
            "_finish_kv": _finish_kv,
        }.items()
    }
