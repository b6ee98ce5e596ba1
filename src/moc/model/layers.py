"""Backbone building blocks: RMSNorm, rotary embeddings, grouped-query self-attention, SwiGLU MLP.

Names follow Hugging Face's Llama so that practitioners (and weight converters) recognise them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # moc only: an exported Hugging Face folder normalises with F.rms_norm
    from moc.errors import warn_once
    from moc.kernels import cpu_norm as _cpu_norm
except ImportError:
    _cpu_norm = None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale. x: (..., d) -> (..., d)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def float32_or_wider(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or as it is where its dtype is wider (float64): bf16 and fp16 inputs are normalised
    and summed in float32 without narrowing a float64 model's numbers."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMS normalisation without a learned scale. x: (..., d) -> (..., d)."""
    return rms_norm(x, None, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.rms_norm`` over the last dim, computed in float32 (or wider: stable under bf16 autocast) and
    returned in x's dtype. x: (..., d), weight: (d,) or None -> (..., d).

    Eager on the CPU it runs ``moc.kernels.cpu_norm``'s one-pass forward and backward: PyTorch's CPU
    rms_norm differentiates through its decomposition, a dozen passes over x (forward and backward
    twice as long at the capacity models' widths, 4x for an 8k-token bank: ``bench/rms_norm.py``).
    Compiled, inductor fuses F.rms_norm itself."""
    xf = float32_or_wider(x)
    w = None if weight is None else float32_or_wider(weight)
    if xf.device.type == "cpu" and not torch.compiler.is_compiling() and _cpu_kernels_run(xf):
        return _cpu_norm.RMSNormFunction.apply(xf, w, eps).to(x.dtype)
    return F.rms_norm(xf, (x.shape[-1],), w, eps).to(x.dtype)


# The C kernels run on one thread. On one or two they beat F.rms_norm at every size measured (0.2-0.5x
# its time from 1,088 x 16 to 16,384 x 1,024 rows, forward and backward); with more threads PyTorch's
# parallel passes may win on large inputs, so there only inputs of at most this many entries take them.
CPU_NORM_MAX_ENTRIES_MULTITHREADED = 1 << 16


def _cpu_kernels_run(x: torch.Tensor) -> bool:
    """Whether moc's C norm kernels normalise x here (says once why not where they cannot be built)."""
    if _cpu_norm is None:
        return False
    if torch.get_num_threads() > 2 and x.numel() > CPU_NORM_MAX_ENTRIES_MULTITHREADED:
        return False
    reason = _cpu_norm.unavailable(x.dtype)
    if reason is not None:
        warn_once(f"RMS norm: CPU kernel unavailable ({reason}); using F.rms_norm, whose eager backward "
                  "is slower", stacklevel=4)  # fmt: skip
    return reason is None


class RotaryEmbedding(nn.Module):
    """Rotary position embedding tables computed on the fly from integer positions."""

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: (B, L) -> cos, sin: (B, L, head_dim), fp32."""
        freqs = position_ids.float()[..., None] * self.inv_freq  # (B, L, head_dim / 2)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, heads, L, head_dim); cos/sin: (B, L, head_dim)."""
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def document_ids(position_ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Which packed document each position belongs to. position_ids, valid: (B, L) -> (B, L) int64.

    A new document starts at a valid token whose position id is 0 or not greater than the previous
    valid token's (the Hugging Face packed convention, ``DataCollatorWithFlattening``: positions restart
    at 0 for each sequence). Documents are numbered 1, 2, ... in each row; padding takes the number of
    the document before it (0 before the first valid token). Positions from an attention mask give one
    document per row.
    """
    B, L = position_ids.shape
    idx = torch.arange(L, device=position_ids.device).expand(B, L)
    last_valid = torch.where(valid, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    prev = torch.cat([last_valid.new_full((B, 1), -1), last_valid[:, :-1]], dim=1)  # last valid index < t
    prev_pos = position_ids.gather(1, prev.clamp(min=0))
    start = valid & ((prev < 0) | (position_ids == 0) | (position_ids <= prev_pos))
    return start.long().cumsum(dim=1)


def dense_document_mask(doc: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask. doc, valid: (B, L) -> (B, 1, L, L) bool, True = attend.

    Query i sees key j <= i of the same document if j is a real token; it always sees itself, so that
    padding rows stay finite (their outputs are never used). O(L^2) memory: for CPU and short rows.
    """
    L = doc.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=doc.device).tril()
    same = doc[:, :, None] == doc[:, None, :]
    return ((same & causal & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=doc.device))[:, None]


def flex_document_mask(doc: torch.Tensor, valid: torch.Tensor) -> Any:
    """The same mask as :func:`dense_document_mask` as a FlexAttention ``BlockMask`` (block-sparse:
    blocks of 128 x 128 positions that no query of a document needs are skipped, no L x L tensor)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return ((doc[b, q] == doc[b, k]) & (k <= q) & valid[b, k]) | (q == k)

    B, L = doc.shape
    # Compiled on CUDA so that building the block mask does not materialise the (B, L, L) mask either.
    return create_block_mask(mask_mod, B, None, L, L, device=doc.device, _compile=doc.device.type == "cuda")


_compiled_flex: Any = None


def _flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: Any, gqa: bool
) -> torch.Tensor:
    """FlexAttention, compiled on CUDA (eager it materialises the scores: fine for CPU tests only)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cuda":
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)


# PyTorch's CPU SDPA multiplies its blocks through BLAS, which takes a slow path for head dims below 16:
# zero-padded to 16 the same attention costs 0.5-0.9x (bench/attention_head_dim.py); above 16, padding to
# the next multiple of 16 costs more.
CPU_SDPA_MIN_HEAD_DIM = 16


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    enable_gqa: bool,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (softmax scale 1/sqrt(head_dim)), on the CPU with head dims below
    ``CPU_SDPA_MIN_HEAD_DIM`` zero-padded to it: zero columns of q and k add nothing to a score, those of v
    give output columns that are dropped. q: (B, H, L, hd), k/v: (B, H_kv, S, hd) -> (B, H, L, hd)."""
    hd = q.shape[-1]
    if q.device.type == "cpu" and hd < CPU_SDPA_MIN_HEAD_DIM:
        pad = (0, CPU_SDPA_MIN_HEAD_DIM - hd)
        q, k, v = F.pad(q, pad), F.pad(k, pad), F.pad(v, pad)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=is_causal, enable_gqa=enable_gqa, scale=hd**-0.5
    )
    return out[..., :hd]


class SelfAttention(nn.Module):
    """Causal grouped-query self-attention with RoPE, via PyTorch SDPA, with an optional KV cache."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        cache: Any = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        """x: (B, L, d); attn_mask: (B, 1, L, L_past + L) bool (True = attend), a FlexAttention
        ``BlockMask`` (packed documents on GPU, see :func:`flex_document_mask`) or None for plain causal.

        ``cache`` is any object with Hugging Face's ``update(k, v, layer_idx) -> (k_all, v_all)``.
        """
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if not isinstance(attn_mask, torch.Tensor | None):  # a BlockMask
            out = _flex_attention(q, k, v, attn_mask, self.n_kv_heads != self.n_heads)
            return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))
        out = scaled_dot_product_attention(
            q, k, v, attn_mask, is_causal=attn_mask is None, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, L, -1))


class SwiGLU(nn.Module):
    """The gated MLP: down(silu(gate(x)) * up(x)). x: (..., d) -> (..., d)."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
