"""Exact forward FLOPs per sequence (batch 1) for any MoC or dense config, following SPEC section 3.

Backward is counted as 2x forward and a training step as 3x forward. All counts are Python ints.
Embedding lookups and bias adds are free, as in the paper.

Components (each counted per layer, then multiplied by how many there are):

- ``layer``: a standard Llama block — Q, K, V, O projections, attention matmuls ``4*L*L*d`` and
  softmax ``heads*L*L*7``, RoPE on Q and K, two RMSNorms, SwiGLU (3 matrices + activation), two
  residual adds. Memory blocks contain one of these too, so every block counts one ``layer``.
- ``memory_layer``: what a memory block adds — ``router``, ``router_loss``, ``preprocess`` of the
  selected memory vectors (chapter weighting + parameter-free RMSNorm), ``memory_attention`` (Q, O
  on the L tokens; K, V on the projected memory vectors; matmuls and softmax over the N_sel keys each
  query sees), one RMSNorm and one residual add; ``reconstruct`` for a factorized bank (``A_S B^T``,
  ``2*N*rank*d``); ``mlp`` for block variant B (second SwiGLU MLP + its RMSNorm + residual).
- ``head``: final RMSNorm, LM head ``2*L*d*V`` and cross-entropy ``(L-1)*V*5``.

Routing modes. ``C = n_chapters`` (the router scores every chapter), ``k = top_k``,
``N_sel = (top_k + n_shared_chapters) * chapter_size`` and ``G`` = routing decisions per sequence:

- ``sequence`` (the paper): ``G = 1``; pooling is a mean over the sequence, ``d*(L-1) + d``.
- ``causal``: ``G = ceil(L / causal_chunk_size)``; each chunk routes from the mean of the hidden
  states before it, computed as a running (prefix) sum: pooling ``d*L`` adds + ``d*G`` divisions.
- ``token``: ``G = L``; each token routes from its own hidden state, so pooling costs nothing.

In every mode the router linear (``2*d*C``), softmax (``5*C``) and top-k (``C*ceil(log2 k)``) run
``G`` times and the router-loss terms use ``s = G``. The memory vectors preprocessed and K/V-projected
per sequence are counted as ``N_proj = min(G*N_sel, N_m)``: each decision selects N_sel vectors, but
there are only N_m distinct ones. For ``sequence`` this is N_sel, exactly the paper's count; the
paper-style count ``G*N_sel`` for the other modes can exceed the bank itself and is not used. Each
query still attends to N_sel keys, so the attention matmuls stay ``4*L*N_sel*d_attn`` and the softmax
``mem_heads*L*N_sel*7`` in every mode.

How this relates to ``moc.model``: the memory layer RMS-normalises and projects each distinct
selected chapter once per *batch* (the union over sequences and decisions) and scales K and V by
the per-decision chapter weights after the projection (exact, as W_K and W_V are linear). So
``N_proj`` is an upper bound on the projection work per sequence; with shared chapters across a
batch the model does less (MFU from these counts then overstates the work done — say so when
reporting it). The weighting is counted as the paper does (``N_proj * d_bank``), not as the model's
``2 * G * N_sel * kv_dim`` multiplies on K and V; causal routing with ``L`` not a multiple of the chunk
size pads the last chunk's queries, which is not counted either.

Reduced bank (``bank_type: reduced``, width ``r = bank_dim``): the memory attention runs in ``r``
dims — Q ``2*L*d*r``, K/V ``2*N_proj*r*kv_dim``, O ``2*L*r*d``, matmuls ``4*L*N_sel*r`` — and the
weighting / RMSNorm of memory vectors are over ``r``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moc.accounting import primitives as P
from moc.accounting.params import memory_dims
from moc.config import MoCConfig, load_config


@dataclass(frozen=True)
class RoutingGeometry:
    """How much memory one sequence of ``seq_len`` tokens touches in one memory layer."""

    mode: str
    decisions: int  # G: routing decisions per sequence
    selected_tokens: int  # N_sel: memory vectors (keys) each query attends to
    projected_tokens: int  # N_proj: memory vectors preprocessed and K/V-projected per sequence


def routing_geometry(cfg: MoCConfig, seq_len: int) -> RoutingGeometry:
    mem = cfg.memory
    if mem.routing == "sequence":
        decisions = 1
    elif mem.routing == "causal":
        decisions = math.ceil(seq_len / mem.causal_chunk_size)
    else:  # token
        decisions = seq_len
    n_sel = mem.n_selected_tokens
    return RoutingGeometry(mem.routing, decisions, n_sel, min(decisions * n_sel, mem.n_tokens))


def layer_terms(cfg: MoCConfig, seq_len: int) -> dict[str, int]:
    """FLOPs of one standard block, by term."""
    m, L = cfg.model, seq_len
    d, kv = m.d_model, m.n_kv_heads * m.head_dim
    return {
        "attention.q_proj": P.linear(L, d, d),
        "attention.k_proj": P.linear(L, d, kv),
        "attention.v_proj": P.linear(L, d, kv),
        "attention.o_proj": P.linear(L, d, d),
        "attention.matmul": P.attention_matmuls(L, L, d),
        "attention.softmax": P.attention_softmax(m.n_heads, L, L),
        "rope": P.rope(L, d, kv),
        "norm": 2 * P.rmsnorm(L, d),
        "mlp.gate_proj": P.linear(L, d, m.d_ff),
        "mlp.up_proj": P.linear(L, d, m.d_ff),
        "mlp.down_proj": P.linear(L, m.d_ff, d),
        "mlp.activation": P.swiglu_activation(L, m.d_ff),
        "residual": 2 * P.residual(L, d),
    }


def memory_layer_terms(cfg: MoCConfig, seq_len: int) -> dict[str, int]:
    """FLOPs a memory block adds on top of its standard block, by term (see the module docstring)."""
    m, mem, L = cfg.model, cfg.memory, seq_len
    d, C = m.d_model, mem.n_chapters
    geo = routing_geometry(cfg, L)
    G, n_sel, n_proj = geo.decisions, geo.selected_tokens, geo.projected_tokens
    d_bank, d_attn, kv_dim = memory_dims(cfg)
    if mem.routing == "sequence":
        pooling = d * (L - 1) + d
    elif mem.routing == "causal":
        pooling = d * L + d * G
    else:
        pooling = 0
    terms = {
        "router.pooling": pooling,
        "router.linear": G * P.linear(1, d, C),
        "router.softmax": G * 5 * C,
        "router.topk": G * C * P.ceil_log2(mem.top_k),
        "router_loss": P.router_loss(G, C, mem.top_k),
        "preprocess.weighting": n_proj * d_bank,
        "preprocess.rmsnorm": P.rmsnorm(n_proj, d_bank),
    }
    if mem.bank_type == "factorized":
        terms["reconstruct"] = 2 * n_proj * mem.bank_rank * d
    terms |= {
        "memory_attention.q_proj": P.linear(L, d, d_attn),
        "memory_attention.k_proj": P.linear(n_proj, d_bank, kv_dim),
        "memory_attention.v_proj": P.linear(n_proj, d_bank, kv_dim),
        "memory_attention.o_proj": P.linear(L, d_attn, d),
        "memory_attention.matmul": P.attention_matmuls(L, n_sel, d_attn),
        "memory_attention.softmax": P.attention_softmax(mem.n_heads, L, n_sel),
        "norm": P.rmsnorm(L, d),
        "residual": P.residual(L, d),
    }
    if mem.block_variant == "B":
        terms |= {
            "mlp.gate_proj": P.linear(L, d, m.d_ff),
            "mlp.up_proj": P.linear(L, d, m.d_ff),
            "mlp.down_proj": P.linear(L, m.d_ff, d),
            "mlp.activation": P.swiglu_activation(L, m.d_ff),
            "mlp.norm": P.rmsnorm(L, d),
            "mlp.residual": P.residual(L, d),
        }
    return terms


def head_terms(cfg: MoCConfig, seq_len: int) -> dict[str, int]:
    """Final RMSNorm, LM head and cross-entropy over the ``L - 1`` predicted positions."""
    m, L = cfg.model, seq_len
    return {
        "norm": P.rmsnorm(L, m.d_model),
        "lm_head": P.linear(L, m.d_model, m.vocab_size),
        "cross_entropy": (L - 1) * m.vocab_size * 5,
    }


def _component(terms: dict[str, int], count: int) -> dict:
    parts: dict[str, int] = {}
    for name, flops in terms.items():
        group = name.split(".", 1)[0]
        parts[group] = parts.get(group, 0) + flops
    each = sum(terms.values())
    return {"count": count, "each": each, "total": count * each, "parts": parts, "terms": dict(terms)}


def _resolve(cfg: MoCConfig | str, seq_len: int | None) -> tuple[MoCConfig, int]:
    if not isinstance(cfg, MoCConfig):
        cfg = load_config(cfg)
    L = cfg.model.max_seq_len if seq_len is None else seq_len
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    return cfg, L


def count_flops(cfg: MoCConfig | str, seq_len: int | None = None) -> dict:
    """Forward, backward and training FLOPs for one sequence of ``seq_len`` tokens (batch 1).

    ``seq_len`` defaults to ``cfg.model.max_seq_len``. Returns::

        {"config", "seq_len", "forward", "backward", "total",
         "breakdown": {"layer" | "memory_layer" | "head":
                       {"count", "each", "total", "parts": {group: flops}, "terms": {term: flops}}},
         "routing": {"mode", "decisions", "selected_tokens", "projected_tokens"}}   # MoC only

    ``each`` is one layer's FLOPs, ``total = count * each``; ``forward`` is the sum of the totals.
    A dense config has no ``memory_layer`` entry and no ``routing``.

    >>> count_flops("paper-moc")["forward"]
    459171802488
    """
    cfg, L = _resolve(cfg, seq_len)
    breakdown = {"layer": _component(layer_terms(cfg, L), cfg.model.n_layers)}
    n_mem = len(cfg.memory_layers)
    if n_mem:
        breakdown["memory_layer"] = _component(memory_layer_terms(cfg, L), n_mem)
    breakdown["head"] = _component(head_terms(cfg, L), 1)
    forward = sum(c["total"] for c in breakdown.values())
    report = {
        "config": cfg.name,
        "seq_len": L,
        "forward": forward,
        "backward": 2 * forward,
        "total": 3 * forward,
        "breakdown": breakdown,
    }
    if n_mem:
        report["routing"] = asdict(routing_geometry(cfg, L))
    return report


def forward_flops(cfg: MoCConfig | str, seq_len: int | None = None) -> int:
    """Forward FLOPs per sequence (batch 1)."""
    return count_flops(cfg, seq_len)["forward"]


def training_flops_per_token(cfg: MoCConfig | str, seq_len: int | None = None) -> float:
    """Training-step FLOPs per token: ``3 * forward / seq_len``."""
    cfg, L = _resolve(cfg, seq_len)
    return 3 * forward_flops(cfg, L) / L
