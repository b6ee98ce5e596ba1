"""Turn raw units into documents and share a byte budget among sources, deterministically."""

from __future__ import annotations

import random
from collections.abc import Callable


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def chunk_units(groups: list[list[str]], target_bytes: int) -> list[list[str]]:
    """Consecutive units of each group packed into chunks of about ``target_bytes`` (never across groups).

    A unit longer than the target becomes a chunk of its own.
    """
    chunks: list[list[str]] = []
    for group in groups:
        cur: list[str] = []
        size = 0
        for unit in group:
            n = utf8_len(unit)  # raw size: cleaning only shrinks a unit
            if cur and size + n > target_bytes:
                chunks.append(cur)
                cur, size = [], 0
            cur.append(unit)
            size += n
        if cur:
            chunks.append(cur)
    return chunks


def raw_size(chunks: list[list[str]], joiner: str) -> int:
    """Upper bound on the bytes ``select_documents`` can take from ``chunks`` (cleaning only shrinks)."""
    return sum(sum(utf8_len(u) for u in c) + len(joiner) * (len(c) - 1) + 1 for c in chunks)


def allocate_budget(budget: int, available: dict[str, int], weights: dict[str, float]) -> dict[str, int]:
    """Split ``budget`` bytes among sources in proportion to ``weights``, capped by what each has.

    Water-filling: a source smaller than its share gives the surplus to the others (by weight).
    """
    quota = {name: 0 for name in available}
    open_ = {n for n, size in available.items() if size > 0 and weights.get(n, 0) > 0}
    left = budget
    while open_ and left > 0:
        total_w = sum(weights[n] for n in open_)
        share = {n: left * weights[n] / total_w for n in open_}
        capped = {n for n in open_ if available[n] - quota[n] <= share[n]}
        if not capped:
            for n in open_:
                quota[n] += int(share[n])
            break
        for n in capped:
            left -= available[n] - quota[n]
            quota[n] = available[n]
        open_ -= capped
    return quota


def select_documents(
    chunks: list[list[str]],
    quota: int,
    rng: random.Random,
    clean: Callable[[str], str],
    joiner: str,
    max_consecutive_misses: int = 64,
) -> list[str]:
    """Documents from randomly ordered chunks, cleaned, until ``quota`` UTF-8 bytes are used.

    Never exceeds ``quota``: a document that does not fit is skipped, and the scan stops after
    ``max_consecutive_misses`` skips in a row (the quota is then as full as it will get).
    """
    order = list(range(len(chunks)))
    rng.shuffle(order)
    docs: list[str] = []
    used = misses = 0
    for i in order:
        if used >= quota or misses >= max_consecutive_misses:
            break
        doc = joiner.join(c for c in (clean(u) for u in chunks[i]) if c)
        if not doc:
            continue
        n = utf8_len(doc) + 1  # +1: the newline that separates documents when concatenated
        if used + n > quota:
            misses += 1
            continue
        misses = 0
        docs.append(doc)
        used += n
    return docs
