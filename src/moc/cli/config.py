"""``moc config show | keys``: print a resolved run config, or every run-config key with its type and default.

Both read the dataclasses themselves, so what they print cannot drift from what the loader accepts::

    moc config show tiny-moc --set memory.top_k=8     # the run config after base: chains and overrides
    moc config keys                                   # every run-config key: type, default

Experiment configs have their own command: ``moc-lab config show | keys``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from moc.cli import add_config_args
from moc.config import ConfigError, RunConfig, load_config, preset_names
from moc.configio import describe


def cmd_show(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        if args.config in preset_names() or Path(args.config).exists():
            raise
        raise ConfigError(f"{e}; an experiment config? run: moc-lab config show {args.config}") from None
    sys.stdout.write(cfg.to_yaml())
    return 0


def _yaml_scalar(value: object) -> str:
    """A default as it would be written in YAML (``null``, ``[]``, ``3.0e-4``), on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def print_keys(rows: list[tuple[str, str, object]]) -> None:
    """Print ``describe()`` rows as aligned ``key  default  (type)`` lines."""
    width = max(len(key) for key, _, _ in rows)
    for key, type_name, default in rows:
        print(f"{key.ljust(width)}  {_yaml_scalar(default)}  ({type_name})")


def cmd_keys(args: argparse.Namespace) -> int:
    print_keys(describe(RunConfig))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="show a resolved run config or list every run-config key",
        description="Inspect run configs: `show` prints a preset or YAML file resolved (base: chains and "
        "--set overrides applied) as YAML; `keys` lists every key with its default and type. Experiment "
        "configs: `moc-lab config show | keys`.",
    )
    sub = p.add_subparsers(dest="config_command", required=True)
    show = sub.add_parser(
        "show",
        help="print a run config resolved, as YAML",
        description="Print CONFIG (a run preset name or a YAML file) with its base: chain and --set "
        "overrides applied, every key included.",
    )
    add_config_args(show)
    show.set_defaults(func=cmd_show)
    keys = sub.add_parser(
        "keys",
        help="list every run-config key with its default and type",
        description="List every key of the run config with its default value and type.",
    )
    keys.set_defaults(func=cmd_keys)
