"""Exact forward FLOPs per sequence for any MoC or dense config, following the paper's Appendix A.2.

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
  With ``causal_first_chunk: per_token`` each of the first ``c = min(chunk, L)`` positions decides
  alone: ``G = c + ceil((L - c) / chunk)``.
- ``token``: ``G = L``; each token routes from its own hidden state, so pooling costs nothing.

In every mode the router linear (``2*d*C``), softmax (``5*C``) and top-k (``C*ceil(log2 k)``) run
``G`` times and the router-loss terms use ``s = G``. Each query attends to N_sel keys, so the attention
matmuls are ``4*L*N_sel*d_attn`` and the softmax ``mem_heads*L*N_sel*7`` in every mode.

Projected memory vectors (batch-aware). A memory read needs to RMS-normalise and K/V-project each
*distinct* selected chapter only once per micro-batch (the union over all sequences and decisions of
the batch), then scale K and V by each decision's chapter weights (exact: W_K and W_V have no bias);
``moc.model`` does this, padded to a static number of rows to avoid a host sync (docs/accounting.md
gives both figures for paper-moc). So the projection
work depends on the micro-batch size ``B``: with ``D`` decisions per micro-batch (``B`` for sequence,
``B * ceil(L / chunk)`` for causal, ``B * L`` for token routing), ``C_r = n_chapters - n_shared``
routed chapters and top-``k``, the counted chapters per micro-batch are the expected number of
distinct ones::

    E[distinct] = n_shared + C_r * (1 - (1 - k / C_r) ** D)

Assumption: every decision picks its k routed chapters uniformly at random and independently of the
others, so a routed chapter is missed by one decision with probability ``1 - k / C_r`` and by all D
with ``(1 - k / C_r) ** D``. A trained router that concentrates on fewer chapters shares more between
decisions and projects fewer; one that spreads its load evenly is close to uniform. The projected
tokens *per sequence* are ``N_proj = round(E[distinct] * chapter_size / B)`` (rounded to a whole
token so every count stays an int). With ``B = 1`` and sequence routing ``D = 1`` and ``N_proj =
N_sel``: exactly the paper's count. Passing ``projected_chapters`` replaces the expectation by a
*measured* number of distinct chapters per micro-batch (e.g. the mean over memory layers of
``torch.unique(info.indices).numel()`` from the model's routing info), which the training loop uses
for its measured MFU. The weighting is counted as the paper does (``N_proj * d_bank``), not as the
model's ``2 * G * N_sel * kv_dim`` multiplies on K and V; causal routing with ``L`` not a multiple of
the chunk size pads the last chunk's queries, which is not counted either.

Reduced bank (``bank_type: reduced``, width ``r = bank_dim``): the memory attention runs in ``r``
dims — Q ``2*L*d*r``, K/V ``2*N_proj*r*kv_dim``, O ``2*L*r*d``, matmuls ``4*L*N_sel*r`` — and the
weighting / RMSNorm of memory vectors are over ``r``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from moc.accounting import primitives
from moc.accounting.params import memory_dims
from moc.config import RunConfig, load_config
from moc.model.routing_layout import decisions_per_document


@dataclass(frozen=True)
class RoutingGeometry:
    """How much memory one sequence of ``seq_len`` tokens touches in one memory layer at micro-batch B."""

    mode: str
    decisions: int  # G: routing decisions per sequence
    selected_tokens: int  # N_sel: memory vectors (keys) each query attends to
    projected_tokens: int  # N_proj: memory vectors preprocessed and K/V-projected, per sequence
    batch_size: int  # B: sequences per micro-batch
    batch_decisions: int  # D = B * G: routing decisions per micro-batch
    projected_chapters: float  # distinct chapters projected per micro-batch (expected or measured)
    chapters_source: str  # "expected" (uniform routing) or "measured"


def expected_distinct_chapters(n_shared: int, n_routed: int, top_k: int, decisions: int) -> float:
    """Expected distinct chapters selected by ``decisions`` uniform, independent top-k decisions.

    ``n_shared + n_routed * (1 - (1 - top_k / n_routed) ** decisions)`` (see the module docstring for
    the assumption). One decision gives exactly ``n_shared + top_k``.
    """
    if decisions < 1 or not 1 <= top_k <= n_routed:
        raise ValueError(
            f"need decisions >= 1 and 1 <= top_k <= n_routed, got {decisions}, {top_k}, {n_routed}"
        )
    if decisions == 1:
        return float(n_shared + top_k)
    if top_k == n_routed:
        return float(n_shared + n_routed)
    # exp(D * log1p(-p)) keeps precision when k / C_r is small and D large.
    missed = math.exp(decisions * math.log1p(-top_k / n_routed))
    return n_shared + n_routed * (1.0 - missed)


def routing_geometry(
    cfg: RunConfig, seq_len: int, batch_size: int = 1, projected_chapters: float | None = None
) -> RoutingGeometry:
    """The routing geometry of one memory layer (see the module docstring for the counts)."""
    mem = cfg.memory
    split_first = mem.causal_first_chunk == "per_token"
    decisions = decisions_per_document(mem.routing, seq_len, mem.causal_chunk_size, split_first)
    batch_decisions = batch_size * decisions
    if projected_chapters is None:
        chapters = expected_distinct_chapters(
            mem.n_shared_chapters, mem.n_routed_chapters, mem.top_k, batch_decisions
        )
        source = "expected"
    else:
        if not 0 < projected_chapters <= mem.n_chapters:
            raise ValueError(
                f"projected_chapters must be in (0, n_chapters={mem.n_chapters}], got {projected_chapters}"
            )
        chapters, source = float(projected_chapters), "measured"
    n_proj = round(chapters * mem.chapter_size / batch_size)
    return RoutingGeometry(
        mem.routing,
        decisions,
        mem.n_selected_tokens,
        n_proj,
        batch_size,
        batch_decisions,
        chapters,
        source,
    )


def layer_terms(cfg: RunConfig, seq_len: int) -> dict[str, int]:
    """FLOPs of one standard block, by term."""
    m, L = cfg.model, seq_len
    d, kv = m.d_model, m.n_kv_heads * m.head_dim
    return {
        "attention.q_proj": primitives.linear(L, d, d),
        "attention.k_proj": primitives.linear(L, d, kv),
        "attention.v_proj": primitives.linear(L, d, kv),
        "attention.o_proj": primitives.linear(L, d, d),
        "attention.matmul": primitives.attention_matmuls(L, L, d),
        "attention.softmax": primitives.attention_softmax(m.n_heads, L, L),
        "rope": primitives.rope(L, d, kv),
        "norm": 2 * primitives.rmsnorm(L, d),
        "mlp.gate_proj": primitives.linear(L, d, m.d_ff),
        "mlp.up_proj": primitives.linear(L, d, m.d_ff),
        "mlp.down_proj": primitives.linear(L, m.d_ff, d),
        "mlp.activation": primitives.swiglu_activation(L, m.d_ff),
        "residual": 2 * primitives.residual(L, d),
    }


def memory_layer_terms(
    cfg: RunConfig, seq_len: int, batch_size: int = 1, projected_chapters: float | None = None
) -> dict[str, int]:
    """FLOPs a memory block adds on top of its standard block, per sequence, by term (module docstring)."""
    m, mem, L = cfg.model, cfg.memory, seq_len
    d, C = m.d_model, mem.n_chapters
    geo = routing_geometry(cfg, L, batch_size, projected_chapters)
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
        "router.linear": G * primitives.linear(1, d, C),
        "router.softmax": G * 5 * C,
        "router.topk": G * C * primitives.ceil_log2(mem.top_k),
        "router_loss": primitives.router_loss(G, C, mem.top_k),
        "preprocess.weighting": n_proj * d_bank,
        "preprocess.rmsnorm": primitives.rmsnorm(n_proj, d_bank),
    }
    if mem.bank_type == "factorized":
        terms["reconstruct"] = 2 * n_proj * mem.bank_rank * d
    terms |= {
        "memory_attention.q_proj": primitives.linear(L, d, d_attn),
        "memory_attention.k_proj": primitives.linear(n_proj, d_bank, kv_dim),
        "memory_attention.v_proj": primitives.linear(n_proj, d_bank, kv_dim),
        "memory_attention.o_proj": primitives.linear(L, d_attn, d),
        "memory_attention.matmul": primitives.attention_matmuls(L, n_sel, d_attn),
        "memory_attention.softmax": primitives.attention_softmax(mem.n_heads, L, n_sel),
        "norm": primitives.rmsnorm(L, d),
        "residual": primitives.residual(L, d),
    }
    if mem.block_variant == "B":
        terms |= {
            "mlp.gate_proj": primitives.linear(L, d, m.d_ff),
            "mlp.up_proj": primitives.linear(L, d, m.d_ff),
            "mlp.down_proj": primitives.linear(L, m.d_ff, d),
            "mlp.activation": primitives.swiglu_activation(L, m.d_ff),
            "mlp.norm": primitives.rmsnorm(L, d),
            "mlp.residual": primitives.residual(L, d),
        }
    return terms


def head_terms(cfg: RunConfig, seq_len: int) -> dict[str, int]:
    """Final RMSNorm, LM head and cross-entropy over the ``L - 1`` predicted positions."""
    m, L = cfg.model, seq_len
    return {
        "norm": primitives.rmsnorm(L, m.d_model),
        "lm_head": primitives.linear(L, m.d_model, m.vocab_size),
        "cross_entropy": (L - 1) * m.vocab_size * 5,
    }


def _component(terms: dict[str, int], count: int) -> dict:
    parts: dict[str, int] = {}
    for name, flops in terms.items():
        group = name.split(".", 1)[0]
        parts[group] = parts.get(group, 0) + flops
    each = sum(terms.values())
    return {"count": count, "each": each, "total": count * each, "parts": parts, "terms": dict(terms)}


def _resolve(cfg: RunConfig | str, seq_len: int | None) -> tuple[RunConfig, int]:
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    L = cfg.model.max_seq_len if seq_len is None else seq_len
    if isinstance(L, bool) or not isinstance(L, int) or L < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    return cfg, L


def _check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer (sequences per micro-batch), got {batch_size!r}"
        )
    return batch_size


def count_flops(
    cfg: RunConfig | str,
    seq_len: int | None = None,
    batch_size: int = 1,
    projected_chapters: float | None = None,
) -> dict:
    """Forward, backward and training FLOPs per sequence of ``seq_len`` tokens at micro-batch ``batch_size``.

    ``seq_len`` defaults to ``cfg.model.max_seq_len``. ``batch_size`` only changes the memory
    projection count (distinct chapters are projected once per micro-batch, see the module docstring);
    ``batch_size=1`` gives the paper's figures. ``projected_chapters``: a measured number of distinct
    chapters per micro-batch to count instead of the uniform-routing expectation. Returns::

        {"config", "seq_len", "batch_size", "forward", "backward", "total",
         "breakdown": {"layer" | "memory_layer" | "head":
                       {"count", "each", "total", "parts": {group: flops}, "terms": {term: flops}}},
         "routing": {"mode", "decisions", "selected_tokens", "projected_tokens", "batch_size",
                     "batch_decisions", "projected_chapters", "chapters_source"}}   # MoC only

    ``each`` is one layer's FLOPs, ``total = count * each``; ``forward`` is the sum of the totals.
    A dense config has no ``memory_layer`` entry and no ``routing``.

    >>> count_flops("paper-moc")["forward"]
    459171802488
    """
    cfg, L = _resolve(cfg, seq_len)
    B = _check_batch(batch_size)
    breakdown = {"layer": _component(layer_terms(cfg, L), cfg.model.n_layers)}
    n_mem = len(cfg.memory_layers)
    if n_mem:
        breakdown["memory_layer"] = _component(memory_layer_terms(cfg, L, B, projected_chapters), n_mem)
    breakdown["head"] = _component(head_terms(cfg, L), 1)
    forward = sum(c["total"] for c in breakdown.values())
    report = {
        "config": cfg.name,
        "seq_len": L,
        "batch_size": B,
        "forward": forward,
        "backward": 2 * forward,
        "total": 3 * forward,
        "breakdown": breakdown,
    }
    if n_mem:
        report["routing"] = asdict(routing_geometry(cfg, L, B, projected_chapters))
    return report


def forward_flops(
    cfg: RunConfig | str,
    seq_len: int | None = None,
    batch_size: int = 1,
    projected_chapters: float | None = None,
) -> int:
    """Forward FLOPs per sequence at micro-batch ``batch_size``."""
    return count_flops(cfg, seq_len, batch_size, projected_chapters)["forward"]


def training_flops_per_token(
    cfg: RunConfig | str,
    seq_len: int | None = None,
    batch_size: int = 1,
    projected_chapters: float | None = None,
) -> float:
    """Training-step FLOPs per token: ``3 * forward / seq_len``."""
    cfg, L = _resolve(cfg, seq_len)
    return 3 * forward_flops(cfg, L, batch_size, projected_chapters) / L
