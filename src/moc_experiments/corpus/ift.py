"""Instruction-tuning pairs in chat format, deliberately unlike the knowledge probes.

Tasks: define a word (WordNet glosses), continue a passage, rewrite a sentence (upper case, reversed
word order, sorted words), count words, spell a word, small arithmetic. None asks about the probe
facts, so any change in probe accuracy after fine-tuning is drift (forgetting), not teaching.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from moc_experiments.corpus.wordnet import POS_NAMES

Example = dict[str, list[dict[str, str]]]

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD_OK = re.compile(r"^[a-z]{3,14}$")
_SENT_OK = re.compile(r"^[A-Z][A-Za-z ,;:'-]+[.!?]$")


@dataclass
class IftPools:
    """Raw material. ``definitions`` holds ``(word, part_of_speech, gloss)``."""

    sentences: list[str]
    words: list[str]
    definitions: list[tuple[str, str, str]]


def sentence_pool(docs: list[str], rng: random.Random, limit: int = 20000) -> list[str]:
    """Plain one-line sentences of 5-25 words from ``docs`` (letters and light punctuation only)."""
    out = []
    for doc in docs:
        for line in doc.split("\n"):
            for sent in _SENT_SPLIT.split(line.strip()):
                if _SENT_OK.match(sent) and 5 <= len(sent.split()) <= 25:
                    out.append(sent)
    out = sorted(set(out))
    rng.shuffle(out)
    return out[:limit]


def word_pool(sentences: list[str], extra: list[str]) -> list[str]:
    words = {w for w in extra if _WORD_OK.match(w)}
    for s in sentences:
        words.update(w for w in (t.strip(",;:.!?'").lower() for t in s.split()) if _WORD_OK.match(w))
    return sorted(words)


def wordnet_definitions(synsets: dict) -> list[tuple[str, str, str]]:
    """``(word, part of speech, gloss without examples)`` for simple lower-case WordNet lemmas."""
    out = []
    for syn in synsets.values():
        word = syn.lemmas[0]
        gloss = syn.gloss.split('; "')[0].strip().rstrip(";")
        if word.isalpha() and word.islower() and 3 <= len(word) <= 14 and len(gloss) >= 10:
            out.append((word, POS_NAMES.get(syn.pos, syn.pos), gloss))
    return sorted(out)


def _chat(user: str, assistant: str) -> Example:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def _define(p: IftPools, rng: random.Random) -> Example:
    word, pos, gloss = rng.choice(p.definitions)
    ask = rng.choice(
        [
            'What does the word "{w}" mean?',
            'Define "{w}".',
            'Give a short definition of the {pos} "{w}".',
            'Explain the meaning of "{w}".',
        ]
    )
    return _chat(ask.format(w=word, pos=pos), f'"{word}" ({pos}) means {gloss}.')


def _continue(p: IftPools, rng: random.Random) -> Example:
    words = rng.choice(p.sentences).split()
    cut = max(2, len(words) // 2)
    return _chat(f"Continue this passage: {' '.join(words[:cut])}", " ".join(words[cut:]))


def _upper(p: IftPools, rng: random.Random) -> Example:
    s = rng.choice(p.sentences)
    return _chat(f"Rewrite this sentence in capital letters: {s}", s.upper())


def _reverse(p: IftPools, rng: random.Random) -> Example:
    s = rng.choice(p.sentences).rstrip(".!?")
    return _chat(f"Reverse the order of the words in: {s}", " ".join(reversed(s.split())))


def _count(p: IftPools, rng: random.Random) -> Example:
    s = rng.choice(p.sentences)
    n = len(s.split())
    return _chat(f"How many words are in this sentence? {s}", f"The sentence has {n} words.")


def _sort(p: IftPools, rng: random.Random) -> Example:
    words = rng.sample(p.words, rng.randint(3, 6))
    return _chat(f"Sort these words alphabetically: {', '.join(words)}", ", ".join(sorted(words)))


def _spell(p: IftPools, rng: random.Random) -> Example:
    w = rng.choice(p.words)
    return _chat(f'Spell the word "{w}" letter by letter.', "-".join(w))


def _arith(p: IftPools, rng: random.Random) -> Example:
    op = rng.choice("+-*")
    a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 20), rng.randint(2, 20))
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    sym = {"+": "+", "-": "-", "*": "x"}[op]
    return _chat(
        rng.choice([f"What is {a} {sym} {b}?", f"Compute {a} {sym} {b}."]), f"{a} {sym} {b} = {value}."
    )


GENERATORS: dict[str, tuple[Callable[[IftPools, random.Random], Example], Callable[[IftPools], bool]]] = {
    "define": (_define, lambda p: len(p.definitions) > 0),
    "continue": (_continue, lambda p: len(p.sentences) > 0),
    "uppercase": (_upper, lambda p: len(p.sentences) > 0),
    "reverse_words": (_reverse, lambda p: len(p.sentences) > 0),
    "count_words": (_count, lambda p: len(p.sentences) > 0),
    "sort_words": (_sort, lambda p: len(p.words) >= 6),
    "spell": (_spell, lambda p: len(p.words) > 0),
    "arithmetic": (_arith, lambda p: True),
}


def build_ift(pools: IftPools, n: int, seed: int) -> tuple[list[Example], dict[str, int]]:
    """``n`` distinct examples drawn evenly from the usable generators; also returns counts per task."""
    rng = random.Random(f"{seed}:ift")
    usable = [name for name, (_, ok) in GENERATORS.items() if ok(pools)]
    seen: set[str] = set()
    out: list[Example] = []
    counts = {name: 0 for name in usable}
    attempts = 0
    while len(out) < n and attempts < 20 * n:
        attempts += 1
        name = usable[len(out) % len(usable)] if attempts <= n else rng.choice(usable)
        ex = GENERATORS[name][0](pools, rng)
        key = ex["messages"][0]["content"]
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
        counts[name] += 1
    rng.shuffle(out)
    return out, counts
