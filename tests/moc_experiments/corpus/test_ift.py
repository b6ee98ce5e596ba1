from __future__ import annotations

import random
import re

from moc_experiments.corpus.ift import GENERATORS, IftPools, build_ift, sentence_pool


def _pools() -> IftPools:
    sentences = [
        f"The quick brown fox number {w} jumps over the lazy dog."
        for w in ["one", "two", "three", "four", "five", "six", "seven", "eight"]
    ]
    words = ["apple", "banana", "cherry", "damson", "elder", "fig", "grape"]
    return IftPools(sentences, words, [("apple", "noun", "fruit with red or yellow or green skin")])


def test_build_ift_format_and_coverage() -> None:
    examples, counts = build_ift(_pools(), 200, seed=0)
    assert len(examples) == 200
    assert set(counts) == set(GENERATORS) and all(n > 0 for n in counts.values())
    for ex in examples:
        msgs = ex["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in msgs)
    assert len({ex["messages"][0]["content"] for ex in examples}) == 200  # no duplicate prompts


def test_answers_are_correct() -> None:
    examples, _ = build_ift(_pools(), 300, seed=1)
    for ex in examples:
        user, reply = ex["messages"][0]["content"], ex["messages"][1]["content"]
        m = re.fullmatch(r"(?:What is|Compute) (\d+) ([-+x]) (\d+)[?.]", user)
        if m:
            a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
            assert reply == f"{a} {op} {b} = {a + b if op == '+' else a - b if op == '-' else a * b}."
        if user.startswith("Spell the word"):
            assert reply.replace("-", "") == user.split('"')[1]
        if user.startswith("Sort these words"):
            words = user.split(": ", 1)[1].split(", ")
            assert reply == ", ".join(sorted(words))


def test_without_definitions_or_sentences() -> None:
    examples, counts = build_ift(IftPools([], [], []), 50, seed=0)
    assert len(examples) == 50 and set(counts) == {"arithmetic"}


def test_sentence_pool_filters() -> None:
    docs = [
        "Short one. This sentence has exactly enough words to be kept. "
        "Then 1 + 2 = 3 is arithmetic, not prose!"
    ]
    assert sentence_pool(docs, random.Random(0)) == ["This sentence has exactly enough words to be kept."]
