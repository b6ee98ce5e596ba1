"""The synthetic knowledge world: seeded, every fact stated, held-out questions really held out."""

from __future__ import annotations

import numpy as np
import pytest

from moc_experiments.corpus.world import KnowledgeWorld


def test_seeded_and_sized() -> None:
    a, b, c = (
        KnowledgeWorld(20, 3, 5, seed=1),
        KnowledgeWorld(20, 3, 5, seed=1),
        KnowledgeWorld(20, 3, 5, seed=2),
    )
    assert a.names == b.names and (a.facts == b.facts).all()
    assert (a.facts != c.facts).any()
    assert len(set(a.names)) == 20 and all(len(set(v)) == 5 for v in a.values)
    # names, values and template words never share a token
    assert len(a.vocab) == len(set(a.vocab))
    assert a.stats()["facts"] == 60 and a.stats()["chance"] == pytest.approx(0.2)


def test_biography_states_every_fact_once() -> None:
    w = KnowledgeWorld(10, 4, 6, seed=0)
    rng = np.random.default_rng(0)
    for p in range(10):
        words = w.decode(w.biography(p, rng)).split()
        assert words[0] == "<bos>" and words.count(w.names[p]) == 4
        for a in range(4):
            assert words.count(w.values[a][w.facts[p, a]]) >= 1
        assert len(w.biography(p, rng)) <= w.max_doc_len


def test_question_documents_only_for_qa_people() -> None:
    w = KnowledgeWorld(30, 2, 5, qa_fraction=0.5, seed=0)
    assert set(w.qa_people).isdisjoint(w.heldout_people)
    assert len(w.qa_people) + len(w.heldout_people) == 30
    prompts = w.recall_prompts("question", w.heldout_people)
    assert all(len(p) == len(w.heldout_people) for p, _ in prompts)
    # a prompt + its answer is exactly a sentence of the training question documents
    p, a = prompts[1][0][0], prompts[1][1][0]
    person = w.names.index(w.decode([int(t) for t in p]).split()[6])
    doc = w.decode(w.questions(person, np.random.default_rng(0)))
    assert w.decode([*p[1:], a]) in doc


def test_chat_form_is_a_third_order() -> None:
    w = KnowledgeWorld(10, 2, 5, seed=0)
    (prompts, answers), _ = w.recall_prompts("chat", w.qa_people)
    p = int(w.qa_people[0])
    line = w.decode([int(t) for t in prompts[0][1:]]) + " " + w.vocab[answers[0]]
    assert line.split()[0] == w.names[p]
    assert line in w.decode(w.chat(p, np.random.default_rng(1)))
    assert all(len(w.chat(q, np.random.default_rng(q))) <= w.max_doc_len for q in range(10))
    # chat and question prompts ask the same fact in different word orders
    q_prompts, q_answers = w.recall_prompts("question", w.qa_people)[0]
    assert (q_answers == answers).all() and not np.array_equal(np.sort(q_prompts[0]), np.sort(prompts[0]))


def test_bio_prompts_answer_is_the_fact() -> None:
    w = KnowledgeWorld(8, 3, 4, seed=3)
    for a, (prompts, answers) in enumerate(w.recall_prompts("bio")):
        for p in range(8):
            assert w.decode([int(prompts[p][1])]) == w.names[p]
            assert w.vocab[answers[p]] == w.values[a][w.facts[p, a]]


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_attributes"):
        KnowledgeWorld(10, 9, 5)
    with pytest.raises(ValueError, match="qa_fraction"):
        KnowledgeWorld(10, 2, 5, qa_fraction=1.0)
    with pytest.raises(ValueError, match="form"):
        KnowledgeWorld(10, 2, 5).recall_prompts("poem")
