"""Typed configuration: one dataclass per section, loadable from YAML, presets and ``--set`` overrides.

A full config has the sections ``model``, ``memory``, ``train`` and ``data``. Only ``model`` and
``memory`` shape the network; ``train`` and ``data`` are read by the training engine.

    cfg = load_config("tiny-moc", overrides=["memory.top_k=2"])
    cfg.memory.resolved_layers(cfg.model.n_layers)  # -> [1, 3]
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from moc.configio import (
    ConfigError,
    apply_overrides,
    at_least,
    build,
    deep_merge,
    load,
    parse_yaml_value,
    presets_in,
    read_spec,
    read_yaml,
    refuse_non_finite,
    resolve_base,
    within,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "MemoryConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "deep_merge",
    "from_dict",
    "load_config",
    "parse_yaml_value",
    "preset_names",
    "read_yaml",
    "resolve_base",
    "validate",
    "validate_schedule",
    "validate_train",
]

PRESET_DIR = Path(__file__).parent / "presets"


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The Llama-style backbone."""

    vocab_size: int = 49152
    d_model: int = 768
    n_layers: int = 16
    n_heads: int = 12
    n_kv_heads: int = 4
    d_ff: int = 2304
    max_seq_len: int = 1024
    rope_theta: float = 100000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    # Overrides for the residual-branch output projections (None: use init_std).
    attn_out_init_std: float | None = None
    mlp_down_init_std: float | None = None
    # Self-attention over packed documents (position ids that restart): "sdpa" = a dense boolean
    # block-diagonal mask (fine on CPU / short rows), "flex" = a FlexAttention block mask (block-sparse,
    # compiled on CUDA), "auto" = flex on CUDA, sdpa elsewhere. Rows of one document use causal SDPA.
    attention_backend: Literal["auto", "sdpa", "flex"] = "auto"
    # LM loss with labels: project to the vocabulary and take the cross-entropy this many tokens at a
    # time, recomputing each chunk's logits in backward, so full (tokens x vocab) fp32 logits are never
    # held (0: one shot). Only when the caller does not ask for the logits.
    loss_chunk_size: int = 4096

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class MemoryConfig:
    """The Mixture-of-Chapters memory: bank, chapters, router and memory cross-attention."""

    enabled: bool = False
    # Which blocks read memory: an explicit list of 0-indexed layers, or one of
    # "all", "first:K", "last:K", "every:N" (layers 0, N, 2N, ...), "every:N:OFFSET".
    layers: list[int] | str = field(default_factory=list)
    block_variant: Literal["A", "B"] = "A"
    n_tokens: int = 262208
    n_chapters: int = 4097
    n_shared_chapters: int = 1
    top_k: int = 64
    routed_scaling_factor: float = 2.5
    n_heads: int = 12
    n_kv_heads: int = 12
    routing: Literal["causal", "sequence", "token"] = "causal"
    # causal routing: positions [g*S, (g+1)*S) share one routing decision, made from the mean of
    # the hidden states at positions < g*S (chunk 0 routes from the router bias alone).
    causal_chunk_size: int = 64
    # causal routing, a document's first chunk (which has seen nothing before it): "bias" = one decision
    # from the router bias alone, the same chapters for every document; "per_token" = each of its
    # positions is its own decision, from the mean of the document's positions before it (so a short
    # prompt is routed by its content; costs chunk - 1 extra one-query tiles per document).
    causal_first_chunk: Literal["bias", "per_token"] = "bias"
    # How a selected chapter's weight enters the read: "kv" scales the memory vectors before W_K and
    # W_V (the paper), "v" scales only the values, "logit" adds log(weight) to that chapter's logits.
    chapter_weighting: Literal["kv", "v", "logit"] = "kv"
    # Who runs the routed read: "auto" = the Triton kernels on CUDA, the C kernels on the CPU (small
    # reads; built with the system C compiler on first use) where they can run, else the PyTorch loops
    # (saying once why); "triton" = the Triton kernels or an error naming why not; "torch" = the loops.
    # The router head follows it on the CPU: C kernels under "auto", PyTorch ops otherwise.
    kernel: Literal["auto", "triton", "torch"] = "auto"
    # What the router pools: "memory_norm" = RMSNorm(h) at the memory layer's input (ours);
    # "block_input" = the block's input residual stream, before self-attention (the paper's code).
    router_input: Literal["memory_norm", "block_input"] = "memory_norm"
    # How the router aux losses of the memory layers combine: "sum" (ours) or "mean" (the paper's code).
    aux_loss_reduction: Literal["sum", "mean"] = "sum"
    # One bank for all memory layers ("shared"), one per memory layer ("per_layer"), or one per
    # group of `bank_group_size` consecutive memory layers ("grouped").
    bank_sharing: Literal["shared", "per_layer", "grouped"] = "shared"
    bank_group_size: int = 2
    # "full": N_m x d; "factorized": A (N_m x rank) @ B^T (rank x d);
    # "reduced": stored in bank_dim dims, memory attention runs in bank_dim dims.
    bank_type: Literal["full", "factorized", "reduced"] = "full"
    bank_rank: int = 64
    bank_dim: int = 256
    bank_init_std: float = 0.02
    load_balance_coef: float = 0.01
    z_loss_coef: float = 0.001

    @property
    def chapter_size(self) -> int:
        return self.n_tokens // self.n_chapters

    @property
    def n_routed_chapters(self) -> int:
        return self.n_chapters - self.n_shared_chapters

    @property
    def n_selected_chapters(self) -> int:
        return self.n_shared_chapters + self.top_k

    @property
    def n_selected_tokens(self) -> int:
        return self.n_selected_chapters * self.chapter_size

    def resolved_layers(self, n_layers: int) -> list[int]:
        """The sorted 0-indexed memory layers for a backbone of ``n_layers`` blocks."""
        if not self.enabled:
            return []
        spec = self.layers
        if isinstance(spec, list):
            return sorted(spec)
        parts = spec.split(":")
        try:
            if parts[0] == "all" and len(parts) == 1:
                return list(range(n_layers))
            if parts[0] == "first" and len(parts) == 2:
                return list(range(min(int(parts[1]), n_layers)))
            if parts[0] == "last" and len(parts) == 2:
                return list(range(max(n_layers - int(parts[1]), 0), n_layers))
            if parts[0] == "every" and len(parts) in (2, 3):
                step, offset = int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
                if step <= 0:
                    raise ValueError
                return list(range(offset, n_layers, step))
        except ValueError:
            pass
        raise ConfigError(
            f"memory.layers: cannot read {spec!r}; use a list of 0-indexed layers like [2, 6] or one of "
            "'all', 'first:K', 'last:K', 'every:N', 'every:N:OFFSET'"
        )


@dataclass
class TrainConfig:
    """Optimisation and run control (read by ``moc.train``)."""

    seed: int = 0
    out_dir: str = "runs/default"
    seq_len: int = 1024
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 1000
    # Train for this many passes over the training windows instead of max_steps (null: use max_steps):
    # max_steps = ceil(epochs * windows / global batch), set when the data is opened.
    epochs: float | None = None
    # Learning rates per parameter group; None means "same as lr".
    lr: float = 3e-4
    memory_lr: float | None = None
    bank_lr: float | None = None
    weight_decay: float = 0.1
    # true: weight decay on every parameter, norms, biases, embeddings and bank included (the paper's
    # runs; the bank then decays at bank_weight_decay); false: 0/1-D tensors and embeddings are exempt.
    weight_decay_all: bool = False
    memory_weight_decay: float | None = None
    bank_weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # PyTorch's fused AdamW (``torch.optim.AdamW(fused=True)``): one kernel per group instead of about ten
    # per tensor, ~4x faster on the CPU at MoC's bank sizes. The same update; the rounding differs.
    fused_optimizer: bool = True
    # CPU training: glibc's malloc keeps freed memory in the process (moc.train.allocator), so each step
    # reuses mapped pages instead of faulting in fresh ones (up to a fifth of a small model's step here).
    # The process then holds its peak heap until it exits. The same maths either way.
    retain_freed_memory: bool = True
    grad_clip: float = 1.0
    freeze_bank: bool = False
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = 0
    # WSD: decay starts at this step (int) or fraction of max_steps (float in (0, 1]).
    decay_start: float = 0.85
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    min_lr_ratio: float = 0.1
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    parallel: Literal["ddp", "fsdp"] = "ddp"
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 200
    keep_last: int = 2
    # A fresh (not --resume) run refuses an out_dir that already holds checkpoints unless this is true,
    # in which case the old checkpoints are deleted.
    overwrite: bool = False
    log_every: int = 10
    nan_policy: Literal["stop", "skip"] = "stop"
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "moc"
    # Peak FLOP/s of one accelerator for the MFU readout (H100/H200 dense bf16: 989 TFLOP/s).
    mfu_peak_flops: float = 989.0e12
    progress: bool = True


@dataclass
class DataConfig:
    """Where tokens come from (read by ``moc.data``)."""

    train: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    prepared_dir: str | None = None
    text_field: str = "text"
    val_fraction: float = 0.01
    chat_template: str | None = None
    # How a .txt source splits into documents: the whole file, each non-blank line, or each
    # blank-line-separated paragraph.
    txt_mode: Literal["file", "line", "paragraph"] = "file"
    # Seeds only the choice of held-out documents, so runs with different train.seed share one val set.
    split_seed: int = 0
    # Packed training windows carry per-document position ids (restarting at each document) so the model
    # keeps documents apart; false: one position run per window across documents.
    separate_documents: bool = True


@dataclass
class RunConfig:
    """The whole configuration. ``model`` + ``memory`` define the network."""

    model: ModelConfig = field(default_factory=ModelConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    name: str = "custom"

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    def replace(self, overrides: list[str] | dict[str, Any]) -> RunConfig:
        """A copy with ``key.sub=value`` overrides applied (validated)."""
        d = self.to_dict()
        apply_overrides(d, overrides, _OVERRIDE_EXAMPLE)
        return from_dict(d)

    @property
    def memory_layers(self) -> list[int]:
        return self.memory.resolved_layers(self.model.n_layers)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate(cfg: RunConfig) -> None:
    m, mem = cfg.model, cfg.memory
    refuse_non_finite(cfg)
    validate_values(cfg)
    for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key} must be positive, got {getattr(m, key)}")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}; "
            "pick n_heads so that d_model / n_heads is a whole head size"
        )
    if m.n_heads % m.n_kv_heads:
        raise ConfigError(
            f"model.n_kv_heads={m.n_kv_heads} does not divide model.n_heads={m.n_heads} "
            "(grouped-query attention shares each KV head across n_heads / n_kv_heads query heads)"
        )
    if m.head_dim % 2:
        raise ConfigError(f"head size d_model / n_heads = {m.head_dim} must be even for RoPE")
    if m.loss_chunk_size < 0:
        raise ConfigError(
            f"model.loss_chunk_size must be >= 0 (tokens per loss chunk, 0 = one shot), "
            f"got {m.loss_chunk_size}"
        )
    if not mem.enabled:
        return
    for key in ("n_tokens", "n_chapters", "top_k", "n_heads", "n_kv_heads", "causal_chunk_size"):
        if getattr(mem, key) <= 0:
            raise ConfigError(f"memory.{key} must be positive, got {getattr(mem, key)}")
    if mem.n_tokens % mem.n_chapters:
        raise ConfigError(
            f"memory.n_tokens={mem.n_tokens} is not divisible by memory.n_chapters={mem.n_chapters}; "
            f"every chapter holds the same number of tokens (e.g. n_tokens="
            f"{mem.n_chapters * max(mem.n_tokens // mem.n_chapters, 1)})"
        )
    if not 0 <= mem.n_shared_chapters < mem.n_chapters:
        raise ConfigError(
            f"memory.n_shared_chapters={mem.n_shared_chapters} must be in [0, n_chapters={mem.n_chapters})"
        )
    if mem.top_k > mem.n_routed_chapters:
        raise ConfigError(
            f"memory.top_k={mem.top_k} is larger than the {mem.n_routed_chapters} routed chapters "
            f"(n_chapters - n_shared_chapters); lower top_k or add chapters"
        )
    attn_dim = mem.bank_dim if mem.bank_type == "reduced" else m.d_model
    where = "memory.bank_dim" if mem.bank_type == "reduced" else "model.d_model"
    if attn_dim % mem.n_heads:
        raise ConfigError(f"memory.n_heads={mem.n_heads} does not divide {where}={attn_dim}")
    if mem.n_heads % mem.n_kv_heads:
        raise ConfigError(f"memory.n_kv_heads={mem.n_kv_heads} does not divide memory.n_heads={mem.n_heads}")
    if mem.bank_type == "factorized" and mem.bank_rank <= 0:
        raise ConfigError(f"memory.bank_rank must be positive, got {mem.bank_rank}")
    if mem.bank_type == "reduced" and mem.bank_dim <= 0:
        raise ConfigError(f"memory.bank_dim must be positive, got {mem.bank_dim}")
    if mem.bank_sharing == "grouped" and mem.bank_group_size <= 0:
        raise ConfigError(f"memory.bank_group_size must be positive, got {mem.bank_group_size}")
    layers = mem.resolved_layers(m.n_layers)
    bad = [i for i in layers if not 0 <= i < m.n_layers]
    if bad:
        raise ConfigError(
            f"memory.layers has {bad} out of range for model.n_layers={m.n_layers} "
            f"(valid 0-indexed layers: 0..{m.n_layers - 1})"
        )
    if len(set(layers)) != len(layers):
        raise ConfigError(f"memory.layers lists a layer twice: {layers}")
    if not layers:
        raise ConfigError(
            "memory.enabled is true but memory.layers selects no layer; list some layers or set "
            "memory.enabled=false"
        )


def validate_values(cfg: RunConfig) -> None:
    """Numbers no use of a config can want, refused whatever the config is for (building a model,
    training, counting): a negative learning rate trains uphill, ``rope_theta=0`` or ``norm_eps<0``
    gives NaN at the first step, a negative count means nothing."""
    m, mem, t = cfg.model, cfg.memory, cfg.train
    at_least(m, "model", ("rope_theta", "norm_eps"), 0, strict=True)
    at_least(m, "model", ("init_std", "attn_out_init_std", "mlp_down_init_std"), 0)
    at_least(mem, "memory", ("routed_scaling_factor",), 0, strict=True)
    at_least(mem, "memory", ("bank_init_std", "load_balance_coef", "z_loss_coef"), 0)
    at_least(t, "train", ("lr", "memory_lr", "bank_lr"), 0)
    at_least(t, "train", ("weight_decay", "memory_weight_decay", "bank_weight_decay", "grad_clip"), 0)
    at_least(t, "train", ("eval_every", "eval_batches", "save_every", "keep_last", "log_every"), 0)
    at_least(t, "train", ("eps", "mfu_peak_flops"), 0, strict=True)
    within(t.beta1, "train.beta1", 0, 1)
    within(t.beta2, "train.beta2", 0, 1)
    within(cfg.data.val_fraction, "data.val_fraction", 0, 1)


def validate_train(cfg: RunConfig) -> None:
    """The checks a training run adds to :func:`validate`, the LR schedule's included (called by
    ``moc.train`` before any work; a config that only builds a model may leave ``train`` inconsistent)."""
    t = cfg.train
    for key in ("seq_len", "micro_batch_size", "grad_accum_steps", "max_steps"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive, got {getattr(t, key)}")
    if t.seq_len > cfg.model.max_seq_len:
        raise ConfigError(
            f"train.seq_len={t.seq_len} is longer than model.max_seq_len={cfg.model.max_seq_len}; "
            f"lower train.seq_len or raise model.max_seq_len"
        )
    if t.epochs is not None and t.epochs <= 0:
        raise ConfigError(f"train.epochs must be positive (or null to use train.max_steps), got {t.epochs}")
    validate_schedule(t)


def validate_schedule(t: TrainConfig) -> None:
    """The LR schedule's settings (also checked by :func:`moc.train.schedule.lr_multiplier`, which
    builds the schedule from them)."""
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    if t.max_steps <= 0:
        raise ConfigError(f"train.max_steps must be positive, got {t.max_steps}")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}")
    if t.schedule not in ("wsd", "cosine", "constant"):
        raise ConfigError(f"train.schedule: unknown schedule {t.schedule!r}; use wsd, cosine or constant")
    if t.schedule != "wsd":
        return
    if t.decay_start <= 0:
        raise ConfigError(
            f"train.decay_start must be > 0 (a step, or a fraction of max_steps), got {t.decay_start}"
        )
    # A fraction never starts before the end of warmup (short runs start decaying once it is done); a
    # step before it is an error.
    if t.decay_start > 1 and int(t.decay_start) < t.warmup_steps:
        raise ConfigError(
            f"train.decay_start resolves to step {int(t.decay_start)}, before the end of warmup "
            f"(train.warmup_steps={t.warmup_steps}); start the decay after warmup"
        )
    if t.decay_shape not in ("linear", "cosine", "1-sqrt"):
        raise ConfigError(f"train.decay_shape: unknown shape {t.decay_shape!r}; use linear, cosine or 1-sqrt")


# --------------------------------------------------------------------------------------------------
# Loading: dicts, YAML, presets, overrides (the generic machinery is moc.configio's)
# --------------------------------------------------------------------------------------------------

_OVERRIDE_EXAMPLE = "memory.top_k=16"


def from_dict(d: dict[str, Any]) -> RunConfig:
    """Build a validated config from a nested dict (unknown keys and wrong types are errors)."""
    return build(RunConfig, dict(d or {}))


def preset_names() -> list[str]:
    """The run-config presets shipped in ``moc/presets``."""
    return presets_in(PRESET_DIR)


def _read_yaml_or_preset(spec: str) -> dict[str, Any]:
    return read_spec(spec, PRESET_DIR, "config")


def load_config(
    name_or_path: str | Path | dict[str, Any] | RunConfig,
    overrides: list[str] | dict[str, Any] | None = None,
) -> RunConfig:
    """Load a preset by name, a YAML file, a dict or a config, then apply ``key.sub=value`` overrides.

    A YAML file may start from a preset with ``base: PRESET_OR_PATH`` and override sections on top.
    """
    if isinstance(name_or_path, dict):
        name_or_path = copy.deepcopy(name_or_path)  # overrides must not write into the caller's dict
    return load(RunConfig, name_or_path, overrides, _read_yaml_or_preset, example=_OVERRIDE_EXAMPLE)
