"""Hugging Face configuration of a Mixture-of-Chapters model (``model_type = "moc"``).

This file imports only ``transformers`` so that ``moc export`` can copy it into a model folder that
loads with ``trust_remote_code=True`` and no ``moc`` installed.

The network is described by the two config sections that shape it, stored as plain dicts exactly as
in moc's YAML configs, plus the resolved list of memory layers::

    {"model_type": "moc", "model": {"d_model": 768, ...}, "memory": {"enabled": true, "top_k": 64, ...},
     "memory_layers": [2, 6, 10, 14], ...}

The usual Hugging Face names (``hidden_size``, ``num_hidden_layers``, ``vocab_size``,
``max_position_embeddings``, ...) are derived from ``model`` for tools that read them (generation,
lm-evaluation-harness). A dense baseline is the same config with ``memory.enabled = false``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from transformers import PretrainedConfig

# Keys MoCModel reads from each section. Missing keys take these defaults (those of moc.config).
MODEL_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49152,
    "d_model": 768,
    "n_layers": 16,
    "n_heads": 12,
    "n_kv_heads": 4,
    "d_ff": 2304,
    "max_seq_len": 1024,
    "rope_theta": 100000.0,
    "norm_eps": 1e-5,
    "tie_embeddings": True,
    "init_std": 0.02,
    "attn_out_init_std": None,
    "mlp_down_init_std": None,
    "attention_backend": "auto",
    "loss_chunk_size": 4096,
}
MEMORY_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "layers": [],
    "block_variant": "A",
    "n_tokens": 262208,
    "n_chapters": 4097,
    "n_shared_chapters": 1,
    "top_k": 64,
    "routed_scaling_factor": 2.5,
    "n_heads": 12,
    "n_kv_heads": 12,
    "routing": "causal",
    "causal_chunk_size": 64,
    "causal_first_chunk": "bias",
    "chapter_weighting": "kv",
    "kernel": "auto",
    "router_input": "memory_norm",
    "bank_sharing": "shared",
    "bank_group_size": 2,
    "bank_type": "full",
    "bank_rank": 64,
    "bank_dim": 256,
    "bank_init_std": 0.02,
    "load_balance_coef": 0.01,
    "z_loss_coef": 0.001,
    "aux_loss_reduction": "sum",
}
ROUTING_MODES = ("causal", "sequence", "token")
# Hugging Face attribute names derived from the `model` section (never read back: `model` is the truth).
_DERIVED = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
)


class _ModelSection(SimpleNamespace):
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


class MoCConfig(PretrainedConfig):
    """Configuration of :class:`MoCForCausalLM`.

    Args:
        model: the ``model`` section of a moc config (backbone sizes), as a dict.
        memory: the ``memory`` section (bank, chapters, router), as a dict.
        memory_layers: the 0-indexed blocks that read memory (``memory.layers`` resolved); [] if dense.
        moc_name: the moc config's ``name`` (informational).
    """

    model_type = "moc"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        memory: dict[str, Any] | None = None,
        memory_layers: list[int] | None = None,
        moc_name: str = "custom",
        **kwargs: Any,
    ) -> None:
        unknown = sorted(set(model or {}) - set(MODEL_DEFAULTS))
        unknown += sorted(f"memory.{k}" for k in set(memory or {}) - set(MEMORY_DEFAULTS))
        if unknown:
            raise ValueError(
                f"MoCConfig: unknown config keys {unknown}; this model code is older than the config "
                "(re-export the checkpoint with the installed moc version)"
            )
        self.model = {**MODEL_DEFAULTS, **(model or {})}
        self.memory = {**MEMORY_DEFAULTS, **(memory or {})}
        self.memory_layers = sorted(int(i) for i in (memory_layers or []))
        self.moc_name = moc_name
        if self.memory["routing"] not in ROUTING_MODES:
            raise ValueError(f"memory.routing {self.memory['routing']!r} is not one of {ROUTING_MODES}")
        if self.memory_layers and not self.memory["enabled"]:
            raise ValueError(
                "memory_layers is set but memory.enabled is false; pass memory_layers=[] for dense"
            )
        if self.memory["enabled"] and not self.memory_layers:
            raise ValueError("memory.enabled is true but memory_layers is empty; list the memory layers")
        bad = [i for i in self.memory_layers if not 0 <= i < self.model["n_layers"]]
        if bad:
            raise ValueError(f"memory_layers {bad} out of range for model.n_layers={self.model['n_layers']}")
        for key in _DERIVED:
            kwargs.pop(key, None)
        kwargs.setdefault("use_cache", True)
        m = self.model
        super().__init__(tie_word_embeddings=bool(m["tie_embeddings"]), **kwargs)
        self.vocab_size = m["vocab_size"]
        self.hidden_size = m["d_model"]
        self.num_hidden_layers = m["n_layers"]
        self.num_attention_heads = m["n_heads"]
        self.num_key_value_heads = m["n_kv_heads"]
        self.intermediate_size = m["d_ff"]
        self.max_position_embeddings = m["max_seq_len"]
        self.rms_norm_eps = m["norm_eps"]

    @property
    def routing(self) -> str:
        """The memory routing mode ("causal", "sequence" or "token"); "none" for a dense model."""
        return self.memory["routing"] if self.memory_layers else "none"

    def to_moc_arch(self) -> SimpleNamespace:
        """The attribute object ``MoCModel`` is built from: ``.model``, ``.memory``, ``.memory_layers``."""
        memory = dict(self.memory)
        memory["layers"] = list(self.memory_layers)
        return SimpleNamespace(
            model=_ModelSection(**self.model),
            memory=SimpleNamespace(**memory),
            memory_layers=list(self.memory_layers),
        )
