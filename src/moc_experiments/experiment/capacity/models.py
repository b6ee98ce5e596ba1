"""The compared models' sizes and costs: parameters (embedding, backbone layers, memory layers, bank) and
FLOPs per token, from :mod:`moc.accounting`.

Inference FLOPs per token count the forward pass minus the bank's normalisation and K/V projections
(the bank is constant at inference, so a deployed model computes them once and caches them) and minus
the router's training losses; training FLOPs are 3x the forward at the run's micro-batch.
"""

from __future__ import annotations

from typing import Any

from moc.config import RunConfig
from moc_experiments.experiment.capacity.config import CapacityConfig, model_config

# Per-memory-layer FLOP terms a deployed model does not pay per token (see the module docstring).
_CACHED_TERMS = (
    "memory_attention.k_proj",
    "memory_attention.v_proj",
    "preprocess.rmsnorm",
    "reconstruct",
    "router_loss",
)


def flops_per_token(mcfg: RunConfig, seq_len: int, batch_size: int) -> dict[str, float]:
    """{"train": training FLOPs per token at this micro-batch, "inference": forward FLOPs per token with
    the bank's K/V cached}."""
    from moc.accounting import count_flops

    train = count_flops(mcfg, seq_len, batch_size=batch_size)
    fwd1 = count_flops(mcfg, seq_len)
    cached = 0
    mem = fwd1["breakdown"].get("memory_layer")
    if mem is not None:
        cached = mem["count"] * sum(mem["terms"].get(k, 0) for k in _CACHED_TERMS)
    return {"train": train["total"] / seq_len, "inference": (fwd1["forward"] - cached) / seq_len}


def params(mcfg: RunConfig) -> dict[str, int]:
    """:func:`moc.accounting.count_params` plus ``embedding`` (the token table, counted once when tied) and
    ``non_embedding`` (everything else: backbone layers, memory layers, bank)."""
    from moc.accounting import count_params

    p = dict(count_params(mcfg))
    m = mcfg.model
    p["embedding"] = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    p["non_embedding"] = p["total"] - p["embedding"]
    return p


def model_records(cfg: CapacityConfig, vocab_size: int, L: int) -> dict[str, dict[str, Any]]:
    """Per model: label, size, parameters, FLOPs per token and memory settings (results.json "models")."""
    models: dict[str, Any] = {}
    for key in cfg.models:
        mcfg = model_config(cfg, key, vocab_size, L)
        spec = cfg.models[key] or {}
        mem = mcfg.memory
        rec: dict[str, Any] = {
            "label": spec.get("label", key),
            "d_model": mcfg.model.d_model,
            "n_layers": mcfg.model.n_layers,
            "params": params(mcfg),
            "flops_per_token": flops_per_token(mcfg, L, cfg.train.batch_size),
            "lr_scale": spec.get("lr_scale", 1.0),
        }
        if mcfg.memory_layers:
            rec["memory"] = {
                "layers": mcfg.memory_layers,
                "routing": mem.routing,
                "causal_chunk_size": mem.causal_chunk_size if mem.routing == "causal" else None,
                "causal_first_chunk": mem.causal_first_chunk if mem.routing == "causal" else None,
                "n_tokens": mem.n_tokens,
                "n_chapters": mem.n_chapters,
                "chapter_size": mem.chapter_size,
                "tokens_read": mem.n_selected_tokens,
                "top_k": mem.top_k,
                "chapter_weighting": mem.chapter_weighting,
                "bank_lr_scale": spec.get("bank_lr_scale", cfg.train.bank_lr_scale),
                "memory_lr_scale": spec.get("memory_lr_scale", cfg.train.memory_lr_scale),
            }
        models[key] = rec
    return models
