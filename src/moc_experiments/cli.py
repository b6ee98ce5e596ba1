"""``moc-lab``: the experiments' command line (also ``python -m moc_experiments``).

    moc-lab demo [--text]                     # the offline CPU demo (`make demo`)
    moc-lab run EXPERIMENT [--plan]           # an experiment preset or YAML file, end to end
    moc-lab report RUN                        # rebuild report.md and the plots from RUN/results.json
    moc-lab report capacity-bank-series       # a sweep's report from the records it keeps in the repository
    moc-lab report table1                     # the real-text sweep's report from its records
    moc-lab config show EXPERIMENT            # an experiment config resolved, as YAML
    moc-lab config keys [protocol|capacity]   # every key of one kind of experiment config

The lab is an application of the library: it imports ``moc``, never the reverse, and runs its commands
through :func:`moc.cli.run_command`, so errors read as they do for ``moc`` (one line, exit status 2).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from moc.cli import add_overrides_arg, run_command
from moc.configio import describe
from moc.errors import MocError, one_line
from moc_experiments.errors import ExperimentError, ExperimentInterrupted
from moc_experiments.experiment.kinds import (
    CAPACITY,
    KINDS,
    PROTOCOL,
    ExperimentKind,
    kind_of_results,
    kind_of_spec,
    load_results,
)
from moc_experiments.experiment.pool import RESULTS_FILE
from moc_experiments.experiment.protocol.config import experiment_presets

# The knowledge experiment `moc-lab demo` runs (`make demo`); with --text the real-text protocol too.
DEMO_PRESET = "capacity-bits-demo"
TEXT_DEMO_PRESET = "demo"


def _common(p: argparse.ArgumentParser, example: str = "pretrain.steps=100 --set moc.memory.top_k=8") -> None:
    p.add_argument("--seeds", type=int, default=None, help="repeat everything over N seeds (mean ± sd)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/NAME)")
    add_overrides_arg(p, example)
    p.add_argument("--quiet", action="store_true", help="print only the final tables")
    p.add_argument(
        "--plan",
        "--dry-run",
        dest="plan",
        action="store_true",
        help="print the models (iso-FLOP depth at the pretraining micro-batch) and phases; train nothing",
    )


def _experiment(spec: str, overrides: list[str], plan: bool, quiet: bool, rerun: str = "") -> int:
    """Load ``spec`` with ``overrides``, then print its plan or run it (tables only when quiet).
    ``rerun``: the command that continues it after Ctrl-C (default ``moc-lab run SPEC``)."""
    kind = kind_of_spec(spec)
    cfg = kind.load(spec, overrides)
    if plan:
        print(kind.plan(cfg))
        return 0
    try:
        results = kind.run(cfg, not quiet)
    except KeyboardInterrupt:
        raise ExperimentInterrupted(_interrupted(kind, cfg, rerun or f"moc-lab run {spec}")) from None
    if quiet:
        print(kind.tables(results))
    return 0


def _interrupted(kind: ExperimentKind, cfg: Any, rerun: str) -> str:
    """The one line for an interrupted experiment: what was kept, and a command that exists to go on."""
    where = cfg.run_dir / RESULTS_FILE
    if kind is CAPACITY and cfg.resume:
        return f"interrupted; finished runs are in {where}; `{rerun}` reuses them and trains the rest"
    return f"interrupted; partial results are in {where}; `{rerun}` runs the experiment again"


def _same_command(args: argparse.Namespace) -> str:
    """The ``moc-lab run|demo`` command line that repeats this one (for the message after Ctrl-C)."""
    words = ["moc-lab", args.command]
    words += [args.experiment] if args.command == "run" else ["--text"] if args.text else []
    words += ["--seeds", str(args.seeds)] if args.seeds is not None else []
    words += ["--out", args.out] if args.out is not None else []
    for item in args.overrides:
        words += ["--set", item]
    return shlex.join(words)


def cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    return _experiment(args.experiment, overrides, args.plan, args.quiet, _same_command(args))


def cmd_demo(args: argparse.Namespace) -> int:
    """The knowledge world into OUT/knowledge; with ``--text`` then the real-text protocol into OUT."""
    over = [f"out_dir={Path(args.out or 'runs/demo') / 'knowledge'}"]
    if args.seeds is not None:
        over.append(f"seeds={args.seeds}")
    if not args.text:
        over += list(args.overrides)  # --set applies to the knowledge world when it runs alone
    _experiment(DEMO_PRESET, over, args.plan, args.quiet, _same_command(args))
    if not args.text:
        return 0
    args.experiment = TEXT_DEMO_PRESET
    return cmd_run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from moc_experiments.experiment.capacity import is_capacity

    if is_capacity(args.run) and not Path(args.run).is_dir():  # a preset or YAML file, not a run folder
        return _report_from_records(args, CAPACITY)
    if args.run in experiment_presets() and not Path(args.run).exists():  # a protocol preset by name
        return _report_from_records(args, PROTOCOL)
    path, results = load_results(args.run)
    kind = kind_of_results(results)
    try:
        report = kind.write_report(path, Path(args.out) if args.out else None)
        print(kind.tables(results))
    except MocError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:
        # load_results checked the top level; damage deeper in (a run record cut short) is named here
        raise ExperimentError(
            f"{path} is not a complete {kind.name} results file ({type(e).__name__}: {one_line(e)[:200]}); "
            "pass the results.json that `moc-lab run` wrote (or rerun the experiment)"
        ) from None
    print(f"\nreport: {report}")
    return 0


def _report_from_records(args: argparse.Namespace, kind: ExperimentKind) -> int:
    """``moc-lab report EXPERIMENT`` (a preset or YAML file that keeps records): the sweep's report rebuilt
    from its records, training nothing."""
    over = [f"out_dir={args.out}"] if args.out else []
    cfg = kind.load(args.run, over)
    if cfg.records is None:
        raise ExperimentError(
            f"{args.run} keeps no records (no `records:` folder); pass a run folder or results.json instead"
        )
    results = kind.run(cfg, True, False)
    print(kind.tables(results))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    kind = kind_of_spec(args.experiment)
    cfg = kind.load(args.experiment, args.overrides)
    sys.stdout.write(yaml.safe_dump(kind.show(cfg), sort_keys=False))
    return 0


def cmd_config_keys(args: argparse.Namespace) -> int:
    from moc.cli.config import print_keys

    print_keys(describe(KINDS[args.kind].config_class))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moc-lab", description="Mixture-of-Chapters experiments: the demo, the protocol, the reports"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    presets = ", ".join(name for kind in KINDS.values() for name in kind.presets())

    run = sub.add_parser(
        "run",
        help="run an experiment end to end: train every model, measure, write results.json and report.md",
        description="Run an experiment preset or YAML file: the protocol (pretrain MoC and dense "
        "baselines on the same tokens, measure, instruction fine-tune, measure again) or a capacity "
        "experiment (knowledge in bits on a synthetic world). Writes results.json, report.md and plots "
        "to runs/NAME.",
    )
    run.add_argument("experiment", help=f"experiment preset ({presets}) or an experiment YAML file")
    _common(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo",
        help="the offline CPU demo (its measured time is in the README)",
        description=f"Knowledge in bits on the compositional world (`moc-lab run {DEMO_PRESET}`, into "
        f"OUT/knowledge); with --text also the real-text protocol (`moc-lab run {TEXT_DEMO_PRESET}`: "
        "offline corpus, tiny models, full report, into OUT). --set applies to the knowledge world, or "
        "to the real text with --text.",
    )
    _common(demo, "train.exposures=100 (with --text: pretrain.steps=100)")  # keys of what runs
    demo.add_argument(
        "--text",
        action="store_true",
        help="also run the real-text protocol (validation loss, probes, leak ablation; ~3.5 more minutes)",
    )
    demo.set_defaults(func=cmd_demo)

    rep = sub.add_parser(
        "report",
        help="regenerate report.md and plots from a run's results.json",
        description="Rebuild report.md, its tables and plots from RUN/results.json (or a results file, "
        "e.g. an earlier results.prev-N.json with --out DIR), without training anything. A capacity "
        "preset that keeps records (e.g. capacity-bank-series) is rebuilt from its records folder into "
        "runs/NAME (or --out), also without training: the finished runs only.",
    )
    rep.add_argument("run", help="run folder (runs/NAME), its results.json, or a preset keeping records")
    rep.add_argument("--out", default=None, help="write the report here (default: next to results.json)")
    rep.set_defaults(func=cmd_report)

    config = sub.add_parser("config", help="show an experiment config resolved, or list its keys")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser(
        "show",
        help="print an experiment config resolved (base: chain and --set overrides applied), as YAML",
    )
    show.add_argument("experiment", help="experiment preset name or YAML file")
    add_overrides_arg(show, "seeds=2")
    show.set_defaults(func=cmd_config_show)
    keys = config_sub.add_parser("keys", help="list every key of one kind of experiment config")
    keys.add_argument("kind", nargs="?", default=PROTOCOL.name, choices=list(KINDS), help="default: protocol")
    keys.set_defaults(func=cmd_config_keys)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``moc-lab`` command; the exit status follows ``moc``'s (0, 2 for errors, 130 interrupted)."""
    return run_command(build_parser(), argv)
