"""Typed configuration: one dataclass per section, loadable from YAML, presets and ``--set`` overrides.

A full config has the sections ``model``, ``memory``, ``train`` and ``data``. Only ``model`` and
``memory`` shape the network; ``train`` and ``data`` are read by the training engine.

    cfg = load_config("tiny-moc", overrides=["memory.top_k=2"])
    cfg.memory.resolved_layers(cfg.model.n_layers)  # -> [1, 3]
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and how to fix it."""


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
    # Learning rates per parameter group; None means "same as lr".
    lr: float = 3e-4
    memory_lr: float | None = None
    bank_lr: float | None = None
    weight_decay: float = 0.1
    memory_weight_decay: float | None = None
    bank_weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
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


@dataclass
class MoCConfig:
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

    def replace(self, overrides: list[str] | dict[str, Any]) -> MoCConfig:
        """A copy with ``key.sub=value`` overrides applied (validated)."""
        d = self.to_dict()
        _apply_overrides(d, overrides)
        return from_dict(d)

    @property
    def memory_layers(self) -> list[int]:
        return self.memory.resolved_layers(self.model.n_layers)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def validate(cfg: MoCConfig) -> None:
    m, mem = cfg.model, cfg.memory
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


# --------------------------------------------------------------------------------------------------
# Loading: dicts, YAML, presets, overrides
# --------------------------------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "memory": MemoryConfig,
    "train": TrainConfig,
    "data": DataConfig,
}


def _suggest(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid {_type_name(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        choices = ", ".join(repr(a) for a in typing.get_args(tp))
        raise ConfigError(f"{key}: {value!r} is not one of {choices}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only the annotations above are used
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _section_from_dict(cls: type, d: dict[str, Any], prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in names:
            raise ConfigError(f"unknown key {prefix}.{key}{_suggest(key, names)}")
        kwargs[key] = _check_type(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def from_dict(d: dict[str, Any]) -> MoCConfig:
    """Build a validated config from a nested dict (unknown keys and wrong types are errors)."""
    d = dict(d or {})
    unknown = [k for k in d if k not in _SECTIONS and k != "name"]
    if unknown:
        k = unknown[0]
        raise ConfigError(f"unknown section {k!r}{_suggest(k, [*_SECTIONS, 'name'])}")
    sections = {k: _section_from_dict(cls, d.get(k) or {}, k) for k, cls in _SECTIONS.items()}
    name = d.get("name", "custom")
    if not isinstance(name, str):
        raise ConfigError(f"name: expected str, got {name!r}")
    return MoCConfig(**sections, name=name)


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value, e.g. memory.top_k=16")
    key, raw = item.split("=", 1)
    key = key.strip()
    if key.startswith("--set"):
        key = key[len("--set") :].strip()
    return key, yaml.safe_load(raw) if raw.strip() else ""


def _apply_overrides(d: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> None:
    if not overrides:
        return
    items = overrides.items() if isinstance(overrides, dict) else map(_parse_override, overrides)
    for key, value in items:
        parts = key.split(".")
        if key == "name":
            d["name"] = value
            continue
        if len(parts) != 2:
            raise ConfigError(f"override key {key!r} must be section.key, e.g. memory.top_k")
        section, name = parts
        if section not in _SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} in override {key!r}{_suggest(section, _SECTIONS)}"
            )
        d.setdefault(section, {})
        if d[section] is None:
            d[section] = {}
        d[section][name] = value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(
    name_or_path: str | Path | dict[str, Any] | MoCConfig,
    overrides: list[str] | dict[str, Any] | None = None,
) -> MoCConfig:
    """Load a preset by name, a YAML file, a dict or a config, then apply ``key.sub=value`` overrides.

    A YAML file may start from a preset with ``base: PRESET_OR_PATH`` and override sections on top.
    """
    if isinstance(name_or_path, MoCConfig):
        d = name_or_path.to_dict()
    elif isinstance(name_or_path, dict):
        d = dict(name_or_path)
    else:
        d = _read_yaml_or_preset(str(name_or_path))
    d = resolve_base(d, _read_yaml_or_preset)
    _apply_overrides(d, overrides)
    return from_dict(d)


def _read_yaml_or_preset(spec: str) -> dict[str, Any]:
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file {spec} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {spec} must hold a mapping of sections")
        data.setdefault("name", path.stem)
        return data
    preset = PRESET_DIR / f"{spec}.yaml"
    if not preset.exists():
        raise ConfigError(
            f"no preset or file named {spec!r}{_suggest(spec, preset_names())}; "
            f"presets: {', '.join(preset_names())}"
        )
    data = yaml.safe_load(preset.read_text()) or {}
    data.setdefault("name", spec)
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, merging nested mappings key by key."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_base(
    d: dict[str, Any],
    read: Callable[[str], dict[str, Any]],
    what: str = "config",
    seen: set[str] | None = None,
) -> dict[str, Any]:
    """Follow ``base: NAME_OR_PATH`` chains (read with ``read``), merging each child over its parent."""
    seen = set() if seen is None else seen
    base = d.pop("base", None)
    if base is None:
        return d
    if base in seen:
        raise ConfigError(f"{what} 'base' chain loops at {base!r}")
    seen.add(base)
    return deep_merge(resolve_base(read(str(base)), read, what, seen), d)
