"""A synthetic knowledge world: people x attributes, written as biographies and questions.

    world = KnowledgeWorld(n_people=500, n_attributes=5, n_values=30, seed=0)
    world.vocab                     # word-level vocabulary: one token per name, value and template word
    ids = world.biography(person=3, rng=np.random.default_rng(0))    # [BOS, "lunaro", "lives", ...]
    prompts, answers = world.recall_prompts("bio")                   # (N*A, L) prompts, (N*A,) answers

Every person has one value per attribute, drawn uniformly (seeded). A biography states all of them, one
sentence each, in a random order and with one of two phrasings per attribute. Question documents ask
about every attribute of a person in a second form ("what is the city of NAME ? VALUE ."); they are
written only for the ``qa_people`` (a seeded ``qa_fraction`` of people), so the question form asked
about the other people is a held-out paraphrase: answering it needs the fact from the biographies and
the question skill from other people. Knowledge is measured as exact recall: the argmax next token after
a prompt equals the value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moc_experiments.errors import CorpusError

PAD, BOS = "<pad>", "<bos>"

# name, the two biography phrasings (the value follows), the question noun.
ATTRIBUTES: tuple[tuple[str, tuple[str, str], str], ...] = (
    ("city", ("lives in", "has a home in"), "city"),
    ("job", ("works as a", "earns a living as a"), "job"),
    ("pet", ("owns a", "keeps a pet"), "pet"),
    ("color", ("likes the colour", "has a favourite colour of"), "colour"),
    ("sport", ("plays", "spends weekends playing"), "sport"),
    ("food", ("eats", "loves to cook"), "food"),
    ("tool", ("repairs things with a", "always carries a"), "tool"),
    ("song", ("sings", "hums the song"), "song"),
)
QUESTION = ("what", "is", "the", "{noun}", "of", "{name}", "?")
# The instruction-tuning ("chat") form: the same words in a third order, so fine-tuning teaches a new format.
CHAT = ("{name}", "?", "what", "is", "the", "{noun}", "?")
_SYLLABLES = (
    "ka", "lo", "mi", "ru", "te", "sa", "no", "vi", "da", "pe", "zu", "ho", "ri", "an", "el", "or",
    "un", "ba", "ge", "fy", "qu", "xo", "wi", "je",
)  # fmt: skip


def pronounceable_words(n: int, rng: np.random.Generator, taken: set[str], syllables: int) -> list[str]:
    """``n`` distinct pseudo-words of ``syllables`` syllables not in ``taken`` (then added to it)."""
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(_SYLLABLES, size=syllables))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


class FactWorld:
    """What every knowledge world shares: a word vocabulary (``vocab``, ``index``), people x attributes with
    one value each (``facts``, ``values``), and prompts whose next token is a value. A subclass gives
    :meth:`prompt_words` (the words before a value, per form)."""

    vocab: list[str]
    index: dict[str, int]
    values: list[list[str]]
    facts: np.ndarray
    n_people: int
    n_attributes: int

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    def encode(self, words: list[str]) -> list[int]:
        return [self.index[w] for w in words]

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)

    def value_word(self, p: int, a: int) -> str:
        return self.values[a][self.facts[p, a]]

    def prompt_words(self, form: str, p: int, a: int) -> list[str]:
        raise NotImplementedError

    def recall_prompts(
        self, form: str, people: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Prompts ``[BOS, *prompt_words(form, p, a)]`` whose next token is the value, grouped by attribute
        (one length per group): per attribute (prompts (n, L) int64, answers (n,) int64) for ``people``
        (default all). Forms: "bio", "question", "chat"."""
        if form not in ("bio", "question", "chat"):
            raise CorpusError(f"form must be 'bio', 'question' or 'chat', got {form!r}")
        people = np.arange(self.n_people) if people is None else np.asarray(people)
        groups = []
        for a in range(self.n_attributes):
            rows = [self.encode([BOS, *self.prompt_words(form, int(p), a)]) for p in people]
            answers = [self.index[self.value_word(int(p), a)] for p in people]
            groups.append((np.array(rows, dtype=np.int64), np.array(answers, dtype=np.int64)))
        return groups

    def majority_baseline(self) -> float:
        """Recall of always answering each attribute's most common value (what no knowledge achieves)."""
        return float(
            np.mean([np.bincount(self.facts[:, a]).max() / self.n_people for a in range(self.n_attributes)])
        )

    def stats(self) -> dict[str, float | int]:
        """The world's sizes and baselines, as the experiments record them."""
        return {
            "n_people": self.n_people,
            "n_attributes": self.n_attributes,
            "n_values": self.n_values,
            "facts": self.n_people * self.n_attributes,
            "vocab": len(self.vocab),
            "qa_people": len(self.qa_people),
            "heldout_people": len(self.heldout_people),
            "max_doc_len": self.max_doc_len,
            "chance": 1 / self.n_values,
            "majority": self.majority_baseline(),
        }


@dataclass
class KnowledgeWorld(FactWorld):
    """People x attributes with seeded values; see the module docstring. Sizes must satisfy
    ``1 <= n_attributes <= 8``, ``n_people >= 2``, ``n_values >= 2``."""

    n_people: int = 500
    n_attributes: int = 5
    n_values: int = 30
    qa_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_attributes <= len(ATTRIBUTES):
            raise CorpusError(f"n_attributes must be in [1, {len(ATTRIBUTES)}], got {self.n_attributes}")
        if self.n_people < 2 or self.n_values < 2:
            raise CorpusError(f"n_people and n_values must be >= 2, got {self.n_people}, {self.n_values}")
        if not 0 <= self.qa_fraction < 1:
            raise CorpusError(f"qa_fraction must be in [0, 1), got {self.qa_fraction}")
        rng = np.random.default_rng(self.seed)
        taken: set[str] = set()
        self.attributes = ATTRIBUTES[: self.n_attributes]
        self.names = pronounceable_words(self.n_people, rng, taken, 3)
        self.values = [pronounceable_words(self.n_values, rng, taken, 2) for _ in self.attributes]
        # facts[p, a]: index into values[a]
        self.facts = rng.integers(0, self.n_values, size=(self.n_people, self.n_attributes))
        order = rng.permutation(self.n_people)
        n_qa = int(round(self.qa_fraction * self.n_people))
        self.qa_people = np.sort(order[:n_qa])
        self.heldout_people = np.sort(order[n_qa:])
        words = [PAD, BOS, ".", "what", "is", "the", "of", "?"]
        for _, (t0, t1), noun in self.attributes:
            words += t0.split() + t1.split() + [noun]
        words += self.names + [v for vals in self.values for v in vals]
        self.vocab: list[str] = list(dict.fromkeys(words))
        self.index = {w: i for i, w in enumerate(self.vocab)}

    # -- text ---------------------------------------------------------------------------------------

    def _bio_sentence(self, p: int, a: int, phrasing: int) -> list[str]:
        return [
            self.names[p],
            *self.attributes[a][1][phrasing].split(),
            self.values[a][self.facts[p, a]],
            ".",
        ]

    def _question(self, p: int, a: int) -> list[str]:
        noun = self.attributes[a][2]
        return [w.format(noun=noun, name=self.names[p]) for w in QUESTION]

    def biography(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + one sentence per attribute, shuffled, each in a random one of its two phrasings."""
        words = [BOS]
        for a in rng.permutation(self.n_attributes):
            words += self._bio_sentence(person, int(a), int(rng.integers(2)))
        return self.encode(words)

    def questions(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + every attribute's question and answer, shuffled (training data for ``qa_people``)."""
        words = [BOS]
        for a in rng.permutation(self.n_attributes):
            words += [*self._question(person, int(a)), self.values[int(a)][self.facts[person, a]], "."]
        return self.encode(words)

    def _chat(self, p: int, a: int) -> list[str]:
        noun = self.attributes[a][2]
        return [w.format(noun=noun, name=self.names[p]) for w in CHAT]

    def chat(self, person: int, rng: np.random.Generator) -> list[int]:
        """[BOS] + every attribute asked and answered in the chat form, shuffled (the IFT data, written for
        ``qa_people`` only: the chat form about the other people is held out)."""
        words = [BOS]
        for a in rng.permutation(self.n_attributes):
            words += [*self._chat(person, int(a)), self.values[int(a)][self.facts[person, a]], "."]
        return self.encode(words)

    @property
    def max_doc_len(self) -> int:
        """Longest document (tokens) either generator can produce."""
        bio = 1 + sum(2 + max(len(t.split()) for t in ts) for _, ts, _ in self.attributes)
        qa = 1 + self.n_attributes * (max(len(QUESTION), len(CHAT)) + 2)
        return max(bio, qa)

    # -- evaluation ---------------------------------------------------------------------------------

    def prompt_words(self, form: str, p: int, a: int) -> list[str]:
        """The words before the value: "bio" NAME + first phrasing; "question" what is the NOUN of NAME ?;
        "chat" NAME ? what is the NOUN ?"""
        if form == "bio":
            return self._bio_sentence(p, a, 0)[:-2]
        return (self._question if form == "question" else self._chat)(p, a)
