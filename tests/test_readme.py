"""The README and docs/*.md work as written: every shell command in them runs, in order, on tiny data.

What counts as a shell command (parsed at test time, so edits to the docs are picked up):

- every line of a fenced block tagged ``bash``, ``sh``, ``shell`` or ``console``;
- every line of an indented (4-space) code block whose first word is a command (``moc``, ``make``,
  ``python``, ``torchrun``, ``pip``, ``lm_eval`` or ``NAME=value``).

Lines ending in ``\\`` continue; ``# ...`` comments are left to the shell. A bracketed group that starts
with a dash, like ``[--seed 0]``, marks optional arguments in a synopsis: the command runs without it.
Python blocks are not run here (the examples' APIs have their own tests).

A block that cannot run here is marked in the Markdown, on the line(s) just above it, with an HTML
comment that renders as nothing::

    <!-- readme-test: skip needs 8 GPUs and torchrun -->

:func:`test_skipped_commands_are_listed` prints each skipped command with its reason. The commands run
with bash in one temporary folder holding tiny inputs the docs refer to (``corpus/``, ``more.jsonl``,
``chats.jsonl``) and a link to the repository's ``bench/``, one thread, offline, each with a time
limit; a failure names the file, line and command and shows its output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"moc", "moc-lab", "make", "python", "python3", "torchrun", "pip", "lm_eval"}
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s*(.*?)\s*-->")
OPTIONAL = re.compile(r"\s\[-[^\[\]]*\]")  # ` [--flag VALUE]`, ` [--a | --b]`
PER_COMMAND_TIMEOUT_S = 120


def _docs_in_reading_order() -> list[Path]:
    """README.md, then docs/*.md in the order the README links them, then any page it does not link.

    The commands share one folder, so a page may use what an earlier one built (the HF page uses the
    checkpoint the training page writes): the README's order is the order a reader follows.
    """
    readme = ROOT / "README.md"
    linked = re.findall(r"\]\(docs/([\w.-]+\.md)\)", readme.read_text())
    pages = sorted((ROOT / "docs").glob("*.md"))
    ordered = [ROOT / "docs" / name for name in dict.fromkeys(linked) if (ROOT / "docs" / name).exists()]
    return [readme, *ordered, *(p for p in pages if p not in ordered)]


DOCS = _docs_in_reading_order()


@dataclass
class Command:
    file: str
    line: int
    text: str  # as written (continuations joined)
    skip: str | None  # the reason, if marked

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def runnable(self) -> str:
        return OPTIONAL.sub("", self.text)


def _is_command_line(line: str) -> bool:
    words = line.split()
    return bool(words) and (
        words[0] in COMMAND_WORDS or re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]) is not None
    )


def _skip_reason(lines: list[str], start: int) -> str | None:
    """The reason of a ``readme-test: skip`` comment in the non-blank line just above ``start``."""
    i = start - 1
    while i >= 0 and not lines[i].strip():
        i -= 1
    m = SKIP.search(lines[i]) if i >= 0 else None
    return (m.group(1) or "marked skip") if m else None


def _commands(block: list[tuple[int, str]], file: str, skip: str | None) -> list[Command]:
    out, pending, first = [], "", 0
    for lineno, raw in block:
        line = raw.rstrip()
        if not pending and (not line.strip() or line.strip().startswith("#")):
            continue
        if not pending:
            first = lineno
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        out.append(Command(file, first, (pending + line.strip()).strip(), skip))
        pending = ""
    if pending:
        out.append(Command(file, first, pending.strip(), skip))
    return out


def parse(path: Path) -> list[Command]:
    """The shell commands of one Markdown file, in order."""
    lines = path.read_text().splitlines()
    name = str(path.relative_to(ROOT))
    found: list[Command] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(```+|~~~+)\s*(\S*)", line)
        if fence:
            close = fence.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].startswith(close):
                j += 1
            if fence.group(2).lower() in SHELL_LANGS:
                block = [(k + 1, lines[k]) for k in range(i + 1, j)]
                found += _commands(block, name, _skip_reason(lines, i))
            i = j + 1
            continue
        indented = line.startswith("    ") and (i == 0 or not lines[i - 1].strip())
        if indented:
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            block = [(k + 1, lines[k][4:]) for k in range(i, j)]
            if _is_command_line(block[0][1]):
                found += _commands(block, name, _skip_reason(lines, i))
            i = j
            continue
        i += 1
    return found


def all_commands() -> list[Command]:
    return [c for doc in DOCS for c in parse(doc)]


# --------------------------------------------------------------------------------------------------
# Tiny inputs the docs refer to
# --------------------------------------------------------------------------------------------------

SENTENCES = [
    "The capital of France is Paris.",
    "Water boils at one hundred degrees.",
    "The cat sat on the mat and looked at the birds.",
    "A memory layer reads a few chapters of a large bank.",
    "Rivers run to the sea and the sea gives rain.",
]


def make_inputs(root: Path) -> None:
    (root / "corpus").mkdir()
    for i in range(8):
        text = "\n".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(60))
        (root / "corpus" / f"doc{i}.txt").write_text(text + "\n")
    with open(root / "more.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": " ".join(SENTENCES[i % 5 :] + SENTENCES[: i % 5])}) + "\n")
    with open(root / "chats.jsonl", "w") as f:
        for i in range(40):
            q, a = SENTENCES[i % 5], SENTENCES[(i + 1) % 5]
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            f.write(json.dumps({"messages": msgs}) + "\n")


def _env(root: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # `moc`, `python` and `lm_eval` of this environment
    return {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HOME": os.environ.get("HOME", str(root)),
    }


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_the_docs_have_commands_and_every_skip_has_a_reason() -> None:
    cmds = all_commands()
    assert len([c for c in cmds if c.skip is None]) >= 10, [c.text for c in cmds]
    assert all(c.skip for c in cmds if c.skip is not None)
    placeholders = [
        c for c in cmds if c.skip is None and re.search(r"\b(TOK|DIR|CHECKPOINT|PATH)\b", c.runnable)
    ]
    assert not placeholders, [f"{c.where}: {c.text}" for c in placeholders]


def test_skipped_commands_are_listed(capsys: pytest.CaptureFixture) -> None:
    skipped = [c for c in all_commands() if c.skip is not None]
    with capsys.disabled():
        print(f"\nREADME/docs commands not run here ({len(skipped)}):")
        for c in skipped:
            print(f"  {c.where}: {c.text[:80]}  -- {c.skip}")


def test_parser_reads_blocks_continuations_optional_groups_and_skips(tmp_path: Path) -> None:
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n    moc info tiny-moc   # comment\n    moc a \\\n      --b 1 [--c D | --e]\n\n"
        "a paragraph\n\n    S = not a command\n\n"
        "<!-- readme-test: skip too slow -->\n```bash\nmoc slow\n```\n"
        "```python\nimport moc\n```\n"
    )
    cmds = [(c.text, c.runnable, c.skip) for c in parse_at(md, tmp_path)]
    assert cmds == [
        ("moc info tiny-moc   # comment", "moc info tiny-moc   # comment", None),
        ("moc a --b 1 [--c D | --e]", "moc a --b 1", None),
        ("moc slow", "moc slow", "too slow"),
    ]


def parse_at(path: Path, root: Path) -> list[Command]:
    global ROOT
    saved, ROOT = ROOT, root
    try:
        return parse(path)
    finally:
        ROOT = saved


def test_every_documented_command_runs(tmp_path: Path) -> None:
    make_inputs(tmp_path)
    (tmp_path / "bench").symlink_to(ROOT / "bench")  # commands are written as run from the repository root
    env = _env(tmp_path)
    ran = []
    for c in all_commands():
        if c.skip is not None:
            continue
        try:
            proc = subprocess.run(
                ["bash", "-c", c.runnable],
                cwd=tmp_path,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=PER_COMMAND_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{c.where}: `{c.text}` took over {PER_COMMAND_TIMEOUT_S} s (mark it skip with a reason?)"
            )
        if proc.returncode != 0:
            pytest.fail(
                f"{c.where}: `{c.runnable}` exited {proc.returncode}\n"
                f"(ran before it: {' ; '.join(r[:50] for r in ran[-3:])})\n"
                f"--- stdout ---\n{proc.stdout[-2000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
            )
        ran.append(c.runnable)
    assert ran
