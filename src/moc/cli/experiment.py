"""``moc experiment``, ``moc demo`` and ``moc report``: the paper's protocol end to end, and its report.

They run the demo application, :mod:`moc_experiments`, imported inside each command: the ``moc`` library
itself never imports it (``tests/test_library_boundary.py``).
"""

from __future__ import annotations

import argparse
import json

from moc.cli import add_overrides_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment",
        help="pretrain MoC + dense baselines, IFT, evaluate, write a report (presets: demo, smoke, paper)",
        description="Run the Mixture-of-Chapters protocol: pretrain MoC and dense baselines on the same "
        "tokens, measure, instruction fine-tune, measure again; writes results.json, report.md and plots "
        "to runs/NAME.",
    )
    p.add_argument(
        "experiment",
        help="experiment preset (demo, smoke, paper; capacity-bits, capacity-bits-demo, capacity-bits-long, "
        "capacity-bits-smoke, capacity, capacity-long, capacity-demo, capacity-retention, capacity-smoke) "
        "or an experiment YAML",
    )
    _common(p)
    p.set_defaults(func=_run)

    d = subparsers.add_parser(
        "demo",
        help="the offline CPU demo (its measured time is in the README): knowledge in bits on the "
        "compositional world (`moc experiment capacity-bits-demo`, into OUT/knowledge); with --text also "
        "the real-text protocol "
        "(`moc experiment demo`: offline corpus, tiny models, full report, into OUT); --set applies to "
        "the knowledge world, or to the real text with --text",
    )
    _common(d)
    d.add_argument(
        "--text",
        action="store_true",
        help="also run the real-text protocol (validation loss, probes, leak ablation; ~3.5 more minutes)",
    )
    d.set_defaults(func=_demo, experiment="demo")

    r = subparsers.add_parser("report", help="regenerate report.md and plots from a run's results.json")
    r.add_argument("run", help="run folder (runs/NAME) or its results.json")
    r.add_argument("--out", default=None, help="write the report here (default: next to results.json)")
    r.set_defaults(func=_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=None, help="repeat everything over N seeds (mean ± sd)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default runs/NAME)")
    add_overrides_arg(p, "pretrain.steps=100 --set moc.memory.top_k=8")
    p.add_argument("--quiet", action="store_true", help="print only the final tables")
    p.add_argument(
        "--plan",
        "--dry-run",
        dest="plan",
        action="store_true",
        help="print the models (iso-FLOP depth at the pretraining micro-batch) and phases; train nothing",
    )


def _run(args: argparse.Namespace) -> int:
    from moc_experiments.experiment import load_experiment, run_experiment

    overrides = list(args.overrides)
    if args.seeds is not None:
        overrides.append(f"seeds={args.seeds}")
    if args.out is not None:
        overrides.append(f"out_dir={args.out}")
    from moc_experiments.experiment.capacity import is_capacity

    if is_capacity(args.experiment):  # the knowledge-capacity experiment (its own runner and report)
        from moc_experiments.experiment.capacity import capacity_plan, load_capacity, run_capacity
        from moc_experiments.experiment.capacity.report import tables as capacity_tables

        if args.plan:
            print(capacity_plan(load_capacity(args.experiment, overrides)))
            return 0
        cap = run_capacity(load_capacity(args.experiment, overrides), progress=not args.quiet)
        if args.quiet:
            print(capacity_tables(cap))
        return 0
    exp = load_experiment(args.experiment, overrides)
    if args.plan:
        from moc_experiments.experiment.plan import experiment_plan, format_plan

        print(format_plan(experiment_plan(exp)))
        return 0
    results = run_experiment(exp, progress=not args.quiet)
    if args.quiet:
        from moc_experiments.experiment.report import tables

        print(tables(results))
    return 0


# The knowledge experiment `moc demo` runs (`make demo`).
DEMO_PRESET = "capacity-bits-demo"


def _demo(args: argparse.Namespace) -> int:
    """`moc demo`: the knowledge world (OUT/knowledge); with ``--text`` then the real-text protocol (OUT)."""
    from pathlib import Path

    from moc_experiments.experiment.capacity import capacity_plan, load_capacity, run_capacity
    from moc_experiments.experiment.capacity.report import tables as capacity_tables

    over = [f"out_dir={Path(args.out or 'runs/demo') / 'knowledge'}"]
    if args.seeds is not None:
        over.append(f"seeds={args.seeds}")
    if not args.text:
        over += list(args.overrides)  # --set applies to the knowledge world when it runs alone
    cfg = load_capacity(DEMO_PRESET, over)
    if args.plan:
        print(capacity_plan(cfg))
    else:
        cap = run_capacity(cfg, progress=not args.quiet)
        if args.quiet:
            print(capacity_tables(cap))
    return _run(args) if args.text else 0


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moc_experiments.experiment.report import load_results, tables, write_report

    results_path = Path(args.run) / "results.json" if Path(args.run).is_dir() else Path(args.run)
    if results_path.is_file() and '"kind": "capacity"' in results_path.read_text()[:2000]:
        from moc_experiments.experiment.capacity.report import tables as capacity_tables
        from moc_experiments.experiment.capacity.report import write_report as capacity_report

        path = capacity_report(results_path, args.out)
        print(capacity_tables(json.loads(results_path.read_text())))
        print(f"\nreport: {path}")
        return 0
    path = write_report(args.run, args.out)  # a missing run: FileNotFoundError, reported by moc.cli.main
    print(tables(load_results(args.run)))
    print(f"\nreport: {path}")
    return 0
