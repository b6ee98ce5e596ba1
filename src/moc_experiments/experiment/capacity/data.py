"""The capacity experiment's data: the world, the real text mixed in (if any), and training batches.

Batches are ``(input_ids, attention_mask, labels, position_ids)``, each (rows, L). One document per row
(right-padded; ``position_ids`` None) or, with ``train.pack``, whole documents packed into rows of up to
``pack_len`` tokens with position ids restarting at each document (the model then attends within
documents only), so almost no token is padding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from moc_experiments.errors import CorpusError
from moc_experiments.experiment.capacity.config import CapacityConfig

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def make_world(cfg: CapacityConfig) -> Any:
    """The configured world: a :class:`KnowledgeWorld` or a :class:`CompositionalWorld`."""
    w = cfg.world
    if w.kind == "compositional":
        from moc_experiments.corpus.compositional import CompositionalWorld

        return CompositionalWorld(
            n_people=w.n_people, n_attributes=w.n_attributes, n_values=w.n_values, first_names=w.first_names,
            last_names=w.last_names, doc_form=w.doc_form, qa_fraction=w.qa_fraction, seed=w.seed,
        )  # fmt: skip
    from moc_experiments.corpus.world import KnowledgeWorld

    return KnowledgeWorld(
        n_people=w.n_people, n_attributes=w.n_attributes, n_values=w.n_values, qa_fraction=w.qa_fraction,
        seed=w.seed,
    )  # fmt: skip


def text_corpus(cfg: CapacityConfig, roots: Any = None, progress: bool = False, **corpus: Any) -> Any:
    """Build or reuse the offline demo corpus for ``cfg.text`` in ``cfg.corpus_dir`` -> ``CorpusPaths``.

    The same builder and settings as the real-text demo (``data.corpus`` of ``moc-lab run demo``) with
    ``text.max_text_mb``; ``roots``/``corpus`` override the source locations and builder settings (tests
    build a tiny corpus from fake sources)."""
    from moc_experiments.corpus import build_corpus
    from moc_experiments.experiment.protocol.config import CorpusSettings

    settings = dataclasses.asdict(CorpusSettings(max_text_mb=cfg.text.max_text_mb)) | corpus
    return build_corpus(cfg.corpus_dir, roots=roots, verbose=progress, **settings)


def world_text(cfg: CapacityConfig, world: Any, corpus: dict[str, str] | None = None) -> Any:
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


def draw_document(
    world: Any, rng: np.random.Generator, qa_frac: float, L: int, text: Any = None, text_frac: float = 0.0
) -> tuple[list[int], str]:
    """One pretraining document and its kind ("world" or "text")."""
    # Only draw when text is mixed in: without it the rng stream (the documents) is exactly as it was.
    if text is not None and text_frac > 0 and rng.random() < text_frac:
        return text.window(rng, L), "text"
    if len(world.qa_people) and rng.random() < qa_frac:
        return world.questions(int(rng.choice(world.qa_people)), rng), "world"
    return world.biography(int(rng.integers(world.n_people)), rng), "world"


def rows(docs: list[list[int]], pad_id: int, L: int) -> Batch:
    """One document per row, right-padded to L."""
    ids = np.full((len(docs), L), pad_id, dtype=np.int64)
    mask = np.zeros((len(docs), L), dtype=np.int64)
    for i, doc in enumerate(docs):
        ids[i, : len(doc)] = doc
        mask[i, : len(doc)] = 1
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    return x, m, x.masked_fill(m == 0, -100), None


def packed_rows(docs: list[list[int]], pad_id: int, pack_len: int) -> Batch:
    """Whole documents packed greedily into rows of ``pack_len`` tokens, in order; position ids restart
    at 0 at each document (the model's packed-document convention); only a row's tail is padding."""
    groups: list[list[list[int]]] = [[]]
    used = 0
    for doc in docs:
        if len(doc) > pack_len:
            raise CorpusError(
                f"a document of {len(doc)} tokens does not fit train.pack_len={pack_len}; raise it"
            )
        if used + len(doc) > pack_len:
            groups.append([])
            used = 0
        groups[-1].append(doc)
        used += len(doc)
    width = max(sum(len(d) for d in g) for g in groups)
    ids = np.full((len(groups), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(groups), width), dtype=np.int64)
    pos = np.zeros((len(groups), width), dtype=np.int64)
    for r, g in enumerate(groups):
        at = 0
        for doc in g:
            ids[r, at : at + len(doc)] = doc
            mask[r, at : at + len(doc)] = 1
            pos[r, at : at + len(doc)] = np.arange(len(doc))
            at += len(doc)
    x, m = torch.from_numpy(ids), torch.from_numpy(mask)
    # Each document's first token has no target from the previous document: mask the label that would
    # predict it (labels are shifted inside the model, so that is the label at its own position).
    y = x.masked_fill(m == 0, -100)
    starts = torch.from_numpy(pos == 0) & (m == 1)
    starts[:, 0] = False
    y = y.masked_fill(starts, -100)
    return x, m, y, torch.from_numpy(pos)


def batch(
    world: Any,
    rng: np.random.Generator,
    n: int,
    qa_frac: float,
    L: int,
    text: Any = None,
    text_frac: float = 0.0,
    counts: dict[str, int] | None = None,
    pack_len: int = 0,
) -> Batch:
    """n pretraining documents: one per right-padded row of L tokens, or packed (``pack_len`` > 0).

    With ``text`` (a :class:`~moc_experiments.corpus.world_text.WorldText`) and ``text_frac > 0`` a share
    ``text_frac`` of the documents are real-text windows; ``counts`` accumulates real tokens per kind."""
    docs = []
    for _ in range(n):
        doc, kind = draw_document(world, rng, qa_frac, L, text, text_frac)
        docs.append(doc)
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + len(doc)
    return packed_rows(docs, world.pad_id, pack_len) if pack_len else rows(docs, world.pad_id, L)


def chat_batch(world: Any, rng: np.random.Generator, n: int, L: int) -> Batch:
    """n chat documents about ``qa_people``, one per right-padded row."""
    return rows([world.chat(int(rng.choice(world.qa_people)), rng) for _ in range(n)], world.pad_id, L)


def mixed(
    first: Callable[[], Batch], second: Callable[[], Batch], share: float, rng: np.random.Generator
) -> Batch:
    """Rows of ``first()`` with each row replaced by a row of ``second()`` with probability ``share``
    (both one document per row, same width): IFT with replayed pretraining documents."""
    x, m, y, _ = first()
    x2, m2, y2, _ = second()
    pick = torch.from_numpy(rng.random(x.shape[0]) < share)[:, None]
    return torch.where(pick, x2, x), torch.where(pick, m2, m), torch.where(pick, y2, y), None


def mean_doc_tokens(
    world: Any, qa_frac: float, n: int = 400, text: Any = None, text_frac: float = 0.0
) -> float:
    """Average real tokens per training document, over a fixed seeded sample of the document mix."""
    _, m, _, _ = batch(world, np.random.default_rng(12345), n, qa_frac, world.max_doc_len, text, text_frac)
    return float(m.sum()) / n


def steps_for(cfg: CapacityConfig, world: Any, doc_tokens: float) -> int:
    """Optimizer steps per run: ``exposures`` documents per person, or ``tokens`` real tokens."""
    t = cfg.train
    if t.exposures is not None:
        return max(1, math.ceil(t.exposures * world.n_people / t.batch_size))
    return max(1, math.ceil(t.tokens / (t.batch_size * doc_tokens)))


def seq_len(cfg: CapacityConfig, world: Any) -> int:
    """The longest row a model sees: a document, or a packed row."""
    return max(world.max_doc_len, cfg.train.pack_len) if cfg.train.pack else world.max_doc_len


def flops_len(cfg: CapacityConfig, world: Any) -> int:
    """The context length FLOPs per token are counted at: the longest pretraining document (a biography
    when the mix has no question documents and no real text, else any document)."""
    if cfg.train.qa_doc_fraction == 0 and cfg.text.fraction == 0 and hasattr(world, "max_bio_len"):
        return world.max_bio_len
    return world.max_doc_len
