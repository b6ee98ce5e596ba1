"""``moc config show | keys``: print a resolved config, or every key with its type and default.

Both read the dataclasses themselves, so what they print cannot drift from what the loader accepts::

    moc config show tiny-moc --set memory.top_k=8     # the run config after base: chains and overrides
    moc config show demo                              # an experiment preset (found by name)
    moc config keys                                   # every run-config key: type, default
    moc config keys --experiment                      # every experiment key
    moc config keys --capacity                        # every key of `moc experiment capacity`
"""

from __future__ import annotations

import argparse
import sys

import yaml

from moc.cli import add_config_args
from moc.config import RunConfig, load_config, preset_names
from moc.configio import describe


def _is_experiment(spec: str, forced: bool) -> bool:
    """An experiment config when asked (``--experiment``) or when ``spec`` names only an experiment preset."""
    if forced:
        return True
    if spec in preset_names():
        return False  # a run preset: the demo application (moc_experiments) is not even imported
    from moc_experiments.experiment.config import experiment_presets

    return spec in experiment_presets()


def _is_capacity(spec: str, forced: bool) -> bool:
    """A capacity experiment config when asked (``--capacity``) or when ``spec`` names a capacity preset or
    a YAML file of ``kind: capacity``."""
    if forced:
        return True
    if spec in preset_names():
        return False
    from moc_experiments.experiment.capacity import is_capacity

    return is_capacity(spec)


def cmd_show(args: argparse.Namespace) -> int:
    if _is_capacity(args.config, args.capacity):
        from moc_experiments.experiment.capacity import load_capacity

        text = yaml.safe_dump(load_capacity(args.config, args.overrides).to_dict(), sort_keys=False)
    elif _is_experiment(args.config, args.experiment):
        from moc_experiments.experiment.config import load_experiment

        exp = load_experiment(args.config, args.overrides)
        d = exp.to_dict()
        d["moc"] = exp.moc_config.to_dict()  # the model section resolved too (its base: chain followed)
        text = yaml.safe_dump(d, sort_keys=False)
    else:
        text = load_config(args.config, args.overrides).to_yaml()
    sys.stdout.write(text)
    return 0


def _yaml_scalar(value: object) -> str:
    """A default as it would be written in YAML (``null``, ``[]``, ``3.0e-4``), on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def cmd_keys(args: argparse.Namespace) -> int:
    if args.capacity:
        from moc_experiments.experiment.capacity import CapacityConfig

        rows = describe(CapacityConfig)
    elif args.experiment:
        from moc_experiments.experiment.config import ExperimentConfig

        rows = describe(ExperimentConfig)
    else:
        rows = describe(RunConfig)
    width = max(len(key) for key, _, _ in rows)
    for key, type_name, default in rows:
        print(f"{key.ljust(width)}  {_yaml_scalar(default)}  ({type_name})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "config",
        help="show a resolved config or list every config key",
        description="Inspect configs: `show` prints a preset or YAML file resolved (base: chains and "
        "--set overrides applied) as YAML; `keys` lists every key with its default and type.",
    )
    sub = p.add_subparsers(dest="config_command", required=True)
    show = sub.add_parser(
        "show",
        help="print a config resolved, as YAML",
        description="Print CONFIG (a run or experiment preset name, or a YAML file) with its base: chain "
        "and --set overrides applied, every key included.",
    )
    add_config_args(show)
    show.add_argument(
        "--experiment",
        action="store_true",
        help="read CONFIG as an experiment config (automatic for experiment preset names)",
    )
    show.add_argument(
        "--capacity",
        action="store_true",
        help="read CONFIG as a capacity experiment config (automatic for capacity presets, kind: capacity)",
    )
    show.set_defaults(func=cmd_show)
    keys = sub.add_parser(
        "keys",
        help="list every config key with its default and type",
        description="List every key of the run config (or, with --experiment, the experiment config; with "
        "--capacity, the capacity experiment's) with its default value and type.",
    )
    keys.add_argument("--experiment", action="store_true", help="list the experiment config's keys")
    keys.add_argument("--capacity", action="store_true", help="list the capacity experiment config's keys")
    keys.set_defaults(func=cmd_keys)
