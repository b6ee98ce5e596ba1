"""``moc experiment``, ``moc demo``, ``moc report``: moved to the lab's own command, ``moc-lab``.

The experiments are an application of the library (:mod:`moc_experiments`), so they have their own
entry point; ``moc`` imports nothing from it. These pointers say where each command went, for one
release.
"""

from __future__ import annotations

import argparse
import shlex

from moc.errors import MocError

# old `moc` command -> the `moc-lab` command that replaces it
MOVED = {"experiment": "run", "demo": "demo", "report": "report"}


class CommandMovedError(MocError, RuntimeError):
    """A command that now lives in ``moc-lab``; the message gives the new command line."""


def register(subparsers: argparse._SubParsersAction) -> None:
    for old, new in MOVED.items():
        p = subparsers.add_parser(
            old,
            help=f"moved: `moc-lab {new}`",
            description=f"`moc {old}` is now `moc-lab {new}` (same arguments).",
            add_help=False,
            prefix_chars="\0",  # no options of its own: every word, --flags too, lands in `rest`
        )
        p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
        p.set_defaults(func=_moved, new=new)


def _moved(args: argparse.Namespace) -> int:
    line = shlex.join(["moc-lab", args.new, *args.rest])
    raise CommandMovedError(
        f"`moc {args.command}` moved to the experiments' own command; run: {line} "
        "(or python -m moc_experiments ...)"
    )
