from __future__ import annotations

from moc_experiments.corpus.wordnet import gloss_line, load_wordnet, parse_data_line

LINE = (
    "02084071 05 n 02 dog 0 domestic_dog 0 003 @ 02083346 n 0000 #m 02083863 n 0000 ~ 01322604 n 0000 | "
    'a member of the genus Canis; "the dog barked all night"'
)


def test_parse_data_line() -> None:
    syn = parse_data_line(LINE)
    assert syn is not None
    assert syn.key == "n:02084071"
    assert syn.lemmas == ("dog", "domestic dog")
    assert syn.targets("@") == ["n:02083346"]
    assert syn.targets("#m") == ["n:02083863"]
    assert syn.gloss.startswith("a member of the genus Canis")
    assert gloss_line(syn).startswith("dog, domestic dog (noun): a member")


def test_satellite_adjective_and_marker() -> None:
    syn = parse_data_line("00001740 00 s 01 galore(ip) 0 001 & 00001000 a 0000 | in great numbers")
    assert syn is not None and syn.key == "a:00001740" and syn.lemmas == ("galore",)
    assert syn.targets("&") == ["a:00001000"]


def test_header_lines_skipped(tmp_path) -> None:
    (tmp_path / "data.noun").write_text("  1 licence text\n" + LINE + "\n")
    synsets = load_wordnet(tmp_path)
    assert list(synsets) == ["n:02084071"]
