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
) -> tuple[torch.Tensor, torch.Tensor]:
    """The read, blocked over tiles. Returns out (D, Qt, H, hd) in q's dtype and lse (D, H, Qt) (>= fp32)."""
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    acc = torch.promote_types(q.dtype, torch.float32)  # softmax in fp32 (fp64 stays fp64)
    a, b, c = chapter_coefficients(w, weighting)
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the read from the saved q, out, lse: (dq, dk, dv, dw), recomputing the scores.

    do: (D, Qt, H, hd); lse: (D, H, Qt). dk, dv are accumulated in >= fp32 over the tiles that read a chapter.
    """
    D, Qt, H, hd = q.shape
    _, T, kvh, _ = k.shape
    acc = torch.promote_types(q.dtype, torch.float32)
    a, b, c = chapter_coefficients(w, weighting)
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
    if weighting == "kv":
        dw = da + dc
    elif weighting == "v":
        dw = dc
    else:
        dw = db / w.to(acc)
    return dq, dk.to(k.dtype), dv.to(v.dtype), dw.to(w.dtype)


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
