"""Parse WordNet 3.0 ``data.*`` files (Debian ``wordnet-base``) into synsets with glosses and pointers.

Line format (wndb(5)): ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt
[ptr...] [frames...] | gloss`` where ``w_cnt`` is hex and each pointer is
``symbol offset pos source/target``. Licence header lines start with two spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic markers on adjective lemmas, e.g. "galore(ip)"


@dataclass(frozen=True)
class Synset:
    """One WordNet synset. ``pointers`` holds ``(symbol, target_key)`` with keys ``"n:00001740"``."""

    key: str
    pos: str
    lemmas: tuple[str, ...]
    pointers: tuple[tuple[str, str], ...]
    gloss: str

    @property
    def name(self) -> str:
        """First lemma in readable form (underscores become spaces)."""
        return self.lemmas[0]

    def targets(self, symbol: str) -> list[str]:
        """Keys of the synsets this one points to with ``symbol`` (``"@"`` hypernym, ``"@i"`` ...)."""
        return [key for sym, key in self.pointers if sym == symbol]


def _lemma(word: str) -> str:
    return _ADJ_MARKER.sub("", word).replace("_", " ")


def parse_data_line(line: str) -> Synset | None:
    """One ``data.*`` line -> :class:`Synset` (``None`` for licence header lines)."""
    if not line or line.startswith(" "):
        return None
    head, _, gloss = line.partition(" | ")
    f = head.split()
    pos = f[2]
    n_words = int(f[3], 16)
    lemmas = tuple(_lemma(f[4 + 2 * i]) for i in range(n_words))
    i = 4 + 2 * n_words
    n_ptrs = int(f[i])
    i += 1
    pointers = []
    for k in range(n_ptrs):
        sym, off, ppos = f[i + 4 * k], f[i + 4 * k + 1], f[i + 4 * k + 2]
        pointers.append((sym, f"{'a' if ppos == 's' else ppos}:{off}"))
    key_pos = "a" if pos == "s" else pos
    return Synset(f"{key_pos}:{f[0]}", pos, lemmas, tuple(pointers), gloss.strip())


def load_wordnet(wordnet_dir: Path, parts: tuple[str, ...] = ("n", "v", "a", "r")) -> dict[str, Synset]:
    """All synsets in ``wordnet_dir`` keyed by ``"pos:offset"``; missing ``data.*`` files are skipped."""
    synsets: dict[str, Synset] = {}
    for pos in parts:
        path = Path(wordnet_dir) / POS_FILES[pos]
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                syn = parse_data_line(line.rstrip("\n"))
                if syn is not None:
                    synsets[syn.key] = syn
    return synsets


def gloss_line(syn: Synset) -> str:
    """Readable one-line entry: ``"dog, domestic dog (noun): a member of the genus Canis ..."``."""
    return f"{', '.join(syn.lemmas[:4])} ({POS_NAMES.get(syn.pos, syn.pos)}): {syn.gloss}"


_CACHE: dict[tuple[str, int], dict[str, Synset]] = {}


def load_wordnet_cached(wordnet_dir: Path) -> dict[str, Synset]:
    """:func:`load_wordnet` memoised per directory and ``data.noun`` mtime (parsing takes ~3 s)."""
    noun = Path(wordnet_dir) / POS_FILES["n"]
    if not noun.is_file():
        return {}
    key = (str(Path(wordnet_dir).resolve()), noun.stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE.clear()  # keep one parsed WordNet in memory at most
        _CACHE[key] = load_wordnet(wordnet_dir)
    return _CACHE[key]
