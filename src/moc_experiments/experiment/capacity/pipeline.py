"""Run the capacity experiment end to end: prepare the data, plan the runs, run them on a worker pool,
keep every finished run in results.json (reusing those an earlier run already made), write the report."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moc_experiments.errors import ExperimentError
from moc_experiments.experiment.capacity.config import (
    CapacityConfig,
    CapacityIft,
    CapacityText,
    CapacityTrain,
    WorldSettings,
)
from moc_experiments.experiment.capacity.data import (
    flops_len,
    make_world,
    mean_doc_tokens,
    seq_len,
    steps_for,
    text_corpus,
    world_text,
)
from moc_experiments.experiment.capacity.models import model_records
from moc_experiments.experiment.capacity.train import CapacityJob, step_seconds, train_run
from moc_experiments.experiment.pool import RESULTS_FILE, cores, execute, log, write_json


def _log(msg: str, progress: bool) -> None:
    log("moc-lab run capacity", msg, progress)


@dataclass
class PreparedData:
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


def prepare(cfg: CapacityConfig, progress: bool) -> PreparedData:
    """Build the world, the corpus (when real text or chat is used) and the number of steps per run."""
    world = make_world(cfg)
    L = world.max_doc_len
    text, corpus, text_info = None, None, None
    if cfg.uses_corpus:
        paths = text_corpus(cfg, progress=progress)
        corpus = {"text": str(paths.pretrain_text), "ift": str(paths.ift_train)}
        text = world_text(cfg, world, corpus)
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
    return PreparedData(
        world, text, corpus, text_info, vocab_size, doc_tokens, steps_for(cfg, world, doc_tokens)
    )


# --------------------------------------------------------------------------------------------------
# Reusing finished runs
# --------------------------------------------------------------------------------------------------

_NOT_RECIPE = (
    "name",
    "description",
    "models",
    "compare",
    "baseline",
    "seeds",
    "workers",
    "threads",
    "out_dir",
    "resume",
    "records",
    "reuse_records",
)
_SECTIONS = {"world": WorldSettings, "train": CapacityTrain, "ift": CapacityIft, "text": CapacityText}


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """What every run's numbers depend on besides its model and seed, from an experiment's config or from
    a recipe saved earlier (the same function both ways, so that a record saved before a field was added
    still matches: the field takes its default, which is what the record was made with)."""
    d = {k: v for k, v in config.items() if k not in _NOT_RECIPE}
    unused_text = "text" in d and d["text"] is None  # a saved recipe that used no corpus
    for name, cls in _SECTIONS.items():
        d[name] = dataclasses.asdict(cls()) | (d.get(name) or {})
    d["train"].pop("saturation_seeds", None)  # how many seeds also run at half length: no number changes
    d["train"].pop("log_every", None)
    if unused_text or not (d["text"]["fraction"] > 0 or d["ift"]["data"] == "real_chat"):
        d["text"] = None  # the corpus settings do not matter when no corpus is used
    return d


def _runs_of(results: dict[str, Any]) -> dict[tuple[str, int, float], dict[str, Any]]:
    """(model key, seed, run-length scale) -> record, over results.json's runs and saturation runs."""
    out = {}
    for section, scale in (("runs", 1.0), ("saturation", 0.5)):
        for key, runs in (results.get(section) or {}).items():
            for r in runs:
                out[(key, r["seed"], scale)] = r
    return out


def reusable_runs(
    cfg: CapacityConfig, path: Path, corpus_stamp: str | None = None
) -> dict[tuple[str, int, float], dict[str, Any]]:
    """(model key, seed, scale) -> run record from an earlier results.json made with the same recipe and
    model (and, when real text is used, the same corpus: ``corpus_stamp``, its MANIFEST fingerprint)."""
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
    return {
        (key, seed, scale): r
        for (key, seed, scale), r in _runs_of(old).items()
        if key in cfg.models
        and old["config"]["models"].get(key) == now["models"][key]
        and seed in cfg.seed_list
    }


def record_path(folder: Path, key: str, seed: int, scale: float) -> Path:
    """Where one finished run's record lives in a records folder (``capacity.records``)."""
    return folder / (f"{key}-seed{seed}" + ("" if scale == 1.0 else f"-x{scale:g}") + ".json")


def save_record(cfg: CapacityConfig, job: CapacityJob, rec: dict[str, Any], corpus_stamp: str | None) -> Path:
    """Write one finished run to the records folder (atomically), with what it depends on: the recipe,
    the model's settings and the corpus fingerprint, so a later sweep reuses it only where they match."""
    assert cfg.records is not None
    path = record_path(Path(cfg.records), job.key, job.seed, job.scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "format": 1,
            "kind": "capacity-run",
            "experiment": cfg.name,
            "key": job.key,
            "seed": job.seed,
            "scale": job.scale,
            "recipe": _recipe(cfg.to_dict()),
            "model": cfg.models[job.key],
            "corpus_fingerprint": corpus_stamp,
            "record": rec,
        },
    )
    return path


def _at_length(recipe: dict[str, Any], scale: float) -> dict[str, Any]:
    """The recipe of a run at ``scale`` of its experiment's length, its exposures folded into one number:
    a half-length run of a 2,000-biography sweep is the same run as a full one of a 1,000 sweep (the same
    schedule over the same steps, data and seed). Token-budget recipes are left as they are."""
    train = recipe.get("train") or {}
    if train.get("exposures") is None:
        return recipe | {"scale": scale}
    return recipe | {"train": train | {"exposures": train["exposures"] * scale}}


def saved_records(cfg: CapacityConfig, corpus_stamp: str | None = None) -> dict[tuple[str, int, float], Any]:
    """(model key, seed, scale) -> run record from the records folders (``records``, then the read-only
    ``reuse_records``), for the files whose recipe at their run length, model and corpus match a run of
    this experiment (others are left alone: another recipe's runs stay on disk)."""
    folders = [f for f in (cfg.records, *cfg.reuse_records) if f is not None and Path(f).is_dir()]
    now, recipe = cfg.to_dict(), _recipe(cfg.to_dict())
    # the run lengths this experiment trains: the full run, and half of it for the saturation check
    wanted = {scale: _at_length(recipe, scale) for scale in (1.0, 0.5)}
    out: dict[tuple[str, int, float], Any] = {}
    for path in (p for folder in folders for p in sorted(Path(folder).glob("*.json"))):
        try:
            r = json.loads(path.read_text())
            key, seed = r["key"], int(r["seed"])
            theirs = _at_length(_recipe(r["recipe"]), float(r["scale"]))
            ok = (
                r.get("kind") == "capacity-run"
                and key in cfg.models
                and seed in cfg.seed_list
                and r["model"] == now["models"][key]
                and r.get("corpus_fingerprint") == corpus_stamp
            )
            scales = [scale for scale, rec in wanted.items() if ok and rec == theirs]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a run record of this kind: not ours to read
        for scale in scales:
            out.setdefault((key, seed, scale), r["record"])
    return out


RunKey = tuple[str, int, float]  # (model key, seed, run-length scale)


def finished_runs(cfg: CapacityConfig, path: Path, corpus_stamp: str | None) -> dict[RunKey, Any]:
    """The runs this experiment need not train: matching records (``records``) and runs of an earlier
    results.json at ``path``; none with ``resume: false``."""
    if not cfg.resume:
        return {}
    return saved_records(cfg, corpus_stamp) | reusable_runs(cfg, path, corpus_stamp)


def keep_earlier_results(path: Path, reused: dict[tuple[str, int, float], Any]) -> Path | None:
    """Move an earlier results.json aside (``results.prev-N.json``) when it holds runs this experiment will
    not carry over (other models or seeds, another recipe, or ``resume: false``), so no finished run is
    ever lost by rerunning into the same folder. Returns where it went, or None if nothing had to move."""
    if not path.is_file():
        return None
    try:
        old_runs = set(_runs_of(json.loads(path.read_text())))
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
        old_runs = None  # unreadable: keep it as it is
    if old_runs is not None and old_runs <= set(reused):
        return None
    n = 1
    while (backup := path.with_name(f"results.prev-{n}.json")).exists():
        n += 1
    path.replace(backup)
    return backup


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


def workers(cfg: CapacityConfig, n_jobs: int) -> int:
    if cfg.workers:
        return min(cfg.workers, n_jobs)
    return max(1, min(cores() // max(cfg.threads, 1), 2, n_jobs))


def plan_jobs(cfg: CapacityConfig, data: PreparedData, models: dict[str, Any]) -> list[CapacityJob]:
    """Every (model, seed) run, plus the half-length runs of the saturation check on the first
    ``train.saturation_seeds`` seeds. Scheduled seed by seed (costlier runs first within a seed; each run
    is seeded alone, so the order changes no number): a sweep stopped partway holds whole seeds of every
    model, which paired comparisons can use."""
    base = {"experiment": cfg.to_dict(), "threads": cfg.threads, "corpus": data.corpus}
    jobs = []
    top = 2 * max(m["flops_per_token"]["train"] for m in models.values())  # above any one seed's costs
    for rank, s in enumerate(cfg.seed_list):
        seed_first = (len(cfg.seed_list) - rank) * top
        for k in cfg.models:
            cost = models[k]["flops_per_token"]["train"]
            jobs.append(CapacityJob(key=k, seed=s, steps=data.steps, cost=seed_first + cost, **base))
            if s in cfg.seed_list[: cfg.train.saturation_seeds]:
                half = max(1, data.steps // 2)
                jobs.append(
                    CapacityJob(
                        key=k, seed=s, steps=half, scale=0.5, ift=False, cost=seed_first + cost / 2, **base
                    )
                )
    return jobs


def capacity_plan(cfg: CapacityConfig) -> str:
    """What ``run_capacity`` would do, without training (``moc-lab run capacity --plan``): steps and
    tokens per run, every model's size and FLOPs, and how many runs an earlier results.json saves."""
    data = prepare(cfg, progress=False)
    world, steps = data.world, data.steps
    L = seq_len(cfg, world)
    models = model_records(cfg, data.vocab_size, flops_len(cfg, world))
    jobs = plan_jobs(cfg, data, models)
    reused = finished_runs(cfg, cfg.run_dir / RESULTS_FILE, data.corpus_stamp)
    todo = [j for j in jobs if (j.key, j.seed, j.scale) not in reused]  # a record may hold more seeds
    tokens = steps * cfg.train.batch_size * data.doc_tokens
    seeds = ", ".join(map(str, cfg.seed_list))
    size = f"{world.n_people} people x {world.n_attributes} attributes"
    if hasattr(world, "bits"):
        size += f" x {world.n_values} values ({world.bits / 1e3:.1f} kbit)"
    lines = [
        f"capacity experiment {cfg.name!r} -> {cfg.run_dir}",
        f"world: {size}, vocabulary {data.vocab_size}, rows of up to {L} tokens"
        + (f", {cfg.text.fraction:.0%} real text" if data.text else ""),
        f"each run: {steps} steps x {cfg.train.batch_size} documents (~{tokens / 1e6:.2f}M tokens, "
        f"{steps * cfg.train.batch_size / world.n_people:.0f} documents per person), LR {cfg.train.lr:g}; "
        f"IFT {cfg.ift.steps} steps ({cfg.ift.data})",
        f"{len(cfg.models)} models x {cfg.seeds} seeds ({seeds})"
        + (f" + {cfg.train.saturation_seeds} seed(s) at half length" if cfg.train.saturation_seeds else "")
        + f" = {len(jobs)} runs; {len(jobs) - len(todo)} already run (records, or "
        f"{cfg.run_dir / RESULTS_FILE}), {len(todo)} to train",
        "",
        f"{'model':<44} {'params':>9} {'non-emb':>9} {'train FLOPs/tok':>16} {'inference FLOPs/tok':>20}",
    ]
    for rec in models.values():
        p, fl = rec["params"], rec["flops_per_token"]
        lines.append(
            f"{rec['label'][:44]:<44} {p['total']:>9,} {p['non_embedding']:>9,} {fl['train']:>16,.0f} "
            f"{fl['inference']:>20,.0f}"
        )
    if todo:
        lines += ["", *estimated_hours(cfg, todo, reused, workers(cfg, len(todo)))]
    return "\n".join(lines)


def estimated_hours(
    cfg: CapacityConfig, todo: list[CapacityJob], done: dict[RunKey, Any], n_workers: int
) -> list[str]:
    """Lines estimating the training time of ``todo`` on this machine: each model's seconds per step from
    its finished runs' records where there are any (their machine), else timed here now."""
    per_step, source = {}, {}
    for key in dict.fromkeys(j.key for j in todo):
        rates = [r["train_s"] / r["steps"] for (k, _, _), r in done.items() if k == key and r.get("steps")]
        if rates:
            per_step[key] = sorted(rates)[len(rates) // 2]
            source[key] = f"median of {len(rates)} finished runs"
        else:
            per_step[key] = step_seconds(cfg.to_dict(), key, cfg.threads)
            source[key] = "timed here now" + (" (compiled)" if cfg.train.compile else "")
    lines = [f"{'model':<20} {'ms/step':>8}  source"]
    lines += [f"{k:<20} {1e3 * per_step[k]:>8.1f}  {source[k]}" for k in per_step]
    core_s = sum(j.steps * per_step[j.key] for j in todo)
    lines.append(
        f"estimated training time: {core_s / 3600:.2f} core-hours, ~{core_s / 3600 / n_workers:.2f} h on "
        f"{n_workers} worker(s) (pretraining steps only; measurement and IFT add a little to each run)"
    )
    return lines


def run_capacity(cfg: CapacityConfig, progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Train every model on every seed, measure recall and bits, write results.json, report.md and plots.

    ``train=False``: train nothing; results.json and the report hold the finished runs (its records and an
    earlier results.json), e.g. to rebuild a sweep's report in a fresh clone from its records."""
    from moc_experiments.experiment.capacity.report import write_report

    t_start = time.perf_counter()
    out = cfg.run_dir
    out.mkdir(parents=True, exist_ok=True)
    data = prepare(cfg, progress)
    world = data.world
    models = model_records(cfg, data.vocab_size, flops_len(cfg, world))
    results: dict[str, Any] = {
        "format": 1,
        "kind": "capacity",
        "name": cfg.name,
        "description": cfg.description,
        "config": cfg.to_dict(),
        "world": world.stats(),
        "doc_len": world.max_doc_len,
        "flops_len": flops_len(cfg, world),
        "steps": data.steps,
        "mean_doc_tokens": data.doc_tokens,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
            "cores": cores(),
        },
        "models": models,
        "runs": {k: [] for k in cfg.models},
    }
    if cfg.train.saturation_seeds:
        results["saturation"] = {k: [] for k in cfg.models}
    if data.text_info is not None:
        results["text"] = data.text_info
    jobs = plan_jobs(cfg, data, models)
    reused = finished_runs(cfg, out / RESULTS_FILE, data.corpus_stamp)
    section = {1.0: "runs", 0.5: "saturation"}
    todo = []
    for j in jobs:
        rec = reused.get((j.key, j.seed, j.scale))
        if rec is None or rec.get("steps", j.steps) != j.steps:  # a run of another length is not this one
            todo.append(j)
        else:
            results[section[j.scale]][j.key].append(rec)
    if len(todo) < len(jobs):
        _log(f"reusing {len(jobs) - len(todo)} finished run(s) from {out}", progress)
    backup = keep_earlier_results(out / RESULTS_FILE, reused)
    if backup is not None:
        _log(f"kept the earlier results (runs this experiment does not repeat) as {backup}", progress)
    n_workers = workers(cfg, max(len(todo), 1))
    results["environment"] |= {"workers": n_workers, "threads": cfg.threads}
    _log(
        f"{len(cfg.models)} models x {cfg.seeds} seeds: {len(todo)} runs to train, {data.steps} steps "
        f"each (~{data.steps * cfg.train.batch_size * data.doc_tokens / 1e6:.2f}M tokens) on "
        f"{n_workers} worker(s)",
        progress,
    )

    def done(job: CapacityJob, rec: dict[str, Any]) -> None:
        results[section[job.scale]][job.key].append(rec)
        write_json(out / RESULTS_FILE, results)  # partial results survive an interrupted run
        if cfg.records is not None:  # and, in the records folder, a session's end
            save_record(cfg, job, rec, data.corpus_stamp)
        bits = rec.get("bits", {}).get("total")
        _log(
            f"{job.name}: recall {100 * rec['recall']['bio']:.1f}%"
            + (f", {bits / 1e3:.1f} kbit" if bits is not None else "")
            + (
                f" (shuffled chapters {rec['bits_shuffled']['total'] / 1e3:.1f} kbit)"
                if "bits_shuffled" in rec
                else ""
            )
            + f", loss {rec['final_loss']:.3f}, {rec['train_s']:.0f}s "
            f"(elapsed {time.perf_counter() - t_start:.0f}s)",
            progress,
        )

    if train:
        execute(todo, n_workers, done, train_run)
    elif todo:
        _log(f"{len(todo)} run(s) not trained (reporting the finished ones only)", progress)
        if not any(results["runs"].values()):  # half-length runs alone make no report
            halves = len(jobs) - len(todo)
            raise ExperimentError(
                f"{cfg.name}: no finished run to report"
                + (f" at full length (only {halves} half-length run(s))" if halves else "")
                + f" (records: {cfg.records or 'none set'}, results: {out / RESULTS_FILE}); "
                f"run `moc-lab run {cfg.name}` first"
            )
    for name in ("runs", "saturation"):
        for k in results.get(name, {}):
            results[name][k].sort(key=lambda r: r["seed"])
    results["timing"] = {"total_s": time.perf_counter() - t_start, "trained": train}
    write_json(out / RESULTS_FILE, results)
    report = write_report(results, out)
    _log(f"done in {results['timing']['total_s']:.0f}s; report: {report}", progress)
    return results
