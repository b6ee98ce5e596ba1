from __future__ import annotations

from collections import Counter

from moc_experiments.corpus.facts import Fact
from moc_experiments.corpus.probes import baselines, build_probe_records, prompt


def _facts() -> dict[str, list[Fact]]:
    caps = [Fact("capital", f"Country{i}", f"City{i}") for i in range(40)]
    caps.append(Fact("capital", "Twinland", "City0"))  # a shared answer
    syms = [
        Fact("element_symbol", n, s)
        for n, s in [
            ("carbon", "C"),
            ("calcium", "Ca"),
            ("chlorine", "Cl"),
            ("cobalt", "Co"),
            ("iron", "Fe"),
            ("helium", "He"),
            ("neon", "Ne"),
            ("argon", "Ar"),
        ]
    ]
    nums = [Fact("atomic_number", f"el{i}", str(i)) for i in range(1, 60)]
    langs = [Fact("language", "Bilingua", "Alpha", frozenset({"Beta", "Gamma"}))] + [
        Fact("language", f"Land{i}", x) for i, x in enumerate(["Beta", "Gamma", "Delta", "Epsilon", "Zeta"])
    ]
    return {"capital": caps, "element_symbol": syms, "atomic_number": nums, "language": langs}


def test_records_are_well_formed() -> None:
    facts = _facts()
    tasks = build_probe_records(facts, seed=0)
    assert set(tasks) == {"moc_capitals", "moc_element_symbols", "moc_atomic_numbers", "moc_languages"}
    for records in tasks.values():
        rel = records[0]["relation"]
        pool = {f.answer for f in facts[rel]}
        for r in records:
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
            assert r["choices"][r["label"]] == r["answer"]
            assert set(r["choices"]) <= pool  # distractors come from the same category
            assert prompt(r) == f"Question: {r['question']}\nAnswer:"


def test_excluded_answers_never_distractors() -> None:
    tasks = build_probe_records(_facts(), seed=0)
    bilingua = next(r for r in tasks["moc_languages"] if r["subject"] == "Bilingua")
    assert not {"Beta", "Gamma"} & set(bilingua["choices"])
    twin = next(r for r in tasks["moc_capitals"] if r["subject"] == "Twinland")
    assert twin["choices"].count("City0") == 1


def test_hard_distractors() -> None:
    tasks = build_probe_records(_facts(), seed=0)
    carbon = next(r for r in tasks["moc_element_symbols"] if r["subject"] == "carbon")
    assert all(c.startswith("C") for c in carbon["choices"])  # Ca, Cl, Co share the initial
    for r in tasks["moc_atomic_numbers"]:
        assert all(abs(int(c) - int(r["answer"])) <= 10 for c in r["choices"])


def test_labels_balanced_and_deterministic() -> None:
    a = build_probe_records(_facts(), seed=0)
    assert a == build_probe_records(_facts(), seed=0)
    assert a != build_probe_records(_facts(), seed=1)
    counts = Counter(r["label"] for r in a["moc_capitals"])
    assert max(counts.values()) - min(counts.values()) <= 1


def test_baselines() -> None:
    records = [
        {"choices": ["A", "B", "C", "D"], "label": 0, "answer": "A"},
        {"choices": ["B", "A", "C", "D"], "label": 0, "answer": "B"},
        {"choices": ["B", "C", "D", "E"], "label": 1, "answer": "C"},
        {"choices": ["A", "B", "C", "D"], "label": 0, "answer": "A"},
    ]
    b = baselines(records)
    assert b["chance"] == 0.25 and b["n_questions"] == 4
    assert b["majority_label"] == 0 and b["majority_label_acc"] == 0.75
    # Always answering "A": right twice, wrong once (A offered, answer B), A absent once -> guess 1/4.
    assert b["majority_answer"] == "A" and b["majority_answer_acc"] == (2 + 0.25) / 4
