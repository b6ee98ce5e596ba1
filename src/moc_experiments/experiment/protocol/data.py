"""Everything an experiment reads, made once and cached: corpus, tokenizer, prepared tokens, probe baselines.

    data = prepare_experiment_data(exp, cache_dir="runs/demo/data")
    data.pretrain_dir, data.ift_dir, data.tokenizer_dir, data.probes_dir, data.probe_tasks

Reruns reuse each piece when its inputs are unchanged (the corpus builder and ``moc.data`` prepare
check fingerprints; the tokenizer is keyed by its sources and settings here).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moc.config import ConfigError
from moc_experiments.experiment.protocol.config import ExperimentConfig, check_data_given

_TOKENIZER_STAMP = ".moc-experiment-tokenizer.json"


@dataclass
class ExperimentData:
    pretrain_dir: Path
    ift_dir: Path | None
    tokenizer_dir: Path
    vocab_size: int
    probes_dir: Path | None
    probe_tasks: list[str]
    probe_info: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> n, chance, majority, ...
    summary: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    # The corpus's pretraining text (its held-out documents are scored by kind); None for user data.
    pretrain_text: Path | None = None


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"moc-lab run: {msg}", flush=True)


def _source_state(sources: list[str]) -> list[Any]:
    out: list[Any] = []
    for s in sources:
        p = Path(s)
        if p.is_file():
            st = p.stat()
            out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            out.append([str(p.resolve()), [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]])
        else:
            out.append(s)  # hf:NAME and the like: keyed by name only
    return out


def _tokenizer(exp: ExperimentConfig, sources: list[str], out: Path, progress: bool) -> Path:
    """The experiment's tokenizer: the given one, or a byte-level BPE trained on the pretraining text."""
    if exp.data.tokenizer is not None:
        return Path(exp.data.tokenizer)
    from moc.data import train_tokenizer

    key = {
        "sources": _source_state(sources),
        "vocab_size": exp.data.vocab_size,
        "text_field": exp.data.text_field,
        "txt_mode": exp.data.txt_mode,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    stamp = out / _TOKENIZER_STAMP
    if stamp.is_file() and json.loads(stamp.read_text()).get("digest") == digest:
        _log(f"using cached tokenizer {out}", progress)
        return out
    _log(f"training a {exp.data.vocab_size}-token byte-level BPE on the pretraining text", progress)
    train_tokenizer(
        sources,
        exp.data.vocab_size,
        out,
        text_field=exp.data.text_field,
        txt_mode=exp.data.txt_mode,
        progress=False,
    )
    stamp.write_text(json.dumps({"digest": digest, "settings": key}, default=str))
    return out


def _pick_acc(records: list[dict], scores: list[list[float]]) -> float:
    """Accuracy of picking the highest-scoring choice per record (ties split evenly)."""
    total = 0.0
    for r, s in zip(records, scores):
        best = [i for i, x in enumerate(s) if x == max(s)]
        total += (r["label"] in best) / len(best)
    return total / len(records)


def knowledge_free_baselines(
    records: list[dict], tokenizer: Any, unigram_logp: np.ndarray
) -> dict[str, float]:
    """Scores reachable without knowing any fact, under lm-eval's ``acc`` (summed log-likelihood of
    " " + choice after the question):

    - ``shortest_answer``: pick the choice with the fewest tokens, what a model with near-uniform
      next-token probabilities (e.g. untrained) does;
    - ``unigram``: pick the choice whose tokens are most frequent in the pretraining data, what a
      model that learned only token frequencies (early in training) does.
    """
    if not records:
        return {"shortest_answer": float("nan"), "unigram": float("nan")}
    ids = [
        [tokenizer(" " + str(c), add_special_tokens=False)["input_ids"] for c in r["choices"]]
        for r in records
    ]
    shortest = _pick_acc(records, [[-len(t) for t in choice_ids] for choice_ids in ids])
    unigram = _pick_acc(records, [[float(unigram_logp[t].sum()) for t in choice_ids] for choice_ids in ids])
    return {"shortest_answer": shortest, "unigram": unigram}


def unigram_log_probs(pretrain_dir: Path, vocab_size: int) -> np.ndarray:
    """log p(token) over the pretraining train split, add-one smoothed: (vocab_size,)."""
    from moc.data import load_prepared

    counts = np.bincount(np.asarray(load_prepared(pretrain_dir, "train").tokens), minlength=vocab_size)
    counts = counts.astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


def probe_baselines(
    probes_dir: Path, tasks: list[str], limit: int | None, tokenizer_dir: Path, pretrain_dir: Path
) -> dict:
    """Per task: n, chance, majority answer, shortest answer and unigram accuracy on the questions
    evaluated (the first ``limit`` of each task, as lm-eval takes them). Needs the corpus-style ``meta.json``
    (task -> file of ``{question, choices, label, answer}`` records); other tasks get no baselines."""
    meta_file = probes_dir / "meta.json"
    if not meta_file.is_file():
        return {}
    from moc.data import load_tokenizer
    from moc_experiments.corpus.probes import baselines

    meta = json.loads(meta_file.read_text())
    tok = load_tokenizer(tokenizer_dir)
    logp = unigram_log_probs(pretrain_dir, len(tok))
    out = {}
    for task in tasks:
        info = meta.get("tasks", {}).get(task)
        if info is None or not (probes_dir / info["file"]).is_file():
            continue
        with open(probes_dir / info["file"], encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        records = records[:limit] if limit else records
        b = baselines(records)
        out[task] = {
            "n": len(records),
            "chance": b["chance"],
            "majority": b["majority_answer_acc"],
            "majority_label": b["majority_label_acc"],
            **knowledge_free_baselines(records, tok, logp),
        }
    return out


def _count_tokens(prepared: Path) -> dict[str, int]:
    from moc.data import read_meta

    return {k: int(v) for k, v in read_meta(prepared)["n_tokens"].items()}


def prepare_experiment_data(exp: ExperimentConfig, cache_dir: Path, progress: bool = True) -> ExperimentData:
    """Build or reuse the experiment's data in ``cache_dir``; see the module docstring."""
    from moc.data import prepare_chat_data, prepare_pretraining_data, read_meta

    check_data_given(exp)
    cache_dir.mkdir(parents=True, exist_ok=True)
    d = exp.data
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    if d.source == "corpus":
        from moc_experiments.corpus import build_corpus

        paths = build_corpus(cache_dir / "corpus", **asdict(d.corpus), verbose=progress)
        pretrain_sources, ift_sources = [str(paths.pretrain_text)], [str(paths.ift_train)]
        probes_dir, probe_tasks = paths.probes_dir, list(paths.probe_tasks)
        text_field, txt_mode = "text", "file"
        manifest = json.loads(paths.manifest.read_text())
        corpus_text: Path | None = paths.pretrain_text
        # The text's own hash, not the build cache's fingerprint (which names local paths and mtimes):
        # the same sources and settings give the same text in any clone, so records carry over.
        fingerprint = hashlib.sha256(paths.pretrain_text.read_bytes()).hexdigest()
        sources_used = [r["name"] for r in manifest.get("text_sources", []) if r.get("used")]
        description = (
            f"the offline demo corpus ({manifest['pretrain']['text_bytes'] / 1e6:.1f} MB of real text + "
            f"{manifest['pretrain']['fact_bytes'] / 1e6:.2f} MB of fact sentences, "
            f"{sum(f['count'] for f in manifest['facts'].values())} facts x {d.corpus.fact_repeats} mentions)"
        )
    else:
        pretrain_sources, ift_sources = list(d.pretrain), list(d.ift)
        probes_dir = Path(d.probes_dir) if d.probes_dir else None
        probe_tasks = list(d.probe_tasks)
        text_field, txt_mode = d.text_field, d.txt_mode
        description = f"user data ({', '.join(pretrain_sources)})"
        corpus_text, fingerprint, sources_used = None, None, None
    timing["corpus_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok_dir = _tokenizer(exp, pretrain_sources, cache_dir / "tokenizer", progress)
    timing["tokenizer_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    _log("tokenizing the pretraining text", progress)
    pretrain_dir = prepare_pretraining_data(
        pretrain_sources,
        tok_dir,
        cache_dir / "pretrain",
        val_fraction=d.val_fraction,
        seed=d.split_seed,
        text_field=text_field,
        txt_mode=txt_mode,
        progress=False,
    )
    ift_dir = None
    if exp.ift.steps > 0:
        ift_dir = prepare_chat_data(
            ift_sources,
            tok_dir,
            cache_dir / "ift",
            val_fraction=d.val_fraction,
            seed=d.split_seed,
            progress=False,
        )
    timing["prepare_s"] = time.perf_counter() - t0

    vocab = int(read_meta(pretrain_dir)["vocab_size"])
    if d.source == "corpus" and d.probe_tasks and exp.eval.probes:
        unknown = sorted(set(d.probe_tasks) - set(probe_tasks))
        if unknown:
            raise ConfigError(
                f"data.probe_tasks: {unknown} are not corpus probe tasks; choose from {probe_tasks}"
            )
        probe_tasks = list(d.probe_tasks)  # a subset of the corpus probes
    if not exp.eval.probes:
        probes_dir, probe_tasks = None, []
    info = {}
    if probes_dir is not None and probe_tasks:
        info = probe_baselines(probes_dir, probe_tasks, exp.eval.probe_limit, tok_dir, pretrain_dir)
    pre_tokens = _count_tokens(pretrain_dir)
    summary = {
        "source": d.source,
        "description": description,
        "tokenizer": str(tok_dir),
        "vocab_size": vocab,
        "pretrain_train_tokens": pre_tokens.get("train"),
        "pretrain_val_tokens": pre_tokens.get("val"),
        "ift_train_tokens": _count_tokens(ift_dir).get("train") if ift_dir else None,
        "probes_dir": str(probes_dir) if probes_dir else None,
        # Records of finished runs are reused only on the same corpus (sources installed, settings).
        "corpus_fingerprint": fingerprint,
        "text_sources": sources_used,
    }
    return ExperimentData(
        pretrain_dir, ift_dir, tok_dir, vocab, probes_dir, probe_tasks, info, summary, timing, corpus_text
    )
