"""Triton kernels of the routed memory read (CUDA fast path; see ``routed_read`` for the maths).

Forward: one program per (query tile, head, block of the tile's queries) loads its queries once, then
loops over the tile's selected chapters, gathering each chapter's keys and values from the projected
chapters by index, with an online softmax (FlashAttention-style) and the chapter's coefficients
(logit scale a, logit bias b, value scale c) applied inside the loop; it writes the output and the
log-sum-exp. Backward: the same programs recompute the probabilities from the log-sum-exp, write dq,
and add dk, dv and the per-chapter d(a), d(b), d(c) with fp32 atomics.

Both fall back to the blocked PyTorch loops (saying why, once) on unsupported inputs or if a kernel
fails. Tested against the PyTorch path on the CPU with ``TRITON_INTERPRET=1`` (tests/kernels); not yet
run on a GPU.
"""

from __future__ import annotations

import math
import warnings

import torch
import triton
import triton.language as tl

from moc.kernels.routed_read import (
    chapter_coefficients,
    routed_read_backward_torch,
    routed_read_forward_torch,
)

_WARNED: set[str] = set()


@triton.jit
def _routed_read_fwd(
    Q,
    K,
    V,
    IDX,
    A,
    BIAS,
    C,
    O,
    LSE,
    stride_qd,
    stride_qt,
    stride_qh,
    stride_ku,
    stride_kt,
    stride_kh,
    n_queries,
    n_tokens,
    n_sel,
    group,
    n_heads,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    qblock = tl.program_id(2)
    kv_head = head // group
    offs_q = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    q_mask = (offs_q[:, None] < n_queries) & (offs_d[None, :] < HEAD_DIM)
    q_ptrs = Q + tile * stride_qd + offs_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(q_ptrs, mask=q_mask, other=0.0)
    m_i = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for j in range(0, n_sel):
        chapter = tl.load(IDX + tile * n_sel + j).to(tl.int64)
        a = tl.load(A + tile * n_sel + j) * scale
        b = tl.load(BIAS + tile * n_sel + j)
        c = tl.load(C + tile * n_sel + j)
        base = chapter * stride_ku + kv_head * stride_kh
        for t0 in range(0, n_tokens, BLOCK_T):
            t = t0 + offs_t
            kv_mask = (t[:, None] < n_tokens) & (offs_d[None, :] < HEAD_DIM)
            kv_off = base + t[:, None] * stride_kt + offs_d[None, :]
            k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * a + b
            s = tl.where(t[None, :] < n_tokens, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
            pv = tl.dot((p * c).to(v.dtype), v, input_precision=PRECISION)
            acc = acc * alpha[:, None] + pv.to(tl.float32)
            m_i = m_new
    out = acc / l_i[:, None]
    o_ptrs = O + tile * stride_qd + offs_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=q_mask)
    lse_ptrs = LSE + (tile * n_heads + head) * n_queries + offs_q
    tl.store(lse_ptrs, m_i + tl.log(l_i), mask=offs_q < n_queries)


@triton.jit
def _routed_read_bwd(
    Q,
    K,
    V,
    IDX,
    A,
    BIAS,
    C,
    DO,
    LSE,
    DELTA,
    DQ,
    DK,
    DV,
    DA,
    DB,
    DC,
    stride_qd,
    stride_qt,
    stride_qh,
    stride_ku,
    stride_kt,
    stride_kh,
    n_queries,
    n_tokens,
    n_sel,
    group,
    n_heads,
    scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program per (tile, head, query block), as in the forward: it recomputes its probabilities from
    # the log-sum-exp, writes its dq, and adds its share of dk, dv (fp32, atomics: chapters are shared
    # across tiles and, with grouped heads, across heads) and of the per-chapter d(a), d(b), d(c).
    tile = tl.program_id(0)
    head = tl.program_id(1)
    qblock = tl.program_id(2)
    kv_head = head // group
    offs_q = qblock * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    q_in = offs_q < n_queries
    q_mask = q_in[:, None] & (offs_d[None, :] < HEAD_DIM)
    q_off = tile * stride_qd + offs_q[:, None] * stride_qt + head * stride_qh + offs_d[None, :]
    q = tl.load(Q + q_off, mask=q_mask, other=0.0)
    do = tl.load(DO + q_off, mask=q_mask, other=0.0)
    row = (tile * n_heads + head) * n_queries + offs_q
    lse = tl.load(LSE + row, mask=q_in, other=0.0)
    delta = tl.load(DELTA + row, mask=q_in, other=0.0)
    dq = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for j in range(0, n_sel):
        chapter = tl.load(IDX + tile * n_sel + j).to(tl.int64)
        a = tl.load(A + tile * n_sel + j)
        b = tl.load(BIAS + tile * n_sel + j)
        c = tl.load(C + tile * n_sel + j)
        base = chapter * stride_ku + kv_head * stride_kh
        zero = tl.sum(tl.zeros((BLOCK_Q,), dtype=tl.float32), 0)  # an fp32 scalar for the loop
        da = zero
        db = zero
        dc = zero
        for t0 in range(0, n_tokens, BLOCK_T):
            t = t0 + offs_t
            kv_mask = (t[:, None] < n_tokens) & (offs_d[None, :] < HEAD_DIM)
            kv_off = base + t[:, None] * stride_kt + offs_d[None, :]
            k = tl.load(K + kv_off, mask=kv_mask, other=0.0)
            v = tl.load(V + kv_off, mask=kv_mask, other=0.0)
            r = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(tl.float32) * scale
            live = q_in[:, None] & (t[None, :] < n_tokens)
            p = tl.where(live, tl.exp(r * a + b - lse[:, None]), 0.0)
            dpc = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
            ds = p * (dpc * c - delta[:, None])
            dc += tl.sum(tl.sum(dpc * p, 1), 0)
            da += tl.sum(tl.sum(ds * r, 1), 0)
            db += tl.sum(tl.sum(ds, 1), 0)
            dr = ds * (a * scale)
            dq += tl.dot(dr.to(k.dtype), k, input_precision=PRECISION).to(tl.float32)
            dk = tl.dot(tl.trans(dr.to(q.dtype)), q, input_precision=PRECISION).to(tl.float32)
            dv = tl.dot(tl.trans((p * c).to(do.dtype)), do, input_precision=PRECISION).to(tl.float32)
            tl.atomic_add(DK + kv_off, dk, mask=kv_mask)
            tl.atomic_add(DV + kv_off, dv, mask=kv_mask)
        tl.atomic_add(DA + tile * n_sel + j, da)
        tl.atomic_add(DB + tile * n_sel + j, db)
        tl.atomic_add(DC + tile * n_sel + j, dc)
    tl.store(DQ + q_off, dq.to(DQ.dtype.element_ty), mask=q_mask)


def _pow2(n: int, lo: int = 16, hi: int | None = None) -> int:
    p = max(lo, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    return p if hi is None else min(p, hi)


def unsupported(q: torch.Tensor, k: torch.Tensor) -> str | None:
    """Why the kernel cannot run on these tensors (None: it can)."""
    if not (q.is_cuda or _interpreting()):
        return "tensors are not on a CUDA device"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype:
        return f"dtype {q.dtype} / {k.dtype} (the kernel takes matching fp16, bf16 or fp32)"
    if q.shape[-1] > 256:
        return f"head size {q.shape[-1]} > 256"
    return None


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``routed_read_forward_torch``: q (D, Qt, H, hd), k/v (U, T, Hkv, hd), idx/w
    (D, n) -> out (D, Qt, H, hd), lse (D, H, Qt) fp32. Falls back (saying so once) where unsupported."""
    reason = _BROKEN[0] if _BROKEN else unsupported(q, k)
    if reason is not None:
        _warn_once(reason)
        return routed_read_forward_torch(q, k, v, idx, w, weighting, scale)
    try:
        return _launch(q, k, v, idx, w, weighting, scale)
    except Exception as e:  # a kernel that fails to compile must not stop training
        _BROKEN.append(f"the kernel failed: {type(e).__name__}: {e}")
        _warn_once(_BROKEN[0])
        return routed_read_forward_torch(q, k, v, idx, w, weighting, scale)


_BROKEN: list[str] = []  # set once the kernel has failed: the PyTorch path from then on


def _warn_once(reason: str) -> None:
    if reason not in _WARNED:
        _WARNED.add(reason)
        warnings.warn(f"memory read: Triton kernel skipped ({reason}); using the PyTorch path", stacklevel=3)


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    weighting: str,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    a, b, c = (x.float().contiguous() for x in chapter_coefficients(w, weighting))
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    out = torch.empty_like(q)
    lse = torch.empty(D, H, Qt, dtype=torch.float32, device=q.device)
    BLOCK_Q = _pow2(Qt, hi=64)
    grid = (D, H, triton.cdiv(Qt, BLOCK_Q))
    _routed_read_fwd[grid](
        q, k, v, idx.to(torch.int32).contiguous(), a, b, c, out, lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        Qt, T, idx.shape[1], H // kvh, H, scale,
        HEAD_DIM=hd, BLOCK_Q=BLOCK_Q, BLOCK_T=_pow2(T, hi=64), BLOCK_D=_pow2(hd),
        # fp32 inputs stay fp32 (no TF32 rounding), so fp32 training matches the PyTorch path.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    return out, lse


def triton_backward(
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
    """Same contract as ``routed_read_backward_torch`` (dq, dk, dv, dw); falls back like the forward."""
    reason = _BROKEN[0] if _BROKEN else unsupported(q, k)
    if reason is None:
        try:
            return _launch_backward(do, q, out, lse, k, v, idx, w, weighting, scale)
        except Exception as e:  # a kernel that fails to compile must not stop training
            _BROKEN.append(f"the kernel failed: {type(e).__name__}: {e}")
            reason = _BROKEN[0]
    _warn_once(reason)
    return routed_read_backward_torch(do, q, out, lse, k, v, idx, w, weighting, scale)


def _launch_backward(
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
    a, b, c = (x.float().contiguous() for x in chapter_coefficients(w, weighting))
    q, k, v, do = q.contiguous(), k.contiguous(), v.contiguous(), do.contiguous().to(q.dtype)
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    # delta_i = do_i . out_i, the softmax backward's per-query term, laid out like lse: (D, H, Qt)
    delta = (do.float() * out.float()).sum(-1).transpose(1, 2).contiguous()
    dq = torch.empty_like(q)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    da, db, dc = (torch.zeros_like(a) for _ in range(3))
    BLOCK_Q = _pow2(Qt, hi=64)
    grid = (D, H, triton.cdiv(Qt, BLOCK_Q))
    _routed_read_bwd[grid](
        q, k, v, idx.to(torch.int32).contiguous(), a, b, c, do, lse.contiguous(), delta,
        dq, dk, dv, da, db, dc,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        Qt, T, idx.shape[1], H // kvh, H, scale,
        HEAD_DIM=hd, BLOCK_Q=BLOCK_Q, BLOCK_T=_pow2(T, hi=64), BLOCK_D=_pow2(hd),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    dw = {"kv": da + dc, "v": dc, "logit": db / w.float()}[weighting]
    return dq, dk.to(k.dtype), dv.to(v.dtype), dw.to(w.dtype)
