"""The capacity experiment's configuration: world, recipe, models (overrides of one base), seeds.

cfg = load_capacity("capacity-bits", ["seeds=5"])     # a preset name, YAML path or dict + overrides
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from moc.config import ConfigError, RunConfig, deep_merge, load_config, read_yaml
from moc.configio import at_least, check_type, load, presets_in, read_spec, refuse_non_finite, within

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class WorldSettings:
    """The knowledge world. ``kind: single_token`` (:class:`~moc_experiments.corpus.world.KnowledgeWorld`:
    one vocabulary word per name, so a name's embedding row can hold its facts) or ``compositional``
    (:class:`~moc_experiments.corpus.compositional.CompositionalWorld`: first x last name tokens shared by
    many people, compact or sentence biographies). ``first_names``, ``last_names`` and ``doc_form`` apply
    to the compositional world only."""

    kind: Literal["single_token", "compositional"] = "single_token"
    n_people: int = 500
    n_attributes: int = 5
    n_values: int = 30
    qa_fraction: float = 0.5
    first_names: int = 64
    last_names: int = 64
    doc_form: Literal["compact", "sentence"] = "compact"
    seed: int = 0


@dataclass
class CapacityTrain:
    """One recipe for every model: AdamW, linear warmup, cosine decay to ``min_lr_ratio``.

    Run length: ``exposures`` (training documents per person, when set) or ``tokens`` (real tokens).
    ``pack``: documents are packed into rows of up to ``pack_len`` tokens (whole documents, position ids
    restarting at each one, block-diagonal attention) instead of one right-padded document per row.
    ``saturation_seeds``: that many seeds also train every model at half the run length, for the
    saturation check (is a model capacity-bound: does doubling its exposures raise its bits < 10%?)."""

    tokens: int = 1_200_000
    exposures: float | None = None
    batch_size: int = 32  # documents per step
    pack: bool = False
    pack_len: int = 64
    lr: float = 3e-3
    memory_lr_scale: float = 1.0
    bank_lr_scale: float = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    qa_doc_fraction: float = 0.3  # share of documents that are question documents (of qa_people)
    saturation_seeds: int = 0
    log_every: int = 25
    # Train through torch.compile (the CPU fast path of token routing: the read's ops fused; the dense
    # models compiled alike). Changes rounding, not the recipe: runs stay comparable within one setting.
    compile: bool = False
    # AdamW fused (``train.fused_optimizer`` of moc). Off by default: the records made before it existed
    # ran unfused, and a sweep's runs stay comparable within one setting (it changes rounding only).
    fused_optimizer: bool = False


@dataclass
class CapacityText:
    """Real text mixed into pretraining (the paper's retention protocol; 0: the world alone).

    ``fraction`` of the pretraining documents are ``[BOS] + a window of real text`` from the offline demo
    corpus (:func:`moc_experiments.corpus.build_corpus`, built or reused in ``corpus_dir``; default
    ``OUT/data/corpus``), word-tokenised in the world's vocabulary extended by the ``vocab_words`` most
    frequent real-text words (:mod:`moc_experiments.corpus.world_text`)."""

    fraction: float = 0.0
    vocab_words: int = 2000
    max_text_mb: float = 2.0
    corpus_dir: str | None = None


@dataclass
class CapacityIft:
    """Instruction fine-tuning after pretraining (0 steps: none), then recall and bits again.

    ``data``: the chat form of the world's questions about ``qa_people`` (``world_chat``) or the corpus's
    real chat examples (``real_chat``: loss on the assistant's answer only). MoC models run each of
    ``variants`` (``full``: nothing frozen, one LR; ``frozen``: bank frozen; ``low_lr``: memory layers and
    bank at ``memory_lr_scale`` / ``bank_lr_scale``; ``memory_frozen``: bank, router and memory attention
    frozen); dense models one full run. ``lr_ratio``: each model's IFT LR is that fraction of its own
    pretraining LR.
    ``gentle``: also a gentler IFT of every model (LR x ``gentle_lr_scale``, and ``gentle_replay`` of each
    batch replaced by pretraining documents), so retention is not only "everything is erased"."""

    steps: int = 0
    data: Literal["world_chat", "real_chat"] = "world_chat"
    lr: float = 1e-3
    # When set, each model's IFT LR is this fraction of its own pretraining LR (train.lr x lr_scale)
    # instead of ``lr`` for every model.
    lr_ratio: float | None = None
    memory_lr_scale: float = 0.5
    bank_lr_scale: float = 0.16667
    batch_size: int = 32
    warmup_steps: int = 10
    variants: list[Literal["full", "frozen", "low_lr", "memory_frozen"]] = field(
        default_factory=lambda: ["frozen", "low_lr"]
    )
    gentle: bool = False
    gentle_lr_scale: float = 0.3
    gentle_replay: float = 0.5


@dataclass
class CapacityConfig:
    """The experiment: world, base model, recipe, the models compared (overrides of the base), seeds."""

    name: str = "capacity"
    description: str = ""
    world: WorldSettings = field(default_factory=WorldSettings)
    base: dict[str, Any] = field(default_factory=dict)  # RunConfig sections model/memory
    train: CapacityTrain = field(default_factory=CapacityTrain)
    text: CapacityText = field(default_factory=CapacityText)
    ift: CapacityIft = field(default_factory=CapacityIft)
    # key -> {label, model: {...}, memory: {...}, lr_scale, memory_lr_scale, bank_lr_scale}
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Pairs [moc_key, dense_key] whose difference the report states (paired over seeds).
    compare: list[list[str]] = field(default_factory=list)
    # The dense backbone the others extend: marginal bits per extra inference FLOP are measured against it.
    baseline: str | None = None
    seed: int = 0
    seeds: int = 3
    workers: int = 0  # processes side by side (0: one per core, at most 2 on CPU)
    threads: int = 1  # torch threads per process (1: never oversubscribe a small CPU)
    out_dir: str | None = None
    # Reuse runs (model, seed) already in OUT/results.json when the world, recipe and model are unchanged,
    # so more seeds or models can be added to a finished or interrupted experiment.
    resume: bool = True
    # A folder (e.g. in the repository) that keeps every finished run as its own small JSON file, so a
    # sweep longer than one working session continues from them on another machine or a fresh clone:
    # `moc-lab run` reuses the records whose recipe and model match and trains only the rest.
    records: str | None = None
    # More records folders to reuse runs from (read only; e.g. a shorter sweep whose full runs are this
    # sweep's half-length runs). New runs are written to ``records`` only.
    reuse_records: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    @property
    def uses_corpus(self) -> bool:
        """Whether any real text or real chat data is used (only then is the corpus built or read)."""
        return self.text.fraction > 0 or self.ift.data == "real_chat"

    @property
    def corpus_dir(self) -> Path:
        return Path(self.text.corpus_dir) if self.text.corpus_dir else self.run_dir / "data" / "corpus"

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MODEL_KEYS = ("label", "model", "memory", "lr_scale", "memory_lr_scale", "bank_lr_scale")


def capacity_presets() -> list[str]:
    return presets_in(PRESET_DIR)


def is_capacity(spec: str) -> bool:
    """Whether ``spec`` names a capacity preset or a YAML file with ``kind: capacity``."""
    if spec in capacity_presets():
        return True
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = read_yaml(path, "experiment file") or {}
        return isinstance(data, dict) and data.get("kind") == "capacity"
    return False


def _read_capacity(spec: str) -> dict[str, Any]:
    """A capacity preset or YAML file as a mapping (its ``kind: capacity`` marker dropped)."""
    d = read_spec(spec, PRESET_DIR, "capacity")
    d.pop("kind", None)
    return d


def load_capacity(spec: str | Path | dict[str, Any], overrides: list[str] | None = None) -> CapacityConfig:
    """A capacity preset name, YAML path or dict, plus ``--set key.sub=value`` overrides.

    A preset may build on another with ``extends: NAME`` (``base`` is the models' base config here);
    a child that lists ``models`` replaces the parent's models instead of adding to them.
    """
    if isinstance(spec, dict):
        spec = copy.deepcopy(spec)
        spec.pop("kind", None)
    cfg = load(
        CapacityConfig, spec, overrides, _read_capacity, what="capacity", parent_key="extends",
        replace=("models",),
    )  # fmt: skip
    _validate(cfg)
    return cfg


def _validate(cfg: CapacityConfig) -> None:
    refuse_non_finite(cfg)  # a NaN learning rate would train every run at loss nan and exit 0
    _validate_numbers(cfg)
    _validate_world(cfg.world)
    if not cfg.models:
        raise ConfigError("capacity: `models` is empty; list at least one model (e.g. dense_backbone: {})")
    for key, m in cfg.models.items():
        bad = sorted(set(m or {}) - set(MODEL_KEYS))
        if bad:
            raise ConfigError(f"models.{key}: unknown key(s) {bad}; known: {list(MODEL_KEYS)}")
        for scale in ("lr_scale", "memory_lr_scale", "bank_lr_scale"):
            if scale in (m or {}):
                m[scale] = check_type(m[scale], float, f"models.{key}.{scale}")
                if m[scale] < 0:
                    raise ConfigError(f"models.{key}.{scale} must be >= 0, got {m[scale]}")
        model_config(cfg, key, vocab_size=1024, seq_len=1)  # its model/memory values, named models.KEY
    for pair in cfg.compare:
        if len(pair) != 2 or any(k not in cfg.models for k in pair):
            raise ConfigError(f"compare: {pair} must be two keys of `models` ({list(cfg.models)})")
    if cfg.baseline is not None and cfg.baseline not in cfg.models:
        raise ConfigError(f"baseline: {cfg.baseline!r} is not a key of `models` ({list(cfg.models)})")
    t = cfg.train
    if cfg.seeds < 1 or t.tokens <= 0 or t.batch_size <= 0:
        raise ConfigError("capacity: seeds, train.tokens and train.batch_size must be positive")
    if t.exposures is not None and t.exposures <= 0:
        raise ConfigError(f"train.exposures must be positive (documents per person), got {t.exposures}")
    if not 0 <= t.saturation_seeds <= cfg.seeds:
        raise ConfigError(
            f"train.saturation_seeds must be in [0, seeds={cfg.seeds}], got {t.saturation_seeds}"
        )
    if not 0 <= cfg.text.fraction < 1:
        raise ConfigError(f"text.fraction must be in [0, 1), got {cfg.text.fraction}")
    if cfg.text.vocab_words < 0 or cfg.text.max_text_mb <= 0:
        raise ConfigError("text.vocab_words must be >= 0 and text.max_text_mb > 0")
    if not 0 <= cfg.ift.gentle_replay < 1 or cfg.ift.gentle_lr_scale <= 0:
        raise ConfigError("ift.gentle_replay must be in [0, 1) and ift.gentle_lr_scale > 0")
    if cfg.world.kind == "compositional" and cfg.text.fraction > 0:
        raise ConfigError(
            "text.fraction > 0 needs world.kind: single_token (real text uses its word vocabulary)"
        )


def _validate_numbers(cfg: CapacityConfig) -> None:
    """Counts, rates and fractions that cannot make sense, named by key (before any world is built)."""
    t, ift = cfg.train, cfg.ift
    at_least(cfg, "capacity", ("workers",), 0)
    at_least(cfg, "capacity", ("threads",), 1)
    at_least(t, "train", ("lr", "pack_len", "log_every"), 0, strict=True)
    at_least(t, "train", ("memory_lr_scale", "bank_lr_scale", "weight_decay", "grad_clip", "warmup_steps"), 0)
    within(t.min_lr_ratio, "train.min_lr_ratio", 0, 1, high_open=False)
    within(t.qa_doc_fraction, "train.qa_doc_fraction", 0, 1, high_open=False)
    at_least(ift, "ift", ("steps", "warmup_steps", "memory_lr_scale", "bank_lr_scale"), 0)
    at_least(ift, "ift", ("lr", "batch_size"), 0, strict=True)


def _validate_world(w: WorldSettings) -> None:
    """The world's sizes, checked here so an impossible world is a ConfigError naming the key, not an
    error from deep inside the data preparation."""
    from moc_experiments.corpus.world import ATTRIBUTES

    at_least(w, "world", ("n_people", "n_values"), 2)
    within(w.n_attributes, "world.n_attributes", 1, len(ATTRIBUTES), high_open=False)
    within(w.qa_fraction, "world.qa_fraction", 0, 1)
    if w.kind != "compositional":
        return
    at_least(w, "world", ("first_names", "last_names"), 1)
    if w.n_people > w.first_names * w.last_names:
        raise ConfigError(
            f"world.n_people={w.n_people} is more than the {w.first_names * w.last_names} first x last name "
            "pairs; raise world.first_names / world.last_names or lower world.n_people"
        )
    if w.n_people < 2 * max(w.first_names, w.last_names):
        raise ConfigError(
            f"world.n_people={w.n_people} is less than twice the larger name pool "
            f"({max(w.first_names, w.last_names)}), so some name would identify one person; lower "
            "world.first_names / world.last_names or raise world.n_people"
        )


def model_config(cfg: CapacityConfig, key: str, vocab_size: int, seq_len: int) -> RunConfig:
    """The RunConfig of model ``key``: the base with the model's ``model``/``memory`` overrides."""
    spec = cfg.models[key] or {}
    d: dict[str, Any] = {"model": {}, "memory": {}}
    d = deep_merge(d, copy.deepcopy(cfg.base))
    d = deep_merge(d, {"model": spec.get("model") or {}, "memory": spec.get("memory") or {}})
    d["model"].update(vocab_size=vocab_size, max_seq_len=max(seq_len, d["model"].get("max_seq_len", 0)))
    d["name"] = key
    try:
        return load_config(d)
    except ConfigError as e:
        raise ConfigError(f"models.{key}: {e}") from None
