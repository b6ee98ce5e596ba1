"""The two kinds of experiment behind one shape: load a config, plan, run, print tables, write a report.

    kind = kind_of_spec("capacity-bits")          # from a preset name or a YAML file's `kind:`
    cfg = kind.load("capacity-bits", ["seeds=2"])
    print(kind.plan(cfg)); results = kind.run(cfg, True)   # runs/NAME/{results.json, report.md, *.png}
    kind_of_results(results).write_report(results_path, None)

- ``protocol``: the paper's protocol on real text (pretrain, measure, IFT, measure; :mod:`.runner`);
- ``capacity``: knowledge in bits on a synthetic world (:mod:`.capacity.pipeline`).

Both pipelines build a list of jobs, run them on the same worker pool (:mod:`.pool`), write
``results.json`` atomically after every finished job, and render ``report.md`` from it, so a run
folder says which kind wrote it (its results' ``kind``) and ``moc-lab report`` needs no other hint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moc.configio import ConfigError, suggest
from moc_experiments.errors import ExperimentError
from moc_experiments.experiment import capacity
from moc_experiments.experiment.capacity import report as capacity_report
from moc_experiments.experiment.pool import RESULTS_FILE, is_results_of, keep_results_aside, results_path
from moc_experiments.experiment.protocol import config as protocol_config
from moc_experiments.experiment.protocol import plan, report, runner


@dataclass(frozen=True)
class ExperimentKind:
    """One kind of experiment: a function for each step every kind has (load, plan, run, tables, report)."""

    name: str
    config_class: type
    presets: Callable[[], list[str]]
    load: Callable[[str, Sequence[str]], Any]  # (preset or YAML, --set overrides) -> config
    plan: Callable[[Any], str]  # config -> what would run, without training
    # (config, progress, train) -> results (also written to disk); train=False: the finished runs only
    # (its records and an earlier results.json), training nothing
    run: Callable[[Any, bool, bool], dict[str, Any]]
    tables: Callable[[dict[str, Any]], str]  # results -> the main tables as text
    write_report: Callable[[Path, Path | None], Path]  # (results.json, out folder) -> report.md
    show: Callable[[Any], dict[str, Any]]  # config -> everything it resolves to, for `config show`


def _report_only_or_train(
    run: Callable[..., dict[str, Any]], cfg: Any, progress: bool, train: bool
) -> dict[str, Any]:
    """A training run calls the runner as it always has (progress only); train=False asks it for the
    report from finished runs."""
    return run(cfg, progress=progress) if train else run(cfg, progress=progress, train=False)


def _show_protocol(exp: protocol_config.ExperimentConfig) -> dict[str, Any]:
    d = exp.to_dict()
    d["moc"] = exp.moc_config.to_dict()  # the model section resolved too (its base: chain followed)
    return d


PROTOCOL = ExperimentKind(
    name="protocol",
    config_class=protocol_config.ExperimentConfig,
    presets=protocol_config.experiment_presets,
    load=lambda spec, overrides: protocol_config.load_experiment(spec, list(overrides)),
    plan=plan.plan_text,
    run=lambda exp, progress, train=True: _report_only_or_train(runner.run_experiment, exp, progress, train),
    tables=report.tables,
    write_report=lambda path, out: report.write_report(path, out),
    show=_show_protocol,
)


def _run_capacity(cfg: capacity.CapacityConfig, progress: bool, train: bool = True) -> dict[str, Any]:
    """Run a capacity experiment; results.json left in its folder by another kind of experiment (or
    unreadable) is kept aside first: the capacity pipeline reuses and keeps only its own kind's runs."""
    path = cfg.run_dir / RESULTS_FILE
    if path.exists() and not is_results_of(path, "capacity"):
        backup = keep_results_aside(path)
        if progress:
            print(f"capacity: kept the earlier results in {cfg.run_dir} as {backup}", flush=True)
    return _report_only_or_train(capacity.run_capacity, cfg, progress, train)


CAPACITY = ExperimentKind(
    name="capacity",
    config_class=capacity.CapacityConfig,
    presets=capacity.capacity_presets,
    load=lambda spec, overrides: capacity.load_capacity(spec, list(overrides)),
    plan=capacity.capacity_plan,
    run=_run_capacity,
    tables=capacity_report.tables,
    write_report=lambda path, out: capacity_report.write_report(path, out),
    show=lambda cfg: cfg.to_dict(),
)

KINDS = {k.name: k for k in (PROTOCOL, CAPACITY)}


def kind_of_spec(spec: str) -> ExperimentKind:
    """The kind of a preset name or YAML file: ``capacity`` for capacity presets and files saying
    ``kind: capacity``, else the protocol. An unknown name is a ConfigError naming every preset."""
    if capacity.is_capacity(spec):
        return CAPACITY
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists() or spec in PROTOCOL.presets():
        return PROTOCOL  # a file without `kind: capacity` (the protocol's loader checks its keys)
    names = [name for kind in KINDS.values() for name in kind.presets()]
    raise ConfigError(
        f"no experiment preset or file named {spec!r}{suggest(spec, names)}; presets: {', '.join(names)}"
    )


def kind_of_results(results: dict[str, Any]) -> ExperimentKind:
    """The kind that wrote ``results`` (files without a ``kind`` are the protocol's)."""
    name = results.get("kind", PROTOCOL.name)
    if not isinstance(name, str) or name not in KINDS:
        raise ExperimentError(f"results of unknown kind {name!r}; known: {', '.join(KINDS)}")
    return KINDS[name]


# What each kind's report reads before anything else: key -> the JSON type it must have. A file
# without them is not that kind's results (an HF config.json, `{}`, a file cut short by hand).
REQUIRED_RESULTS: dict[str, dict[str, type]] = {
    "protocol": {"models": dict, "runs": list, "ift_runs": dict, "config": dict},
    "capacity": {"models": dict, "runs": dict, "config": dict, "world": dict, "steps": int},
}


def load_results(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, results) of a run folder or results file; anything that is not a complete results file
    of a known kind (unreadable, not JSON, not an object, keys missing, no runs) is an ExperimentError
    naming the file and the problem."""
    path = results_path(run)
    fix = "pass the results.json that `moc-lab run` wrote (or rerun the experiment)"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ExperimentError(f"{path} is not UTF-8 text (a binary file?); {fix}") from None
    except json.JSONDecodeError as e:
        why = "is empty" if not e.doc.strip() else f"is not valid JSON (line {e.lineno}: {e.msg}; cut short?)"
        raise ExperimentError(f"{path} {why}; {fix}") from None
    if not isinstance(results, dict):
        raise ExperimentError(f"{path} holds a JSON {type(results).__name__}, not a results object; {fix}")
    kind = kind_of_results(results)
    for key, tp in REQUIRED_RESULTS[kind.name].items():
        if not isinstance(results.get(key), tp):
            got = "is missing" if key not in results else f"is a {type(results[key]).__name__}"
            raise ExperimentError(f"{path}: {key!r} {got}; not a complete {kind.name} results file; {fix}")
    if not results["runs"]:
        raise ExperimentError(f"{path} holds no finished run yet; nothing to report; {fix}")
    return path, results
