"""Typed experiment configuration: data, the MoC model, the two training phases, evaluation, seeds.

An experiment YAML (or preset: ``demo``, ``smoke``, ``paper``; files ``presets/NAME.yaml`` beside this
module)::

    name: demo
    moc: {base: tiny-moc, model: {...}, memory: {...}, train: {...}}   # the MoC model + shared recipe
    data: {source: corpus, corpus: {max_text_mb: 2}, vocab_size: 4096}
    pretrain: {steps: 300, lr: 3.0e-3, memory_lr_scale: 2.0, bank_lr_scale: 2.0, schedule: wsd}
    ift: {steps: 60, lr: 3.0e-4, memory_lr_scale: 0.5, bank_lr_scale: 0.1667, variants: [frozen, low_lr]}
    baselines: [dense_backbone, dense_isoflop]
    leak_ablation: true

``load_experiment("demo", ["pretrain.steps=10", "moc.memory.top_k=2"])`` applies ``--set`` overrides
with dotted paths of any depth. A YAML may start from another with ``base: demo``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from moc import configio
from moc.config import ConfigError, RunConfig, load_config
from moc.configio import build, presets_in, read_spec

EXPERIMENT_PRESET_DIR = Path(__file__).parent / "presets"
_OVERRIDE_EXAMPLE = "pretrain.steps=100"
IFT_VARIANTS = ("frozen", "low_lr")
BASELINES = ("dense_backbone", "dense_isoflop")


@dataclass
class CorpusSettings:
    """Arguments of :func:`moc_experiments.corpus.build_corpus` (the offline demo corpus)."""

    max_text_mb: float = 2.0
    seed: int = 0
    sources: list[str] | None = None
    relations: list[str] | None = None
    fact_repeats: int = 6
    facts_per_doc: int = 5
    max_facts_per_relation: int = 300
    n_ift: int = 4000
    n_ift_val: int = 200


@dataclass
class DataSettings:
    """Where the tokens, the chat data and the knowledge probes come from.

    ``source: corpus`` builds the offline demo corpus (``corpus`` settings). ``source: files`` uses the
    user's data: ``pretrain`` text sources (files, folders or ``hf:NAME``, as ``moc data prepare``
    takes), ``ift`` chat JSONL files and ``probe_tasks`` (lm-eval task names), found in ``probes_dir``
    (a folder of task YAMLs) or among lm-eval's built-in tasks. With the corpus, ``probe_tasks`` picks a
    subset of its probes (empty: all).
    """

    source: Literal["corpus", "files"] = "corpus"
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    pretrain: list[str] = field(default_factory=list)
    text_field: str = "text"
    txt_mode: Literal["file", "line", "paragraph"] = "file"
    ift: list[str] = field(default_factory=list)
    probes_dir: str | None = None
    probe_tasks: list[str] = field(default_factory=list)
    # An existing tokenizer (folder or Hub id); None trains a byte-level BPE of vocab_size on the text.
    tokenizer: str | None = None
    vocab_size: int = 4096
    val_fraction: float = 0.02
    split_seed: int = 0
    # Corpus, tokenizer and prepared data go here (default OUT/data); reruns reuse them.
    cache_dir: str | None = None


@dataclass
class PhaseSettings:
    """One training phase. The memory-layer and bank LRs are multiples of the backbone ``lr``."""

    steps: int = 100
    lr: float = 3e-4
    memory_lr_scale: float = 1.0
    bank_lr_scale: float = 1.0
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = 0
    decay_start: float = 0.85
    min_lr_ratio: float = 0.1
    # None: the MoC config's train section decides.
    seq_len: int | None = None
    micro_batch_size: int | None = None
    grad_accum_steps: int | None = None
    eval_every: int = 0  # validation points on the loss curve (0: only at the end)
    # Passes over the phase's packed training windows; when set it decides the steps (train.epochs).
    epochs: float | None = None


@dataclass
class IftSettings(PhaseSettings):
    """Instruction fine-tuning; ``variants`` are the MoC treatments of the bank (dense models get one run)."""

    variants: list[Literal["frozen", "low_lr"]] = field(default_factory=lambda: list(IFT_VARIANTS))


@dataclass
class EvalSettings:
    """What is measured after each phase."""

    val_windows: int = 64  # pretraining validation windows for val loss and router usage (0: all)
    probes: bool = True
    probe_limit: int | None = None  # questions per probe task (None: all)
    batch_size: int = 64
    # Validation loss on the held-out fact documents and on the held-out prose apart (corpus data only).
    split_val: bool = False
    # MoC only: validation loss with the memory output zeroed and with the routed chapters shuffled.
    ablations: bool = False


@dataclass
class ExperimentConfig:
    """The whole experiment; see the module docstring."""

    name: str = "experiment"
    moc: dict[str, Any] = field(default_factory=lambda: {"base": "tiny-moc"})
    data: DataSettings = field(default_factory=DataSettings)
    pretrain: PhaseSettings = field(default_factory=PhaseSettings)
    ift: IftSettings = field(default_factory=IftSettings)
    baselines: list[Literal["dense_backbone", "dense_isoflop", "dense_wide"]] = field(
        default_factory=lambda: list(BASELINES)
    )
    leak_ablation: bool = True
    # More MoC models that differ from ``moc`` only in memory.routing (key ``moc_ROUTING``), trained and
    # compared like it (not a leak ablation): e.g. [causal] beside a token-routed ``moc``.
    also_routings: list[Literal["token", "causal", "sequence"]] = field(default_factory=list)
    # Pretraining backbone LR per model key (a model not listed uses pretrain.lr); the memory and bank
    # LRs stay pretrain.memory_lr_scale / bank_lr_scale times it. Each model at its own best LR.
    lrs: dict[str, float] = field(default_factory=dict)
    # A folder keeping one JSON per finished pretraining run (model, seed), reused by any later run
    # of the same recipe and model, in any session (None: no records).
    records: str | None = None
    # `--plan` times this many training steps of each model here to estimate the hours (0: no estimate).
    plan_steps: int = 0
    eval: EvalSettings = field(default_factory=EvalSettings)
    seed: int = 0
    seeds: int = 1
    # Training processes run side by side (0: one per CPU core on CPU, 1 on GPU) with ``threads`` torch
    # threads each (0: cores / workers). Every run is seeded and single-process, so results repeat exactly
    # for the same settings; another thread count may change the last digits (float summation order).
    workers: int = 0
    threads: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str | None = None

    def __post_init__(self) -> None:
        validate(self)

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def moc_config(self) -> RunConfig:
        """The main MoC model and the shared recipe (its ``train`` section)."""
        return _moc_config(self.moc)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _moc_config(d: dict[str, Any]) -> RunConfig:
    try:
        return load_config(dict(d))
    except ConfigError as e:
        raise ConfigError(f"moc: {e}") from None


def validate(cfg: ExperimentConfig) -> None:
    configio.refuse_non_finite(cfg)  # NaN passes every `< 0` check below and trains at loss nan
    mcfg = cfg.moc_config
    if not mcfg.memory.enabled:
        raise ConfigError(
            "moc.memory.enabled is false: the experiment compares a MoC model against dense baselines, so "
            "`moc` must describe a model with memory (e.g. base: tiny-moc)"
        )
    for phase_name in ("pretrain", "ift"):
        ph: PhaseSettings = getattr(cfg, phase_name)
        if ph.steps < 0 or (phase_name == "pretrain" and ph.steps == 0):
            raise ConfigError(f"{phase_name}.steps must be positive, got {ph.steps}")
        for key in ("lr", "memory_lr_scale", "bank_lr_scale"):
            if getattr(ph, key) < 0 or (key == "lr" and ph.lr == 0):
                raise ConfigError(f"{phase_name}.{key} must be positive, got {getattr(ph, key)}")
        if ph.warmup_steps < 0 or ph.eval_every < 0:
            raise ConfigError(f"{phase_name}.warmup_steps and {phase_name}.eval_every must be >= 0")
        for key in ("seq_len", "micro_batch_size", "grad_accum_steps"):
            v = getattr(ph, key)
            if v is not None and v <= 0:
                raise ConfigError(f"{phase_name}.{key} must be positive (or null for the moc.train value)")
        seq_len = ph.seq_len or mcfg.train.seq_len
        if seq_len > mcfg.model.max_seq_len:
            raise ConfigError(
                f"{phase_name} sequence length {seq_len} exceeds moc.model.max_seq_len="
                f"{mcfg.model.max_seq_len}; lower {phase_name}.seq_len or raise moc.model.max_seq_len"
            )
    if len(set(cfg.ift.variants)) != len(cfg.ift.variants):
        raise ConfigError(f"ift.variants lists a variant twice: {cfg.ift.variants}")
    if cfg.ift.steps > 0 and not cfg.ift.variants:
        raise ConfigError(f"ift.variants is empty; list one or more of {list(IFT_VARIANTS)} (or ift.steps=0)")
    if len(set(cfg.baselines)) != len(cfg.baselines):
        raise ConfigError(f"baselines lists a model twice: {cfg.baselines}")
    if cfg.seeds < 1:
        raise ConfigError(f"seeds must be >= 1, got {cfg.seeds}")
    _validate_models(cfg, mcfg.memory.routing)
    if cfg.plan_steps < 0:
        raise ConfigError(f"plan_steps must be >= 0, got {cfg.plan_steps}")
    if cfg.records is not None and cfg.ift.steps > 0:
        # A record keeps a run's numbers, not its checkpoint, so an IFT run could not start from it.
        raise ConfigError("records keeps pretraining runs only; set ift.steps=0 (or records=null)")
    if cfg.workers < 0 or cfg.threads < 0:
        raise ConfigError(
            f"workers and threads must be >= 0 (0: automatic), got {cfg.workers}, {cfg.threads}"
        )
    ev = cfg.eval
    if ev.val_windows < 0 or ev.batch_size <= 0 or (ev.probe_limit is not None and ev.probe_limit <= 0):
        raise ConfigError(
            "eval.val_windows must be >= 0, eval.batch_size > 0 and eval.probe_limit > 0 or null"
        )
    d = cfg.data
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if d.vocab_size < 262 and d.tokenizer is None:
        raise ConfigError(f"data.vocab_size={d.vocab_size} is too small for a byte-level BPE (>= 262)")
    c = d.corpus
    if c.max_text_mb <= 0 or min(c.fact_repeats, c.facts_per_doc, c.max_facts_per_relation, c.n_ift) < 1:
        raise ConfigError(
            "data.corpus: max_text_mb must be > 0 and fact_repeats, facts_per_doc, "
            "max_facts_per_relation, n_ift >= 1"
        )
    if d.probes_dir is not None and not d.probe_tasks and d.source == "files":
        raise ConfigError(
            f"data.probes_dir={d.probes_dir} is set but data.probe_tasks is empty; list the lm-eval task "
            "names to run, e.g. --set 'data.probe_tasks=[my_task]'"
        )


def _validate_models(cfg: ExperimentConfig, routing: str) -> None:
    """also_routings must add new models, and lrs may name only models the experiment trains."""
    if len(set(cfg.also_routings)) != len(cfg.also_routings) or routing in cfg.also_routings:
        raise ConfigError(
            f"also_routings={cfg.also_routings} repeats a routing or the main model's ({routing})"
        )
    if cfg.leak_ablation and ("sequence" if routing != "sequence" else "causal") in cfg.also_routings:
        raise ConfigError("also_routings lists the leak ablation's routing; set leak_ablation: false")
    keys = {"moc", *cfg.baselines, *(f"moc_{r}" for r in cfg.also_routings)}
    if cfg.leak_ablation:
        keys.add("moc_sequence" if routing != "sequence" else "moc_causal")
    unknown = sorted(set(cfg.lrs) - keys)
    if unknown:
        raise ConfigError(
            f"lrs names {unknown}, which this experiment does not train; models: {sorted(keys)}"
        )
    bad = {k: v for k, v in cfg.lrs.items() if not v > 0}
    if bad:
        raise ConfigError(f"lrs must be positive, got {bad}")


def check_data_given(cfg: ExperimentConfig) -> None:
    """For ``data.source: files``: raise a ConfigError naming each missing path (checked before any work)."""
    d = cfg.data
    if d.source != "files":
        return
    missing = []
    if not d.pretrain:
        missing.append("data.pretrain (text files/folders or hf:NAME for pretraining)")
    if cfg.ift.steps > 0 and not d.ift:
        missing.append('data.ift (chat JSONL files of {"messages": [...]}, or set ift.steps=0)')
    if cfg.eval.probes and not d.probe_tasks:
        missing.append(
            "data.probe_tasks (lm-eval task names; with data.probes_dir for local task YAMLs), "
            "or set eval.probes=false"
        )
    if missing:
        raise ConfigError(
            f"experiment {cfg.name!r} trains on your data (data.source=files) but these are not set: "
            + "; ".join(missing)
            + ". Pass them with --set, e.g. --set 'data.pretrain=[/data/text]' "
            "--set 'data.ift=[/data/chat.jsonl]' --set data.probes_dir=/data/probes "
            "--set 'data.probe_tasks=[arc_easy_local]'"
        )
    for key in ("pretrain", "ift"):
        for src in getattr(d, key):
            if not src.startswith("hf:") and not Path(src).expanduser().exists():
                raise ConfigError(f"data.{key}: {src} does not exist")
    if d.probes_dir and not Path(d.probes_dir).is_dir():
        raise ConfigError(f"data.probes_dir: {d.probes_dir} is not a directory")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def experiment_presets() -> list[str]:
    """The experiment presets shipped in ``moc/experiment/presets``."""
    return presets_in(EXPERIMENT_PRESET_DIR)


def _read(spec: str) -> dict[str, Any]:
    return read_spec(spec, EXPERIMENT_PRESET_DIR, "experiment")


def _read_parent(spec: str) -> dict[str, Any]:
    """A ``base:`` parent: its name is not inherited by the child."""
    data = _read(spec)
    data.pop("name", None)
    return data


def apply_overrides(d: dict[str, Any], overrides: list[str] | dict[str, Any] | None) -> None:
    """Set ``a.b.c=value`` items (values parsed as YAML) into the nested dict ``d``."""
    configio.apply_overrides(d, overrides, _OVERRIDE_EXAMPLE)


def experiment_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    return build(ExperimentConfig, dict(d))


def load_experiment(
    spec: str | Path | dict[str, Any] | ExperimentConfig,
    overrides: list[str] | dict[str, Any] | None = None,
) -> ExperimentConfig:
    """Load an experiment preset name, YAML path, dict or config, then apply ``--set`` overrides."""
    if isinstance(spec, dict):
        spec = copy.deepcopy(spec)  # overrides must not write into the caller's dict
    return configio.load(
        ExperimentConfig,
        spec,
        overrides,
        _read,
        read_parent=_read_parent,
        what="experiment",
        example=_OVERRIDE_EXAMPLE,
    )
