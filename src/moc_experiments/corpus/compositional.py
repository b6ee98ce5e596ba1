"""A knowledge world where capacity binds: multi-token names, compact biographies, facts counted in bits.

    world = CompositionalWorld(n_people=2000, n_attributes=6, n_values=64, first_names=64, last_names=64)
    world.biography(3, rng)        # [<bos>, FIRST, LAST, ":", attr, value, attr, value, ..., "."]
    prompts, answers = world.recall_prompts("bio")[a]     # [<bos>, FIRST, LAST, ":", attr] -> value

Why this world (and not :class:`~moc_experiments.corpus.world.KnowledgeWorld`, kept as the
``single_token`` variant): there every name is one vocabulary word, so a person's facts fit in that
name's embedding row and a wider model simply gets wider rows. Here a person is a *pair* of name tokens
(first x last, from small pools), and every name token is shared by many people, so no embedding row
identifies anyone: a fact has to be stored in the layers (or the memory bank) that combine the two.

People take distinct (first, last) pairs laid out on a shifted diagonal of the first x last grid, so
every first name is used by ``ceil(N / F)`` or ``floor(N / F)`` people and last names nearly as evenly;
which name word gets which index, and which person gets which pair, is seeded. Values are drawn
uniformly per (person, attribute), so an attribute with ``V`` values holds ``N * log2 V`` bits.

Document forms (``doc_form``): ``compact`` (one attribute token then its value, order shuffled per
document: 2A + 5 tokens) or ``sentence`` (the biography phrasings of the single-token world: "F L lives
in CITY ." per attribute). Question documents ("what is the NOUN of F L ? VALUE .") are written for the
``qa_people`` only; the chat form ("F L ? what is the NOUN ?") is the instruction-tuning format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moc_experiments.corpus.world import ATTRIBUTES, BOS, CHAT, PAD, QUESTION, FactWorld, pronounceable_words
from moc_experiments.errors import CorpusError

DOC_FORMS = ("compact", "sentence")


@dataclass
class CompositionalWorld(FactWorld):
    """People named by (first, last) token pairs x attributes with seeded values; see the module docstring.

    Constraints: ``1 <= n_attributes <= 8``, ``2 <= n_values``, ``n_people <= first_names * last_names``
    and every name token used by at least two people (``n_people >= 2 * max(first_names, last_names)``
    guarantees it)."""

    n_people: int = 2000
    n_attributes: int = 6
    n_values: int = 64
    first_names: int = 64
    last_names: int = 64
    doc_form: str = "compact"
    qa_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_attributes <= len(ATTRIBUTES):
            raise CorpusError(f"n_attributes must be in [1, {len(ATTRIBUTES)}], got {self.n_attributes}")
        if self.n_values < 2 or self.first_names < 1 or self.last_names < 1:
            raise CorpusError("n_values must be >= 2 and the name pools non-empty")
        if self.doc_form not in DOC_FORMS:
            raise CorpusError(f"doc_form must be one of {DOC_FORMS}, got {self.doc_form!r}")
        if not 0 <= self.qa_fraction < 1:
            raise CorpusError(f"qa_fraction must be in [0, 1), got {self.qa_fraction}")
        F, Lp = self.first_names, self.last_names
        if not 2 <= self.n_people <= F * Lp:
            raise CorpusError(
                f"n_people={self.n_people} must be in [2, first_names * last_names = {F * Lp}]: "
                "enlarge the name pools"
            )
        rng = np.random.default_rng(self.seed)
        taken: set[str] = set()
        first_words = pronounceable_words(F, rng, taken, 2)
        last_words = pronounceable_words(Lp, rng, taken, 3)
        self.values = [pronounceable_words(self.n_values, rng, taken, 2) for _ in range(self.n_attributes)]
        # Person i = (first i mod F, last (i mod F + i div F) mod Lp): distinct pairs while N <= F * Lp,
        # each first name used floor/ceil(N / F) times, last names spread along the diagonals.
        i = np.arange(self.n_people)
        first = i % F
        last = (first + i // F) % Lp
        order = rng.permutation(self.n_people)  # which person gets which pair
        self.first = first[order]
        self.last = last[order]
        uses = min(np.bincount(self.first, minlength=F).min(), np.bincount(self.last, minlength=Lp).min())
        if uses < 2:
            raise CorpusError(
                f"with {self.n_people} people, {F} first and {Lp} last names some name token would be "
                f"used by {uses} person(s) and so identify them; use smaller pools "
                f"(n_people >= 2 * max(first_names, last_names))"
            )
        self.first_words, self.last_words = first_words, last_words
        self.facts = rng.integers(0, self.n_values, size=(self.n_people, self.n_attributes))
        order = rng.permutation(self.n_people)
        n_qa = int(round(self.qa_fraction * self.n_people))
        self.qa_people = np.sort(order[:n_qa])
        self.heldout_people = np.sort(order[n_qa:])
        self.attributes = ATTRIBUTES[: self.n_attributes]
        words = [PAD, BOS, ".", ":", "what", "is", "the", "of", "?"]
        for _, (t0, t1), noun in self.attributes:
            words += t0.split() + t1.split() + [noun]
        words += first_words + last_words + [v for vals in self.values for v in vals]
        self.vocab: list[str] = list(dict.fromkeys(words))
        self.index = {w: i for i, w in enumerate(self.vocab)}

    # -- text ---------------------------------------------------------------------------------------

    def name(self, p: int) -> list[str]:
        """The two name tokens of person ``p``."""
        return [self.first_words[self.first[p]], self.last_words[self.last[p]]]

    def _noun(self, a: int) -> str:
        return self.attributes[a][2]

    def _bio_prompt(self, p: int, a: int, phrasing: int = 0) -> list[str]:
        """The words of a biography that precede the value of attribute ``a`` (first in its document)."""
        if self.doc_form == "compact":
            return [*self.name(p), ":", self._noun(a)]
        return [*self.name(p), *self.attributes[a][1][phrasing].split()]

    def biography(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + every attribute with its value, in a shuffled order (compact: ``F L : a v a v ... .``;
        sentence: ``F L <phrasing> v .`` per attribute, a random one of two phrasings)."""
        words = [BOS]
        order = [int(a) for a in rng.permutation(self.n_attributes)]
        if self.doc_form == "compact":
            words += [*self.name(person), ":"]
            for a in order:
                words += [self._noun(a), self.value_word(person, a)]
            words.append(".")
        else:
            for a in order:
                words += [*self._bio_prompt(person, a, int(rng.integers(2))), self.value_word(person, a), "."]
        return self.encode(words)

    def _form(self, template: tuple[str, ...], p: int, a: int) -> list[str]:
        out: list[str] = []
        for w in template:
            out += self.name(p) if w == "{name}" else [w.format(noun=self._noun(a))]
        return out

    def questions(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + every attribute's question and answer, shuffled (training data for ``qa_people``)."""
        words = [BOS]
        for a in rng.permutation(self.n_attributes):
            words += [*self._form(QUESTION, person, int(a)), self.value_word(person, int(a)), "."]
        return self.encode(words)

    def chat(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + every attribute asked and answered in the chat form, shuffled (the IFT data)."""
        words = [BOS]
        for a in rng.permutation(self.n_attributes):
            words += [*self._form(CHAT, person, int(a)), self.value_word(person, int(a)), "."]
        return self.encode(words)

    @property
    def max_bio_len(self) -> int:
        """Longest biography (tokens)."""
        if self.doc_form == "compact":
            return 2 * self.n_attributes + 5
        return 1 + sum(4 + max(len(t.split()) for t in ts) for _, ts, _ in self.attributes)

    @property
    def max_doc_len(self) -> int:
        """Longest document (tokens) any generator can produce."""
        qa = 1 + self.n_attributes * (max(len(QUESTION), len(CHAT)) + 3)
        return max(self.max_bio_len, qa)

    # -- evaluation ---------------------------------------------------------------------------------

    def prompt_words(self, form: str, p: int, a: int) -> list[str]:
        """The words before the value: "bio" F L : NOUN (compact) or F L + first phrasing (sentence);
        "question" what is the NOUN of F L ?; "chat" F L ? what is the NOUN ?"""
        if form == "bio":
            return self._bio_prompt(p, a)
        return self._form(QUESTION if form == "question" else CHAT, p, a)

    @property
    def bits(self) -> float:
        """The world's knowledge: N x A x log2 V bits (values are uniform and independent)."""
        return self.n_people * self.n_attributes * math.log2(self.n_values)

    def stats(self) -> dict[str, float | int | str]:
        return {
            "kind": "compositional",
            **super().stats(),
            "first_names": self.first_names,
            "last_names": self.last_names,
            "doc_form": self.doc_form,
            "bits": self.bits,
        }
