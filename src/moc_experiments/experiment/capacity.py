"""`moc experiment capacity`: does the model store knowledge in its memory bank, and at what FLOP cost?

    from moc_experiments.experiment.capacity import load_capacity, run_capacity
    results = run_capacity(load_capacity("capacity-smoke"))   # runs/capacity-smoke/{results.json,report.md}

Every model trains from scratch on the same synthetic knowledge world
(:mod:`moc_experiments.corpus.world`: N people x A attributes, biographies plus question documents
for a subset of people) for the same number of tokens, with the same seeds; then we measure exact
recall of every fact:

- ``bio``: the first phrasing of a biography sentence, every person ("NAME lives in" -> CITY);
- ``question_heldout``: the question form about people whose questions were never trained (a held-out
  paraphrase: needs the fact from the biography and the question skill from other people);
- ``memory_off``: the same, with every memory layer's output projection zeroed (the trained model with
  its memory read removed; a drop means the model uses what it reads).

Optionally (``text.fraction > 0``, ``ift.data: real_chat``; preset ``capacity-retention``) the paper's
retention protocol: pretraining mixes windows of real text from the offline demo corpus into the world's
documents (word-level, the world's vocabulary extended: :mod:`moc_experiments.corpus.world_text`), and
instruction fine-tuning uses the corpus's real chat examples (loss on the answers only).

Models are given as overrides of one base model (``models: {key: {model: ..., memory: ..., bank_lr_scale:
...}}``): dense widths and depths, routing modes, bank learning rates, bank sizes and chapter weightings.
FLOPs per token come from :func:`moc.accounting.count_flops` (training: 3x forward at the padded document
length; inference: forward minus the bank's K/V projections, which a deployed model computes once and
caches because the bank does not change).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from moc.config import ConfigError, RunConfig, deep_merge, load_config, read_yaml
from moc.configio import check_type, load, presets_in, read_spec

PRESET_DIR = Path(__file__).parent / "capacity_presets"
RESULTS_FILE = "results.json"
FORMS = ("bio", "question_heldout", "question_trained", "chat_heldout")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class WorldSettings:
    """The knowledge world (see :class:`moc_experiments.corpus.world.KnowledgeWorld`)."""

    n_people: int = 500
    n_attributes: int = 5
    n_values: int = 30
    qa_fraction: float = 0.5
    seed: int = 0


@dataclass
class CapacityTrain:
    """One recipe for every model: AdamW, linear warmup, cosine decay to ``min_lr_ratio``."""

    tokens: int = 1_200_000  # real (non-padding) training tokens per model
    batch_size: int = 32  # documents per step (one document per row, right-padded)
    lr: float = 3e-3
    memory_lr_scale: float = 1.0
    bank_lr_scale: float = 1.0
    weight_decay: float = 0.0
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    qa_doc_fraction: float = 0.3  # share of documents that are question documents (of qa_people)
    log_every: int = 25


@dataclass
class CapacityText:
    """Real text mixed into pretraining (the paper's retention protocol; 0: the world alone, as before).

    ``fraction`` of the pretraining documents are ``[BOS] + a window of real text`` from the offline demo
    corpus (:func:`moc_experiments.corpus.build_corpus`, built or reused in ``corpus_dir``; default
    ``OUT/data/corpus``, the demo's convention), word-tokenised in the world's vocabulary extended by the
    ``vocab_words`` most frequent real-text words (:mod:`moc_experiments.corpus.world_text`)."""

    fraction: float = 0.0
    vocab_words: int = 2000
    max_text_mb: float = 2.0
    corpus_dir: str | None = None


@dataclass
class CapacityIft:
    """Instruction fine-tuning after pretraining (0 steps: none), then recall again. ``data``: the chat
    form of the world's questions about ``qa_people`` (``world_chat``) or the corpus's real chat examples
    (``real_chat``: loss on the assistant's answer only). MoC models run each ``variants`` treatment of the
    bank; dense models one full run. Learning rates follow the paper's IFT recipe relative to ``lr``
    (memory 1/2, bank 1/6 or frozen)."""

    steps: int = 0
    data: Literal["world_chat", "real_chat"] = "world_chat"
    lr: float = 1e-3
    memory_lr_scale: float = 0.5
    bank_lr_scale: float = 0.16667
    batch_size: int = 32
    warmup_steps: int = 10
    variants: list[Literal["frozen", "low_lr"]] = field(default_factory=lambda: ["frozen", "low_lr"])


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
    # Pairs [moc_key, dense_key] whose recall difference the report states (paired over seeds).
    compare: list[list[str]] = field(default_factory=list)
    seed: int = 0
    seeds: int = 3
    workers: int = 0  # processes side by side (0: one per core, at most 2 on CPU)
    threads: int = 1  # torch threads per process (1: never oversubscribe a small CPU)
    out_dir: str | None = None
    # Reuse runs (model, seed) already in OUT/results.json when the world, recipe and model are unchanged,
    # so more seeds or models can be added to a finished or interrupted experiment.
    resume: bool = True

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
    for pair in cfg.compare:
        if len(pair) != 2 or any(k not in cfg.models for k in pair):
            raise ConfigError(f"compare: {pair} must be two keys of `models` ({list(cfg.models)})")
    if cfg.seeds < 1 or cfg.train.tokens <= 0 or cfg.train.batch_size <= 0:
        raise ConfigError("capacity: seeds, train.tokens and train.batch_size must be positive")
    if not 0 <= cfg.text.fraction < 1:
        raise ConfigError(f"text.fraction must be in [0, 1), got {cfg.text.fraction}")
    if cfg.text.vocab_words < 0 or cfg.text.max_text_mb <= 0:
        raise ConfigError("text.vocab_words must be >= 0 and text.max_text_mb > 0")


def model_config(cfg: CapacityConfig, key: str, vocab_size: int, seq_len: int) -> RunConfig:
    """The RunConfig of model ``key``: the base with the model's ``model``/``memory`` overrides."""
    spec = cfg.models[key] or {}
    d = {"model": {}, "memory": {}}
    d = deep_merge(d, copy.deepcopy(cfg.base))
    d = deep_merge(d, {"model": spec.get("model") or {}, "memory": spec.get("memory") or {}})
    d["model"].update(vocab_size=vocab_size, max_seq_len=max(seq_len, d["model"].get("max_seq_len", 0)))
    d["name"] = key
    try:
        return load_config(d)
    except ConfigError as e:
        raise ConfigError(f"models.{key}: {e}") from None


# --------------------------------------------------------------------------------------------------
# One training run
# --------------------------------------------------------------------------------------------------


def _world(cfg: CapacityConfig):
    from moc_experiments.corpus.world import KnowledgeWorld

    return KnowledgeWorld(**dataclasses.asdict(cfg.world))


def text_corpus(cfg: CapacityConfig, roots: Any = None, progress: bool = False, **corpus: Any) -> Any:
    """Build or reuse the offline demo corpus for ``cfg.text`` in ``cfg.corpus_dir`` -> ``CorpusPaths``.

    The same builder and settings as the real-text demo (``data.corpus`` of ``moc experiment demo``) with
    ``text.max_text_mb``; ``roots``/``corpus`` override the source locations and builder settings (tests
    build a tiny corpus from fake sources)."""
    from moc_experiments.corpus import build_corpus
    from moc_experiments.experiment.config import CorpusSettings

    settings = dataclasses.asdict(CorpusSettings(max_text_mb=cfg.text.max_text_mb)) | corpus
    return build_corpus(cfg.corpus_dir, roots=roots, verbose=progress, **settings)


def _world_text(cfg: CapacityConfig, world: Any, corpus: dict[str, str] | None = None) -> Any:
    """The world's vocabulary extended with the corpus's real text (``None`` when ``cfg`` uses none).

    ``corpus``: {"text": pretrain/text.jsonl, "ift": ift/train.jsonl} of a built corpus (default: build or
    reuse it with :func:`text_corpus`)."""
    if not cfg.uses_corpus:
        return None
    from moc_experiments.corpus.world_text import WorldText

    if corpus is None:
        paths = text_corpus(cfg)
        corpus = {"text": str(paths.pretrain_text), "ift": str(paths.ift_train)}
    chat = cfg.ift.data == "real_chat"
    return WorldText.load(world, corpus["text"], corpus["ift"], cfg.text.vocab_words, chat=chat)


def _batch(
    world: Any,
    rng: np.random.Generator,
    n: int,
    qa_frac: float,
    L: int,
    text: Any = None,
    text_frac: float = 0.0,
    counts: dict[str, int] | None = None,
) -> tuple[torch.Tensor, ...]:
    """n documents, right-padded to L: input_ids, attention_mask, labels (B, L).

    With ``text`` (a :class:`~moc_experiments.corpus.world_text.WorldText`) and ``text_frac > 0`` a share
    ``text_frac`` of the documents are real-text windows; ``counts`` accumulates real tokens per kind
    ("world", "text")."""
    ids = np.full((n, L), world.pad_id, dtype=np.int64)
    mask = np.zeros((n, L), dtype=np.int64)
    for i in range(n):
        # Only draw when text is mixed in: without it the rng stream (the documents) is exactly as before.
        if text is not None and text_frac > 0 and rng.random() < text_frac:
            doc = text.window(rng, L)
            kind = "text"
        elif len(world.qa_people) and rng.random() < qa_frac:
            doc = world.questions(int(rng.choice(world.qa_people)), rng)
            kind = "world"
        else:
            doc = world.biography(int(rng.integers(world.n_people)), rng)
            kind = "world"
        ids[i, : len(doc)] = doc
        mask[i, : len(doc)] = 1
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + len(doc)
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    return x, m, x.masked_fill(m == 0, -100)


def mean_doc_tokens(
    world: Any, qa_frac: float, n: int = 400, text: Any = None, text_frac: float = 0.0
) -> float:
    """Average real tokens per training document, over a fixed seeded sample of the document mix."""
    _, m, _ = _batch(world, np.random.default_rng(12345), n, qa_frac, world.max_doc_len, text, text_frac)
    return float(m.sum()) / n


def _chat_batch(world: Any, rng: np.random.Generator, n: int, L: int) -> tuple[torch.Tensor, ...]:
    """n chat documents about ``qa_people``, right-padded to L: input_ids, attention_mask, labels."""
    ids = np.full((n, L), world.pad_id, dtype=np.int64)
    mask = np.zeros((n, L), dtype=np.int64)
    for i in range(n):
        doc = world.chat(int(rng.choice(world.qa_people)), rng)
        ids[i, : len(doc)] = doc
        mask[i, : len(doc)] = 1
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    return x, m, x.masked_fill(m == 0, -100)


@torch.no_grad()
def recall_and_type(
    model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None
) -> tuple[float, float]:
    """(exact recall, answer-type accuracy) over the (person, attribute) prompts of ``form``: the
    fraction whose argmax next token is the value, and the fraction whose argmax is *some* value of the
    asked attribute (any person's city for a city prompt). The second is the control of the memory-off
    ablation: if it stays high while recall falls, the model lost facts, not the format."""
    if people is not None and len(people) == 0:
        return float("nan"), float("nan")
    was = model.training
    model.eval()
    hits = typed = total = 0
    for a, (prompts, answers) in enumerate(world.recall_prompts(form, people)):
        value_ids = torch.tensor([world.index[v] for v in world.values[a]])
        for s in range(0, len(prompts), 512):
            x = torch.from_numpy(prompts[s : s + 512])
            pred = model(x).logits[:, -1].argmax(-1)
            hits += int((pred == torch.from_numpy(answers[s : s + 512])).sum())
            typed += int(torch.isin(pred, value_ids).sum())
            total += len(x)
    model.train(was)
    return hits / total, typed / total


def recall(model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None) -> float:
    """Exact recall: fraction of (person, attribute) prompts whose argmax next token is the value."""
    return recall_and_type(model, world, form, people)[0]


def recalls(model: torch.nn.Module, world: Any) -> dict[str, float]:
    return {
        "bio": recall(model, world, "bio"),
        "question_heldout": recall(model, world, "question", world.heldout_people),
        "question_trained": recall(model, world, "question", world.qa_people),
        "chat_heldout": recall(model, world, "chat", world.heldout_people),
    }


def memory_off(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose memory layers add nothing (output projections zeroed)."""
    off = copy.deepcopy(model)
    for block in getattr(off, "layers", []):
        if getattr(block, "memory", None) is not None:
            torch.nn.init.zeros_(block.memory.o_proj.weight)
    return off


@torch.no_grad()
def chapters_shuffled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` whose routed chapters hold each other's content: every bank's routed chapters
    are permuted (a seeded cycle, so none keeps its own), the shared chapters stay. The router still
    picks the same chapter ids and the memory still reads vectors of the trained bank (same norms, same
    generic content), but what a chapter stored about a person is now somewhere else: recall that
    survives zeroing the memory but not this lived outside the bank; a drop here is knowledge that
    lived in the routed chapters."""
    shuffled = copy.deepcopy(model)
    for bank in getattr(shuffled, "banks", []):
        n_shared = next(b.memory.router.n_shared for b in shuffled.layers if getattr(b, "memory", None))
        C = bank.n_chapters
        order = torch.randperm(C - n_shared, generator=torch.Generator().manual_seed(seed)) + n_shared
        perm = torch.arange(C)
        perm[order] = order.roll(1)  # chapter order[i] takes the content of order[i - 1]
        store = bank.params[0]  # (N_m, dim) weight, or (N_m, rank) A of a factorized bank
        store.copy_(store.view(C, bank.chapter_size, -1)[perm].reshape(store.shape))
    return shuffled


def _fit(
    model: torch.nn.Module,
    tcfg: Any,
    steps: int,
    batch: Any,
    grad_clip: float,
    log_every: int,
) -> tuple[list[float], int, float]:
    """AdamW over ``steps`` batches from ``batch()`` -> (loss curve, real tokens, seconds)."""
    from moc.train.optim import apply_freezing, build_optimizer
    from moc.train.schedule import lr_multiplier

    apply_freezing(model, tcfg)
    opt = build_optimizer(model, tcfg)
    mult = lr_multiplier(tcfg)
    curve: list[float] = []
    tokens, acc, n_acc = 0, 0.0, 0
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * mult(step)
        x, m, y = batch()
        out = model(x, attention_mask=m, labels=y)
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
        opt.step()
        tokens += int(m.sum())
        acc, n_acc = acc + float(out.loss.detach()), n_acc + 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            curve.append(acc / n_acc)
            acc, n_acc = 0.0, 0
    return curve, tokens, time.perf_counter() - t0


def _measure(model: torch.nn.Module, world: Any, has_memory: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {"recall": recalls(model, world), "type_accuracy": {}}
    rec["type_accuracy"]["bio"] = recall_and_type(model, world, "bio")[1]
    if has_memory:
        off = memory_off(model)
        rec["recall_memory_off"] = recalls(off, world)
        rec["type_accuracy_memory_off"] = {"bio": recall_and_type(off, world, "bio")[1]}
        exact, typed = recall_and_type(chapters_shuffled(model), world, "bio")
        rec["recall_shuffled"] = {"bio": exact}
        rec["type_accuracy_shuffled"] = {"bio": typed}
    return rec


def train_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one seed and measure it, then fine-tune it on chat data (each IFT variant)
    and measure again (runs in a worker process; ``job`` is plain data; ``job["corpus"]``: the built
    corpus's files when real text or real chat is used, else built or reused here)."""
    from moc.config import TrainConfig
    from moc.model import MoCModel

    torch.set_num_threads(job["threads"])
    cfg = load_capacity(job["experiment"])
    world = _world(cfg)
    text = _world_text(cfg, world, job.get("corpus"))
    t, spec, seed = cfg.train, cfg.models[job["key"]] or {}, job["seed"]
    L = world.max_doc_len
    mcfg = model_config(cfg, job["key"], len(text.vocab) if text else len(world.vocab), L)
    has_memory = bool(mcfg.memory_layers)
    torch.manual_seed(seed)
    model = MoCModel(mcfg)
    lr = t.lr * spec.get("lr_scale", 1.0)
    steps = job["steps"]
    tcfg = TrainConfig(
        lr=lr,
        memory_lr=lr * spec.get("memory_lr_scale", t.memory_lr_scale),
        bank_lr=lr * spec.get("bank_lr_scale", t.bank_lr_scale),
        weight_decay=t.weight_decay,
        max_steps=steps,
        warmup_steps=min(t.warmup_steps, steps - 1),
        schedule="cosine",
        min_lr_ratio=t.min_lr_ratio,
    )
    rng = np.random.default_rng(seed)  # the same documents in the same order for every model
    counts: dict[str, int] = {}
    curve, tokens, train_s = _fit(
        model,
        tcfg,
        steps,
        lambda: _batch(world, rng, t.batch_size, t.qa_doc_fraction, L, text, cfg.text.fraction, counts),
        t.grad_clip,
        t.log_every,
    )
    rec: dict[str, Any] = {
        "seed": seed,
        "steps": steps,
        "tokens": tokens,
        "train_s": train_s,
        "tokens_per_s": tokens / train_s,
        "loss_curve": curve,
        "final_loss": curve[-1],
        **_measure(model, world, has_memory),
    }
    if cfg.text.fraction > 0:  # tokens per kind (only then: records of the world alone stay as they were)
        rec["world_tokens"], rec["text_tokens"] = counts.get("world", 0), counts.get("text", 0)
    ift = cfg.ift
    usable = text.usable_chats(L) if ift.data == "real_chat" else None

    def ift_batch(r: np.random.Generator) -> tuple[torch.Tensor, ...]:
        if usable is not None:  # real chat: labels on the assistant's answer only
            return text.chat_batch(r, ift.batch_size, L, usable)
        return _chat_batch(world, r, ift.batch_size, L)

    if ift.steps > 0:
        rec["ift"] = {}
        for variant in ift.variants if has_memory else ["full"]:
            tuned = copy.deepcopy(model)
            icfg = TrainConfig(
                lr=ift.lr,
                memory_lr=ift.lr * ift.memory_lr_scale,
                bank_lr=ift.lr * ift.bank_lr_scale,
                freeze_bank=variant == "frozen",
                weight_decay=t.weight_decay,
                max_steps=ift.steps,
                warmup_steps=min(ift.warmup_steps, ift.steps - 1),
                schedule="cosine",
                min_lr_ratio=t.min_lr_ratio,
            )
            irng = np.random.default_rng(10_000 + seed)  # the same chat documents for every model
            icurve, _, ift_s = _fit(tuned, icfg, ift.steps, lambda r=irng: ift_batch(r), t.grad_clip, 5)
            rec["ift"][variant] = {
                "loss_curve": icurve,
                "train_s": ift_s,
                **_measure(tuned, world, has_memory),
            }
            if has_memory:  # how far IFT moved the bank (0 when frozen)
                rec["ift"][variant]["bank_max_change"] = max(
                    float((a - b).detach().abs().max())
                    for a, b in zip(tuned.banks.parameters(), model.banks.parameters())
                )
    return rec


_NOT_RECIPE = ("name", "description", "models", "compare", "seeds", "workers", "threads", "out_dir", "resume")


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """What every run's numbers depend on besides its model and seed."""
    d = {k: v for k, v in config.items() if k not in _NOT_RECIPE}
    # Sections and fields added later take their defaults (= what older results were made with).
    d["ift"] = dataclasses.asdict(CapacityIft()) | d.get("ift", {})
    d["text"] = dataclasses.asdict(CapacityText()) | d.get("text", {})
    if not (d["text"]["fraction"] > 0 or d["ift"]["data"] == "real_chat"):
        d["text"] = None  # the corpus settings do not matter when no corpus is used
    return d


def _reusable_runs(
    cfg: CapacityConfig, path: Path, corpus_stamp: str | None = None
) -> dict[tuple[str, int], dict[str, Any]]:
    """(model key, seed) -> run record from an earlier results.json made with the same recipe and model
    (and, when real text is used, the same corpus: ``corpus_stamp``, its MANIFEST fingerprint)."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    now = cfg.to_dict()
    if old.get("kind") != "capacity" or _recipe(old.get("config", {})) != _recipe(now):
        return {}
    if (old.get("text") or {}).get("corpus_fingerprint") != corpus_stamp:
        return {}
    out = {}
    for key, runs in (old.get("runs") or {}).items():
        if key in cfg.models and old["config"]["models"].get(key) == now["models"][key]:
            for r in runs:
                if r["seed"] in cfg.seed_list:
                    out[(key, r["seed"])] = r
    return out


def _keep_earlier_results(path: Path, reused: dict[tuple[str, int], Any]) -> Path | None:
    """Move an earlier results.json aside (``results.prev-N.json``) when it holds runs this experiment will
    not carry over (other models or seeds, another recipe, or ``resume: false``), so no finished run is
    ever lost by rerunning into the same folder. Returns where it went, or None if nothing had to move."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
        old_runs = {(k, r["seed"]) for k, runs in (old.get("runs") or {}).items() for r in runs}
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        old_runs = None  # unreadable: keep it as it is
    if old_runs is not None and old_runs <= set(reused):
        return None
    n = 1
    while (backup := path.with_name(f"results.prev-{n}.json")).exists():
        n += 1
    path.replace(backup)
    return backup


def _write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (a partial file never replaces a good one)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------------


def flops_per_token(mcfg: RunConfig, seq_len: int, batch_size: int) -> dict[str, float]:
    """Training FLOPs per token (batch-aware count where available) and inference FLOPs per token with the
    bank's K/V cached (the bank is constant at inference, so its normalisation and K/V projections are
    computed once, not per token) and without the router's training losses."""
    from moc.accounting import count_flops

    kw = {"batch_size": batch_size} if "batch_size" in inspect.signature(count_flops).parameters else {}
    train = count_flops(mcfg, seq_len, **kw)  # per sequence (at this micro-batch when batch-aware)
    fwd1 = count_flops(mcfg, seq_len)
    cached = 0
    mem = fwd1["breakdown"].get("memory_layer")
    if mem is not None:
        terms = mem["terms"]
        cached = mem["count"] * sum(
            terms.get(k, 0)
            for k in (
                "memory_attention.k_proj",
                "memory_attention.v_proj",
                "preprocess.rmsnorm",
                "reconstruct",
                "router_loss",  # a training-only term
            )
        )
    return {
        "train": train["total"] / seq_len,
        "inference": (fwd1["forward"] - cached) / seq_len,
        "batch_aware": bool(kw),
    }


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


def _workers(cfg: CapacityConfig, n_jobs: int) -> int:
    if cfg.workers:
        return min(cfg.workers, n_jobs)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores // max(cfg.threads, 1), 2, n_jobs))


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"moc experiment capacity: {msg}", flush=True)


def _model_records(cfg: CapacityConfig, vocab_size: int, L: int) -> dict[str, dict[str, Any]]:
    """Per model: label, size, parameters, FLOPs per token and memory settings (results.json "models")."""
    from moc.accounting import count_params

    models: dict[str, Any] = {}
    for key in cfg.models:
        mcfg = model_config(cfg, key, vocab_size, L)
        spec = cfg.models[key] or {}
        mem = mcfg.memory
        rec: dict[str, Any] = {
            "label": spec.get("label", key),
            "d_model": mcfg.model.d_model,
            "n_layers": mcfg.model.n_layers,
            "params": count_params(mcfg),
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
                "chapter_size": mem.chapter_size,
                "tokens_read": mem.n_selected_tokens,
                "top_k": mem.top_k,
                "chapter_weighting": getattr(mem, "chapter_weighting", "kv"),
                "bank_lr_scale": spec.get("bank_lr_scale", cfg.train.bank_lr_scale),
                "memory_lr_scale": spec.get("memory_lr_scale", cfg.train.memory_lr_scale),
            }
        models[key] = rec
    return models


@dataclass
class _Data:
    """What every run of an experiment shares: the world, the real text (if any) and the step count."""

    world: Any
    text: Any  # WorldText, or None for the world alone
    corpus: dict[str, str] | None  # the corpus files the jobs read (None: no corpus)
    text_info: dict[str, Any] | None  # results.json "text" (None: the world alone)
    vocab_size: int
    doc_tokens: float  # mean real tokens per training document
    steps: int

    @property
    def corpus_stamp(self) -> str | None:
        return self.text_info["corpus_fingerprint"] if self.text_info else None


def _prepare(cfg: CapacityConfig, progress: bool) -> _Data:
    """Build the world, the corpus (when real text or chat is used) and the number of steps per run."""
    world = _world(cfg)
    L = world.max_doc_len
    text, corpus, text_info = None, None, None
    if cfg.uses_corpus:
        paths = text_corpus(cfg, progress=progress)
        corpus = {"text": str(paths.pretrain_text), "ift": str(paths.ift_train)}
        text = _world_text(cfg, world, corpus)
        manifest = json.loads(paths.manifest.read_text())
        text_info = {
            **text.stats(),
            "fraction": cfg.text.fraction,
            "ift_data": cfg.ift.data,
            "corpus_dir": str(paths.root),
            "corpus_fingerprint": manifest.get("fingerprint"),
            "sources": [r["name"] for r in manifest.get("text_sources", []) if r.get("used")],
        }
        if cfg.ift.data == "real_chat":
            text_info["chat_examples_usable"] = len(text.usable_chats(L))
    vocab_size = len(text.vocab) if text else len(world.vocab)
    doc_tokens = mean_doc_tokens(world, cfg.train.qa_doc_fraction, text=text, text_frac=cfg.text.fraction)
    steps = max(1, math.ceil(cfg.train.tokens / (cfg.train.batch_size * doc_tokens)))
    return _Data(world, text, corpus, text_info, vocab_size, doc_tokens, steps)


def capacity_plan(cfg: CapacityConfig) -> str:
    """What ``run_capacity`` would do, without training (``moc experiment capacity --plan``): steps and
    tokens per run, every model's size and FLOPs, and how many runs an earlier results.json saves."""
    data = _prepare(cfg, progress=False)
    world, text, vocab_size, doc_tokens, steps = (
        data.world,
        data.text,
        data.vocab_size,
        data.doc_tokens,
        data.steps,
    )
    L = world.max_doc_len
    reused = _reusable_runs(cfg, cfg.run_dir / RESULTS_FILE, data.corpus_stamp) if cfg.resume else {}
    n_runs = len(cfg.models) * cfg.seeds
    tokens = steps * cfg.train.batch_size * doc_tokens
    seeds = ", ".join(map(str, cfg.seed_list))
    lines = [
        f"capacity experiment {cfg.name!r} -> {cfg.run_dir}",
        f"world: {world.n_people} people x {world.n_attributes} attributes, vocabulary {vocab_size}, "
        f"documents of up to {L} tokens" + (f", {cfg.text.fraction:.0%} real text" if text else ""),
        f"each run: {steps} steps x {cfg.train.batch_size} documents (~{tokens / 1e6:.2f}M tokens), "
        f"LR {cfg.train.lr:g}; IFT {cfg.ift.steps} steps ({cfg.ift.data})",
        f"{len(cfg.models)} models x {cfg.seeds} seeds ({seeds}) = {n_runs} runs; "
        f"{len(reused)} reusable from {cfg.run_dir / RESULTS_FILE}, {n_runs - len(reused)} to train",
        "",
        f"{'model':<44} {'params':>9} {'train FLOPs/tok':>16} {'inference FLOPs/tok':>20}",
    ]
    for rec in _model_records(cfg, vocab_size, L).values():
        p = rec["params"]
        total = p.get("total", 0) if isinstance(p, dict) else p
        fl = rec["flops_per_token"]
        lines.append(f"{rec['label'][:44]:<44} {total:>9,} {fl['train']:>16,.0f} {fl['inference']:>20,.0f}")
    return "\n".join(lines)


def run_capacity(cfg: CapacityConfig, progress: bool = True) -> dict[str, Any]:
    """Train every model on every seed, measure recall, write results.json, report.md and plots."""
    from moc_experiments.experiment.capacity_report import write_report

    t_start = time.perf_counter()
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    data = _prepare(cfg, progress)
    world, corpus, text_info, doc_tokens, steps = (
        data.world,
        data.corpus,
        data.text_info,
        data.doc_tokens,
        data.steps,
    )
    L = world.max_doc_len
    models = _model_records(cfg, data.vocab_size, L)
    results: dict[str, Any] = {
        "format": 1,
        "kind": "capacity",
        "name": cfg.name,
        "description": cfg.description,
        "config": cfg.to_dict(),
        "world": world.stats(),
        "doc_len": L,
        "steps": steps,
        "mean_doc_tokens": doc_tokens,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        "models": models,
        "runs": {k: [] for k in cfg.models},
    }
    if text_info is not None:  # only then: results of the world alone keep their old layout
        results["text"] = text_info
    jobs = [
        {"experiment": cfg.to_dict(), "key": k, "seed": s, "steps": steps, "threads": cfg.threads}
        | ({"corpus": corpus} if corpus else {})
        for s in cfg.seed_list
        for k in cfg.models
    ]
    reused = _reusable_runs(cfg, out / RESULTS_FILE, data.corpus_stamp) if cfg.resume else {}
    for j in list(jobs):
        rec = reused.get((j["key"], j["seed"]))
        if rec is not None:
            results["runs"][j["key"]].append(rec)
            jobs.remove(j)
    if reused:
        _log(f"reusing {sum(len(r) for r in results['runs'].values())} finished run(s) from {out}", progress)
    backup = _keep_earlier_results(out / RESULTS_FILE, reused)
    if backup is not None:
        _log(f"kept the earlier results (runs this experiment does not repeat) as {backup}", progress)
    # Longest first (by training FLOPs, stable within a model): the workers then finish close together
    # instead of one long MoC run keeping a worker busy at the end. Each run is seeded on its own, so the
    # order changes no number.
    jobs.sort(key=lambda j: -models[j["key"]]["flops_per_token"]["train"])
    workers = _workers(cfg, max(len(jobs), 1))
    results["environment"] |= {"workers": workers, "threads": cfg.threads}
    _log(
        f"{len(cfg.models)} models x {cfg.seeds} seeds = {len(jobs)} runs of {steps} steps "
        f"(~{steps * cfg.train.batch_size * doc_tokens / 1e6:.2f}M tokens each) on {workers} worker(s)",
        progress,
    )

    def done(job: dict[str, Any], rec: dict[str, Any]) -> None:
        results["runs"][job["key"]].append(rec)
        _write_json(out / RESULTS_FILE, results)
        off = rec.get("recall_memory_off", {}).get("bio")
        _log(
            f"{job['key']} seed {job['seed']}: recall {100 * rec['recall']['bio']:.1f}%"
            + (f" (memory off {100 * off:.1f}%)" if off is not None else "")
            + f", loss {rec['final_loss']:.3f}, {rec['train_s']:.0f}s "
            f"(elapsed {time.perf_counter() - t_start:.0f}s)",
            progress,
        )

    if workers <= 1:
        for j in jobs:
            done(j, train_run(j))
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [(j, pool.submit(train_run, j)) for j in jobs]
            for j, f in futures:
                done(j, f.result())
    for k in results["runs"]:
        results["runs"][k].sort(key=lambda r: r["seed"])
    results["timing"] = {"total_s": time.perf_counter() - t_start}
    _write_json(out / RESULTS_FILE, results)
    report = write_report(results, out)
    _log(f"done in {results['timing']['total_s']:.0f}s; report: {report}", progress)
    return results
