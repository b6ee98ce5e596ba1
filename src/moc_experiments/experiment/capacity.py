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
class CapacityIft:
    """Instruction fine-tuning after pretraining (0 steps: none): the chat form about ``qa_people``, then
    recall again. MoC models run each ``variants`` treatment of the bank; dense models one full run.
    Learning rates follow the paper's IFT recipe relative to ``lr`` (memory 1/2, bank 1/6 or frozen)."""

    steps: int = 0
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


def _batch(world: Any, rng: np.random.Generator, n: int, qa_frac: float, L: int) -> tuple[torch.Tensor, ...]:
    """n documents, right-padded to L: input_ids, attention_mask, labels (B, L)."""
    ids = np.full((n, L), world.pad_id, dtype=np.int64)
    mask = np.zeros((n, L), dtype=np.int64)
    for i in range(n):
        if len(world.qa_people) and rng.random() < qa_frac:
            doc = world.questions(int(rng.choice(world.qa_people)), rng)
        else:
            doc = world.biography(int(rng.integers(world.n_people)), rng)
        ids[i, : len(doc)] = doc
        mask[i, : len(doc)] = 1
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    return x, m, x.masked_fill(m == 0, -100)


def mean_doc_tokens(world: Any, qa_frac: float, n: int = 400) -> float:
    """Average real tokens per training document (the document mix is seeded, so this is exact per seed)."""
    _, m, _ = _batch(world, np.random.default_rng(12345), n, qa_frac, world.max_doc_len)
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
def recall(model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None) -> float:
    """Exact recall: fraction of (person, attribute) prompts whose argmax next token is the value."""
    if people is not None and len(people) == 0:
        return float("nan")
    was = model.training
    model.eval()
    hits = total = 0
    for prompts, answers in world.recall_prompts(form, people):
        for s in range(0, len(prompts), 512):
            x = torch.from_numpy(prompts[s : s + 512])
            pred = model(x).logits[:, -1].argmax(-1)
            hits += int((pred == torch.from_numpy(answers[s : s + 512])).sum())
            total += len(x)
    model.train(was)
    return hits / total


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
    rec = {"recall": recalls(model, world)}
    if has_memory:
        rec["recall_memory_off"] = recalls(memory_off(model), world)
    return rec


def train_run(job: dict[str, Any]) -> dict[str, Any]:
    """Train one model on one seed and measure it, then fine-tune it on the chat form (each IFT variant)
    and measure again (runs in a worker process; ``job`` is plain data)."""
    from moc.config import TrainConfig
    from moc.model import MoCModel

    torch.set_num_threads(job["threads"])
    cfg = load_capacity(job["experiment"])
    world = _world(cfg)
    t, spec, seed = cfg.train, cfg.models[job["key"]] or {}, job["seed"]
    L = world.max_doc_len
    mcfg = model_config(cfg, job["key"], len(world.vocab), L)
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
    curve, tokens, train_s = _fit(
        model,
        tcfg,
        steps,
        lambda: _batch(world, rng, t.batch_size, t.qa_doc_fraction, L),
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
    ift = cfg.ift
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
            icurve, _, ift_s = _fit(
                tuned,
                icfg,
                ift.steps,
                lambda r=irng: _chat_batch(world, r, ift.batch_size, L),
                t.grad_clip,
                5,
            )
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
    d.setdefault("ift", dataclasses.asdict(CapacityIft()))  # results written before IFT existed
    return d


def _reusable_runs(cfg: CapacityConfig, path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(model key, seed) -> run record from an earlier results.json made with the same recipe and model."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    now = cfg.to_dict()
    if old.get("kind") != "capacity" or _recipe(old.get("config", {})) != _recipe(now):
        return {}
    out = {}
    for key, runs in (old.get("runs") or {}).items():
        if key in cfg.models and old["config"]["models"].get(key) == now["models"][key]:
            for r in runs:
                if r["seed"] in cfg.seed_list:
                    out[(key, r["seed"])] = r
    return out


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


def run_capacity(cfg: CapacityConfig, progress: bool = True) -> dict[str, Any]:
    """Train every model on every seed, measure recall, write results.json, report.md and plots."""
    from moc.accounting import count_params
    from moc_experiments.experiment.capacity_report import write_report

    t_start = time.perf_counter()
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    world = _world(cfg)
    L = world.max_doc_len
    doc_tokens = mean_doc_tokens(world, cfg.train.qa_doc_fraction)
    steps = max(1, math.ceil(cfg.train.tokens / (cfg.train.batch_size * doc_tokens)))
    models: dict[str, Any] = {}
    for key in cfg.models:
        mcfg = model_config(cfg, key, len(world.vocab), L)
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
                "n_tokens": mem.n_tokens,
                "chapter_size": mem.chapter_size,
                "tokens_read": mem.n_selected_tokens,
                "top_k": mem.top_k,
                "chapter_weighting": getattr(mem, "chapter_weighting", "kv"),
                "bank_lr_scale": spec.get("bank_lr_scale", cfg.train.bank_lr_scale),
                "memory_lr_scale": spec.get("memory_lr_scale", cfg.train.memory_lr_scale),
            }
        models[key] = rec
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
    jobs = [
        {"experiment": cfg.to_dict(), "key": k, "seed": s, "steps": steps, "threads": cfg.threads}
        for s in cfg.seed_list
        for k in cfg.models
    ]
    reused = _reusable_runs(cfg, out / RESULTS_FILE) if cfg.resume else {}
    for j in list(jobs):
        rec = reused.get((j["key"], j["seed"]))
        if rec is not None:
            results["runs"][j["key"]].append(rec)
            jobs.remove(j)
    if reused:
        _log(f"reusing {sum(len(r) for r in results['runs'].values())} finished run(s) from {out}", progress)
    workers = _workers(cfg, max(len(jobs), 1))
    results["environment"] |= {"workers": workers, "threads": cfg.threads}
    _log(
        f"{len(cfg.models)} models x {cfg.seeds} seeds = {len(jobs)} runs of {steps} steps "
        f"(~{steps * cfg.train.batch_size * doc_tokens / 1e6:.2f}M tokens each) on {workers} worker(s)",
        progress,
    )

    def done(job: dict[str, Any], rec: dict[str, Any]) -> None:
        results["runs"][job["key"]].append(rec)
        (out / RESULTS_FILE).write_text(json.dumps(results, indent=1))
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
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=1))
    report = write_report(results, out)
    _log(f"done in {results['timing']['total_s']:.0f}s; report: {report}", progress)
    return results
