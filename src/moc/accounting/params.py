"""Analytic parameter counts for any MoC or dense config (no model is built, so paper sizes are instant).

The split matches ``moc.model.param_groups.param_category``: ``backbone`` (embeddings, self-attention, MLPs,
norms, untied LM head), ``memory_layers`` (memory cross-attention, its RMSNorm, the router, and block
variant B's second MLP + norm) and ``bank`` (the memory tokens).
"""

from __future__ import annotations

import math

from moc.config import RunConfig, load_config


def memory_dims(cfg: RunConfig) -> tuple[int, int, int]:
    """``(d_bank, d_attn, kv_dim)`` of the memory cross-attention.

    ``d_bank`` is the width of a stored (or reconstructed) memory vector, ``d_attn`` the query width
    (memory heads * head size) and ``kv_dim`` the key/value width (memory KV heads * head size).
    A "reduced" bank stores vectors of ``bank_dim`` and runs the attention in ``bank_dim`` dims;
    "full" and "factorized" banks give ``d_model``-wide vectors.
    """
    mem = cfg.memory
    width = mem.bank_dim if mem.bank_type == "reduced" else cfg.model.d_model
    head_dim = width // mem.n_heads
    return width, width, mem.n_kv_heads * head_dim


def n_banks(cfg: RunConfig) -> int:
    """How many banks the model holds (0 for a dense model)."""
    mem = cfg.memory
    n_mem = len(cfg.memory_layers)
    if n_mem == 0:
        return 0
    if mem.bank_sharing == "shared":
        return 1
    if mem.bank_sharing == "per_layer":
        return n_mem
    return math.ceil(n_mem / mem.bank_group_size)


def bank_params(cfg: RunConfig) -> int:
    """Parameters of one bank: full ``N_m*d``; factorized ``N_m*r + d*r``; reduced ``N_m*bank_dim``."""
    mem, d = cfg.memory, cfg.model.d_model
    if mem.bank_type == "full":
        return mem.n_tokens * d
    if mem.bank_type == "factorized":
        return mem.n_tokens * mem.bank_rank + d * mem.bank_rank
    return mem.n_tokens * mem.bank_dim


def backbone_layer_params(cfg: RunConfig) -> int:
    """One Llama block: Q, K, V, O (no biases), two RMSNorm weights, SwiGLU (gate, up, down)."""
    m = cfg.model
    d, kv = m.d_model, m.n_kv_heads * m.head_dim
    return d * d + 2 * d * kv + d * d + 2 * d + 3 * d * m.d_ff


def memory_layer_params(cfg: RunConfig) -> int:
    """The memory parts one memory block adds (its bank is counted separately).

    RMSNorm weight ``d`` + Q ``d->d_attn`` + K, V ``d_bank->kv_dim`` + O ``d_attn->d`` (no biases)
    + router ``Linear(d, n_chapters)`` with bias (it scores every chapter, shared ones included)
    + for block variant B a second SwiGLU MLP and its RMSNorm weight.
    """
    m, mem = cfg.model, cfg.memory
    d = m.d_model
    d_bank, d_attn, kv_dim = memory_dims(cfg)
    attention = d + d * d_attn + 2 * d_bank * kv_dim + d_attn * d
    router = d * mem.n_chapters + mem.n_chapters
    mlp = 3 * d * m.d_ff + d if mem.block_variant == "B" else 0
    return attention + router + mlp


def count_params(cfg: RunConfig | str) -> dict[str, int]:
    """Exact parameter counts: ``{"total", "backbone", "bank", "memory_layers"}``.

    ``cfg`` is a config or a preset name / YAML path. Tied embeddings count once.

    >>> count_params("paper-moc")["total"]
    371292932
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    m = cfg.model
    embeddings = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    backbone = embeddings + m.n_layers * backbone_layer_params(cfg) + m.d_model  # + final norm
    n_mem = len(cfg.memory_layers)
    memory = n_mem * memory_layer_params(cfg) if n_mem else 0
    bank = n_banks(cfg) * bank_params(cfg) if n_mem else 0
    return {"total": backbone + bank + memory, "backbone": backbone, "bank": bank, "memory_layers": memory}
