"""lm-evaluation-harness on moc models: ``evaluate(model_or_dir, tasks, include_path=...) -> dict``.

The model goes to lm-eval's own Hugging Face wrapper (``HFLM``), so scoring is exactly lm-eval's.
Loglikelihood scoring runs the context + continuation in one forward pass (batched, padded) and reads
the continuation's token log-probabilities. That is valid when the logit at position t depends only on
tokens <= t, which holds for ``causal`` and ``token`` routing. ``sequence`` routing pools the whole
input, continuation and padding included, so a continuation's score depends on itself and on its
batch-mates: we warn once when such a model is evaluated.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from moc.errors import one_line, warn_once
from moc.hf.convert import check_tokenizer_fits, load_given_tokenizer, load_model, resolve_tokenizer
from moc.hf.errors import HFError
from moc.hf.modeling_moc import MoCForCausalLM

RESULTS_FILE = "eval_results.json"
SEQUENCE_ROUTING_WARNING = (
    "this model uses sequence routing, which is not causal: in lm-eval's loglikelihood scoring the "
    "chapters read depend on the continuation being scored (and on padding and batch-mates), so "
    "multiple-choice scores are not comparable to those of causal models; evaluate a causal- or "
    "token-routed model for benchmark numbers"
)


def warn_if_not_causal(model: MoCForCausalLM) -> bool:
    """Warn (once per process) if the model's routing makes loglikelihood scores invalid."""
    if model.config.routing != "sequence":
        return False
    warn_once(SEQUENCE_ROUTING_WARNING, stacklevel=3)
    return True


def _task_list(tasks: list[str] | str) -> list[str]:
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    if not names:
        raise HFError("no tasks given; pass --tasks NAME[,NAME...] (e.g. a local task from --include-path)")
    return names


def _check_tasks(
    task_manager: Any, names: list[str], include_path: str | None, unreadable: list[str] | None = None
) -> None:
    known = set(task_manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            where = (
                f" or in {include_path}" if include_path else "; pass --include-path DIR for local task YAMLs"
            )
            # lm-eval skips task files it cannot load without a word: they may be where the task is
            skipped = f"; lm-eval could not load {'; '.join(unreadable)}" if unreadable else ""
            raise HFError(f"unknown lm-eval task {name!r}{hint}: not among lm-eval's tasks{where}{skipped}")


def _unloadable_task_files(include_path: str) -> list[str]:
    """Read every task YAML under ``include_path`` as lm-eval's index does, which skips a file it cannot
    load with only a debug log, so a typo in the user's own task file would surface as "unknown task".
    A file that is not valid YAML raises :class:`HFError` naming it and the line; any other failure
    (an ``include:`` of a missing file, ...) is returned as ``"PATH (problem)"`` for the unknown-task
    message. ``!function`` tags are not imported here (``resolve_func=False``, as the index reads)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    problems = []
    for path in sorted(Path(include_path).glob("**/*.yaml")):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue  # the folders lm-eval's index ignores
        try:
            load_yaml(path, resolve_func=False, recursive=True)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or "malformed YAML"
            raise HFError(
                f"lm-eval task file {path} is not valid YAML{at}: {problem}; fix it (lm-eval would skip it "
                "and report its task as unknown)"
            ) from None
        except Exception as e:  # what lm-eval's index swallows: report it instead, if a task is missing
            problems.append(f"{path} ({one_line(e)})")
    return problems


def _task_manager(names: list[str], include_path: str | None) -> Any:
    """lm-eval's task index; just the local tasks when they are all that is asked for (indexing
    lm-eval's ~15k built-in tasks takes tens of seconds)."""
    from lm_eval.tasks import TaskManager

    unreadable = _unloadable_task_files(include_path) if include_path else []
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(name in set(local.all_tasks) for name in names):
            return local
    full = TaskManager(include_path=include_path)
    _check_tasks(full, names, include_path, unreadable)
    return full


@contextlib.contextmanager
def _quiet_git_hash() -> Iterator[None]:
    """Around ``simple_evaluate``: lm-eval records the commit of the working directory by running
    ``git describe`` with git's stderr on ours, so every evaluation outside a git checkout prints
    ``fatal: not a git repository``. Swap in :func:`_git_commit_hash`, which records the same hash
    and drops only that message; lm-eval's other output and errors are untouched."""
    try:
        import lm_eval.evaluator as evaluator
    except ImportError:
        yield
        return
    original = getattr(evaluator, "get_git_commit_hash", None)
    if original is None:  # a later lm-eval without the call: nothing to quiet
        yield
        return
    evaluator.get_git_commit_hash = _git_commit_hash
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original


def _git_commit_hash() -> str | None:
    """lm-eval's ``get_git_commit_hash`` (``git describe --always``, else the hash read from a ``.git``
    folder in the working directory) with git's stderr captured: "not a git repository" is the normal
    case outside a checkout and is dropped; anything else git says is passed on to stderr."""
    from lm_eval.loggers.utils import get_commit_from_path

    try:
        run = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
    except OSError:  # git is not installed
        return get_commit_from_path(os.getcwd())
    if run.returncode == 0:
        return run.stdout.strip()
    if "not a git repository" not in run.stderr:
        sys.stderr.write(run.stderr)
    return get_commit_from_path(os.getcwd())


def evaluate(
    model_or_dir: MoCForCausalLM | str | Path,
    tasks: list[str] | str,
    include_path: str | Path | None = None,
    *,
    tokenizer: Any = None,
    batch_size: int = 1,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    bootstrap_iters: int = 1000,
    output_path: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a model (a ``MoCForCausalLM``, a checkpoint / run dir, or an exported folder) on lm-eval
    tasks. Returns ``{"results": {task: {metric: value}}, "n-samples", "versions", "config", ...}``
    (JSON-safe), also written to ``output_path`` if given."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    names = _task_list(tasks)
    if include_path is not None and not Path(include_path).is_dir():
        raise HFError(f"--include-path {include_path} is not a folder of lm-eval task YAML files")
    if isinstance(model_or_dir, MoCForCausalLM):
        model, source_name = model_or_dir, getattr(model_or_dir.config, "name_or_path", "")
        if tokenizer is None:
            raise HFError("evaluating a model object needs tokenizer=DIR or a loaded tokenizer")
        tok = load_given_tokenizer(tokenizer)
        if device is not None:
            model = model.to(device)
    else:
        model, source = load_model(model_or_dir, device=device)
        source_name = str(source.path)
        tok = resolve_tokenizer(source, tokenizer)
    check_tokenizer_fits(tok, model.config.vocab_size)
    sequence = warn_if_not_causal(model)
    model.eval()

    task_manager = _task_manager(names, str(include_path) if include_path else None)
    lm = HFLM(
        pretrained=model,
        tokenizer=tok,
        backend="causal",
        batch_size=batch_size,
        max_length=model.config.max_position_embeddings,
    )
    with _quiet_git_hash():
        out = simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
        )
    summary = {
        "results": out.get("results", {}),
        "groups": out.get("groups", {}),
        "n-samples": out.get("n-samples", {}),
        "versions": out.get("versions", {}),
        "higher_is_better": out.get("higher_is_better", {}),
        "config": {
            "model": source_name,
            "moc_name": model.config.moc_name,
            "routing": model.config.routing,
            "loglikelihood_valid": not sequence,
            "tasks": names,
            "include_path": str(include_path) if include_path else None,
            "num_fewshot": num_fewshot,
            "limit": limit,
            "batch_size": batch_size,
            "device": str(model.device),
        },
    }
    summary = json.loads(json.dumps(summary, default=str))  # plain JSON types (numpy scalars, paths)
    if output_path is not None:
        Path(output_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def results_table(summary: dict[str, Any]) -> str:
    """A small text table: task, metric, value (± stderr)."""
    rows = []
    for task, metrics in sorted(summary.get("results", {}).items()):
        for key, value in sorted(metrics.items()):
            if "_stderr" in key or key == "alias" or not isinstance(value, int | float):
                continue
            metric = key.split(",")[0]
            err = metrics.get(key.replace(metric, f"{metric}_stderr", 1))
            err_s = f" ± {err:.4f}" if isinstance(err, int | float) else ""
            rows.append(f"{task:<28} {metric:<12} {value:.4f}{err_s}")
    return "\n".join([f"{'task':<28} {'metric':<12} value", *rows])
