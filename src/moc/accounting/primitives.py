"""The per-operation FLOP formulas of the paper's Appendix A.2.

Every function returns an exact ``int``. ``n`` is a number of token vectors, ``d`` a vector width.
A multiply-add counts as 2 FLOPs; the causal mask gives no discount on attention.
"""

from __future__ import annotations


def linear(n: int, d_in: int, d_out: int) -> int:
    """``n`` vectors through a ``d_in -> d_out`` matrix (bias adds are not counted)."""
    return 2 * n * d_in * d_out


def attention_matmuls(l_q: int, l_k: int, d: int) -> int:
    """``Q K^T`` and ``A V`` together for ``l_q`` queries over ``l_k`` keys, ``d`` = heads * head size."""
    return 4 * l_q * l_k * d


def attention_softmax(heads: int, l_q: int, l_k: int) -> int:
    """Softmax (5) + mask (1) + scale (1) per attention score."""
    return heads * l_q * l_k * 7


def rmsnorm(n: int, d: int) -> int:
    return n * (4 * d + 4)


def swiglu_activation(n: int, d_ff: int) -> int:
    return n * d_ff * 5


def rope(n: int, d_q: int, d_kv: int) -> int:
    return 3 * n * (d_q + d_kv)


def residual(n: int, d: int) -> int:
    return n * d


def ceil_log2(k: int) -> int:
    """``ceil(log2(k))`` for ``k >= 1``, exact for any integer (no float rounding)."""
    if k < 1:
        raise ValueError(f"ceil_log2 needs k >= 1, got {k}")
    return (k - 1).bit_length()


def router_loss(s: int, c: int, k: int) -> int:
    """Load-balance + z-loss FLOPs for ``s`` routing decisions, ``c`` router outputs and top-``k``.

    Written term by term as in the paper's Appendix A.2 so that it can be checked against the text.
    """
    return (
        (s * c * (k - 1) + c * (s - 1) + c)
        + (c * (s - 1) + c)
        + (c + (c - 1) + 1)
        + (s * c + c * (s - 1) + c)
        + (c + c + (c - 1) + 1)
        + 5 * s * c
        + (s + (s - 1) + 1)
        + 4 * s * c
    )
