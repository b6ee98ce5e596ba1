"""``moc experiment``, ``moc demo`` and ``moc report``: the paper's protocol end to end, and its report."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="pretrain MoC + dense baselines, IFT, evaluate, write a report (presets: demo, smoke, paper)",
        description="Run the Mixture-of-Chapters protocol: pretrain MoC and dense baselines on the same "
        "tokens, measure, instruction fine-tune, measure again; writes results.json, report.md and plots "
        "to runs/NAME.",
    )
    p.add_argument("experiment", help="experiment preset (demo, smoke, paper) or path to an experiment YAML")
    _common(p)
    p.set_defaults(func=_run)

    d = subparsers.add_parser(
        "demo",
        help="the 10-minute CPU demo: `moc experiment demo` (offline corpus, tiny models, full report)",
    )
    _common(d)
    d.set_defaults(func=_run, experiment="demo")

    r = subparsers.add_parser("report", help="regenerate report.md and plots from a run's results.json")
    r.add_argument("run", help="run folder (runs/NAME) or its results.json")
    r.add_argument("--out", default=None, help="write the report here (default: next to results.json)")
    r.set_defaults(func=_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=None, help="repeat everything over N seeds (mean ± sd)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/NAME)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an experiment key, e.g. --set pretrain.steps=100 --set moc.memory.top_k=8 "
        "(repeatable)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the final tables")


def _run(args: argparse.Namespace) -> int:
    from moc.data.errors import DataError
    from moc.experiment import ExperimentError, load_experiment, run_experiment

    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    exp = load_experiment(args.experiment, overrides)
    try:
        results = run_experiment(exp, progress=not args.quiet)
    except (ExperimentError, DataError) as e:
        print(f"moc {args.command}: {e}", file=sys.stderr)
        return 1
    if args.quiet:
        from moc.experiment.report import tables

        print(tables(results))
    return 0


def _report(args: argparse.Namespace) -> int:
    from moc.experiment.report import load_results, tables, write_report

    try:
        path = write_report(args.run, args.out)
    except FileNotFoundError as e:
        print(f"moc report: {e}", file=sys.stderr)
        return 1
    print(tables(load_results(args.run)))
    print(f"\nreport: {path}")
    return 0
