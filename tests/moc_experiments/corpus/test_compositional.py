"""The compositional world: no name token identifies a person, documents and prompts agree with the facts."""

from __future__ import annotations

import numpy as np
import pytest

from moc_experiments.corpus.compositional import CompositionalWorld


def test_no_name_token_identifies_a_person() -> None:
    w = CompositionalWorld(n_people=300, n_attributes=3, n_values=8, first_names=20, last_names=20, seed=1)
    pairs = set(zip(w.first.tolist(), w.last.tolist()))
    assert len(pairs) == w.n_people  # every person has their own (first, last) pair
    first_uses = np.bincount(w.first, minlength=20)
    last_uses = np.bincount(w.last, minlength=20)
    assert first_uses.min() >= 2 and last_uses.min() >= 2
    assert first_uses.max() - first_uses.min() <= 1  # first names are spread evenly
    # a name token's people disagree on their facts: the token alone cannot answer
    for f in range(20):
        people = np.flatnonzero(w.first == f)
        assert len(set(w.facts[people, 0].tolist())) > 1
    # name words, values and template words are distinct vocabulary entries
    words = w.first_words + w.last_words + [v for vals in w.values for v in vals]
    assert len(set(words)) == len(words)


def test_world_is_seeded() -> None:
    a, b = CompositionalWorld(n_people=200, seed=3), CompositionalWorld(n_people=200, seed=3)
    assert (a.facts == b.facts).all() and (a.first == b.first).all() and a.vocab == b.vocab
    assert not (CompositionalWorld(n_people=200, seed=4).facts == a.facts).all()


def test_too_few_people_for_the_name_pools_is_refused() -> None:
    with pytest.raises(ValueError, match="identify them"):
        CompositionalWorld(n_people=70, first_names=64, last_names=64)
    with pytest.raises(ValueError, match="enlarge the name pools"):
        CompositionalWorld(n_people=100, first_names=8, last_names=8)


@pytest.mark.parametrize("form", ["compact", "sentence"])
def test_biography_states_every_fact_and_prompts_end_before_a_value(form: str) -> None:
    w = CompositionalWorld(
        n_people=40, n_attributes=4, n_values=6, first_names=8, last_names=8, doc_form=form
    )
    rng = np.random.default_rng(0)
    orders = set()
    for p in range(40):
        doc = w.biography(p, rng)
        assert len(doc) <= w.max_doc_len and doc[0] == w.index["<bos>"]
        text = w.decode(doc)
        name = " ".join(w.name(p))
        assert text.startswith("<bos> " + name)
        for a in range(4):
            assert w.values[a][w.facts[p, a]] in text.split()
        if form == "compact":
            assert len(doc) == 2 * 4 + 5
            orders.add(tuple(w.vocab[t] for t in doc[4:-1:2]))
    if form == "compact":
        assert len(orders) > 1  # attribute order is shuffled per document
    for a, (prompts, answers) in enumerate(w.recall_prompts("bio")):
        for p in (0, 17):
            assert answers[p] == w.index[w.values[a][w.facts[p, a]]]
            # the prompt is what a biography with attribute a first says before its value
            assert w.decode(prompts[p].tolist()).startswith("<bos> " + " ".join(w.name(p)))
    for form_ in ("question", "chat"):
        prompts, answers = w.recall_prompts(form_, w.heldout_people)[1]
        assert len(prompts) == len(w.heldout_people)


def test_world_bits() -> None:
    w = CompositionalWorld(n_people=40, n_attributes=3, n_values=8, first_names=8, last_names=8)
    assert w.bits == 40 * 3 * 3.0 and w.stats()["bits"] == w.bits
