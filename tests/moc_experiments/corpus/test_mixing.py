from __future__ import annotations

import random

from moc_experiments.corpus.mixing import allocate_budget, chunk_units, raw_size, select_documents, utf8_len


def test_chunk_units_packs_within_groups() -> None:
    chunks = chunk_units([["aaaa", "bbbb", "cccc"], ["dd"]], target_bytes=8)
    assert chunks == [["aaaa", "bbbb"], ["cccc"], ["dd"]]


def test_allocate_budget_water_fills() -> None:
    quota = allocate_budget(
        100, {"small": 10, "big": 1000, "other": 1000}, {"small": 1, "big": 1, "other": 2}
    )
    assert quota["small"] == 10  # capped at what it has
    assert quota["other"] == 2 * quota["big"]  # the rest split by weight
    assert sum(quota.values()) <= 100 and sum(quota.values()) >= 98


def test_allocate_budget_everything_fits() -> None:
    assert allocate_budget(1000, {"a": 10, "b": 20}, {"a": 1, "b": 1}) == {"a": 10, "b": 20}


def test_select_documents_respects_quota_and_is_deterministic() -> None:
    chunks = [[f"unit {i} " * (i % 7 + 1)] for i in range(200)]
    docs = select_documents(chunks, 500, random.Random(3), str.strip, "\n")
    assert sum(utf8_len(d) + 1 for d in docs) <= 500
    assert sum(utf8_len(d) + 1 for d in docs) > 400
    assert docs == select_documents(chunks, 500, random.Random(3), str.strip, "\n")
    assert docs != select_documents(chunks, 500, random.Random(4), str.strip, "\n")


def test_select_documents_can_take_everything() -> None:
    chunks = chunk_units([["alpha", "beta"], ["gamma"]], 100)
    docs = select_documents(chunks, raw_size(chunks, "\n\n"), random.Random(0), str.strip, "\n\n")
    assert sorted(docs) == ["alpha\n\nbeta", "gamma"]
