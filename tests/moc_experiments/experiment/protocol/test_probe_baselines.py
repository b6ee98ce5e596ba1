"""The knowledge-free probe baselines the demo's conclusions rest on, against hand-computed values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from moc_experiments.experiment.protocol import data


class CharTokenizer:
    """One token per character (id = ord(c) - 32), like a Hugging Face tokenizer's ``__call__``."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) - 32 for c in text]}

    def __len__(self) -> int:
        return 96


RECORDS = [
    # " " + choice: " ab" = 3 tokens, " c" = 2, " dddd" = 5, " ee" = 3
    {"choices": ["ab", "c", "dddd", "ee"], "label": 1, "answer": "c"},  # shortest: "c" -> right
    {"choices": ["xy", "zz", "w", "vvv"], "label": 0, "answer": "xy"},  # shortest: "w" -> wrong
    {"choices": ["pq", "rs", "tu", "vwx"], "label": 2, "answer": "tu"},  # 3-way tie -> 1/3
]


def _unigram() -> np.ndarray:
    """log p(token): everything -5, except "z" (-1) and "v" (-0.5); " " is -5 for every choice alike."""
    logp = np.full(96, -5.0)
    logp[ord("z") - 32] = -1.0
    logp[ord("v") - 32] = -0.5
    return logp


def test_knowledge_free_baselines_exact() -> None:
    got = data.knowledge_free_baselines(RECORDS, CharTokenizer(), _unigram())
    # shortest answer: right, wrong, a three-way tie at 3 tokens that holds the label (1/3)
    assert got["shortest_answer"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    # unigram (summed log p of " " + choice):
    #   record 1: " c" = -10 is best (" ab" -15, " dddd" -25, " ee" -15) -> right
    #   record 2: " zz" = -5 - 1 - 1 = -7, " vvv" = -5 - 1.5 = -6.5 (best), " w" = -10 -> wrong (label 0)
    #   record 3: " pq", " rs", " tu" all -15, " vwx" = -5 - 0.5 - 10 = -15.5 -> 3-way tie, 1/3
    assert got["unigram"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert math.isnan(data.knowledge_free_baselines([], CharTokenizer(), _unigram())["unigram"])  # not 0


def test_unigram_log_probs_are_add_one_smoothed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Split:
        tokens = np.array([0, 0, 0, 1], dtype=np.uint16)

    monkeypatch.setattr("moc.data.load_prepared", lambda where, split: Split())
    logp = data.unigram_log_probs(tmp_path, 3)
    # counts 3, 1, 0 -> smoothed 4, 2, 1 over 7
    np.testing.assert_allclose(np.exp(logp), [4 / 7, 2 / 7, 1 / 7])


def test_probe_baselines_use_the_first_limit_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the questions lm-eval evaluates (the first ``limit``) count, per task."""
    records = [*RECORDS, {"choices": ["a", "bb", "cc", "dd"], "label": 3, "answer": "dd"}]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "meta.json").write_text(json.dumps({"tasks": {"t": {"file": "t.jsonl"}}}))
    monkeypatch.setattr("moc.data.load_tokenizer", lambda d: CharTokenizer())
    monkeypatch.setattr(data, "unigram_log_probs", lambda d, v: _unigram())
    full = data.probe_baselines(tmp_path, ["t", "missing"], None, tmp_path, tmp_path)
    first3 = data.probe_baselines(tmp_path, ["t"], 3, tmp_path, tmp_path)
    assert set(full) == {"t"} and full["t"]["n"] == 4 and first3["t"]["n"] == 3
    assert first3["t"]["shortest_answer"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert full["t"]["shortest_answer"] == pytest.approx((1 + 0 + 1 / 3 + 0) / 4)  # "a" is shortest, wrong
    assert first3["t"]["chance"] == 0.25
    # majority answer over the 3 questions: all answers differ, the first most common is "c" (offered once)
    assert first3["t"]["majority"] == pytest.approx((1 + 0.25 + 0.25) / 3)
