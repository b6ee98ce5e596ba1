"""The ``moc`` command line. Each subcommand lives in its own module with a ``register(subparsers)``."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from moc.config import ConfigError

# One module per group of subcommands; each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = [
    "moc.cli.accounting",  # params, flops, isoflop, info, forward
    "moc.cli.data",  # tokenizer train, data prepare
    "moc.cli.train",  # pretrain, ift
    "moc.cli.experiment",  # experiment, demo, report
    "moc.cli.hf",  # export, generate, chat, eval
    "moc.cli.router",  # router inspection
]


def add_config_args(p: argparse.ArgumentParser) -> None:
    """The shared ``CONFIG [--set key.sub=value ...]`` arguments."""
    p.add_argument("config", help="preset name (e.g. tiny-moc, paper-moc) or path to a YAML config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set memory.top_k=16 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moc", description="Mixture of Chapters memory transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"moc: config error: {e}", file=sys.stderr)
        return 2
