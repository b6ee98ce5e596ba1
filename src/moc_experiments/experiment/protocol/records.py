"""Records of finished pretraining runs that outlive a session (``records:`` folder of an experiment).

One JSON per (model, seed): the run's results.json record plus what its numbers depend on — the
run's full training config (model, recipe, LR; its seed and folders left out), the measurement and data
settings, and the corpus fingerprint (settings + installed sources). A later run of any experiment
reuses a record only when all of them match, so changing a model, an LR, the eval or the corpus
retrains exactly the runs it changes, and the records of another recipe stay on disk untouched. The
capacity experiment keeps its records the same way (``capacity/pipeline.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moc_experiments.experiment.pool import write_json
from moc_experiments.experiment.protocol.config import ExperimentConfig

KIND = "protocol-run"


def measurement(exp: ExperimentConfig) -> dict[str, Any]:
    """The settings a pretraining run's measured numbers depend on besides its training config."""
    d = exp.to_dict()
    data = {k: v for k, v in d["data"].items() if k != "cache_dir"}  # where, not what
    return {"data": data, "eval": d["eval"]}


def model_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run's training config without its seed, folders and names (the seed is the record's key), and,
    for a dense model, without the memory and bank LRs it has no parameters for: a new memory LR for
    MoC leaves the dense runs' records valid. Applying it twice changes nothing."""
    out = json.loads(json.dumps(cfg))  # a deep copy through JSON, as the record stores it
    out.pop("name", None)
    # fused_optimizer changes AdamW's rounding, not the recipe (as another machine would): records made
    # before it existed (unfused) stay valid; retain_freed_memory changes only where memory comes from.
    for key in ("seed", "out_dir", "fused_optimizer", "retain_freed_memory"):
        out.get("train", {}).pop(key, None)
    for key in ("prepared_dir", "train"):
        out.get("data", {}).pop(key, None)
    memory = out.get("memory", {})
    if not (memory.get("enabled") and memory.get("layers")):
        for key in ("memory_lr", "bank_lr"):
            out.get("train", {}).pop(key, None)
    return out


def record_path(folder: Path, key: str, seed: int) -> Path:
    return folder / f"{key}-seed{seed}.json"


def save_record(
    exp: ExperimentConfig,
    key: str,
    seed: int,
    cfg: dict[str, Any],
    rec: dict[str, Any],
    fingerprint: str | None,
) -> Path:
    """Write one finished pretraining run (atomically) into ``exp.records``."""
    assert exp.records is not None
    path = record_path(Path(exp.records), key, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        path,
        {
            "format": 1,
            "kind": KIND,
            "experiment": exp.name,
            "key": key,
            "seed": seed,
            "measurement": measurement(exp),
            "model": model_identity(cfg),
            "corpus_fingerprint": fingerprint,
            "record": rec,
        },
    )
    return path


def saved_records(
    exp: ExperimentConfig, wanted: dict[tuple[str, int], dict[str, Any]], fingerprint: str | None
) -> dict[tuple[str, int], dict[str, Any]]:
    """(model key, seed) -> run record, for each wanted run (its training config as a dict) whose record
    in ``exp.records`` matches its config, this experiment's measurement settings and the corpus."""
    if exp.records is None or not Path(exp.records).is_dir():
        return {}
    now = measurement(exp)
    out = {}
    for (key, seed), cfg in wanted.items():
        path = record_path(Path(exp.records), key, seed)
        try:
            r = json.loads(path.read_text())
            ok = (
                r.get("kind") == KIND
                and r["measurement"] == now
                and model_identity(r["model"]) == model_identity(cfg)  # records saved before it dropped keys
                and r.get("corpus_fingerprint") == fingerprint
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # missing or not a record of ours: the run trains
        if ok:
            out[(key, seed)] = r["record"]
    return out
