"""What every experiment pipeline shares: a pool of worker processes, atomic results files, progress lines.

    execute(jobs, workers, on_done, run)    # run(job) -> record in worker processes; on_done(job, record)

A job is any picklable object with ``name``, ``cost`` (relative, for scheduling), ``depends_on`` (a job
name or None) and ``log_path`` (where its output goes, or None). Runs are independent processes, so
``workers`` of them side by side change no number. With more than one worker each job gets a fresh
process: a worker that had trained other models before would hold their compiled graphs, and its heap
would be fragmented by their allocations (freed memory is kept in the process, ``moc.train.allocator``),
so a later model's step faulted pages in again and ran slower (``bench/capacity_step.py`` measures a
process crowded with models against one holding a single pair).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from moc.train.errors import TrainingInterrupted
from moc_experiments.errors import ExperimentError

RESULTS_FILE = "results.json"  # every experiment's results, in its run folder


def results_path(run: str | Path) -> Path:
    """A run folder's results.json (or the results file given); FileNotFoundError names the fix."""
    path = Path(run)
    path = path / RESULTS_FILE if path.is_dir() else path
    if path.is_dir():
        raise ExperimentError(f"{path} is a directory, not a results file; pass the run folder that holds it")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `moc-lab run ...` first")
    return path


def keep_results_aside(path: Path) -> Path | None:
    """Move an earlier ``results.json`` (and the ``report.md`` beside it) aside as
    ``results.prev-N.json`` (``report.prev-N.md``), N the first number free for both, so a run into a
    folder that holds another experiment's results never overwrites them. Returns where the results
    went, or None when there were none. ``moc-lab report results.prev-N.json --out DIR`` rebuilds its
    report and plots."""
    if not path.exists():
        return None
    n = 1
    while path.with_name(f"results.prev-{n}.json").exists() or path.with_name(f"report.prev-{n}.md").exists():
        n += 1
    backup = path.with_name(f"results.prev-{n}.json")
    path.rename(backup)
    report = path.with_name("report.md")
    if report.is_file():
        report.rename(path.with_name(f"report.prev-{n}.md"))
    return backup


def is_results_of(path: Path, kind: str) -> bool:
    """Whether ``path`` is a readable results file (a JSON object) written by experiment kind ``kind``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON, a folder
        return False
    return isinstance(data, dict) and data.get("kind", "protocol") == kind


def log(prefix: str, msg: str, progress: bool) -> None:
    if progress:
        print(f"{prefix}: {msg}", flush=True)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically: a partial file never replaces a good one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def _ready(jobs: Sequence[Any], done: set[str], started: set[str]) -> list[Any]:
    ready = [j for j in jobs if j.name not in started and (j.depends_on is None or j.depends_on in done)]
    return sorted(ready, key=lambda j: -j.cost)  # longest first keeps the workers evenly loaded


def _guarded(job: Any, get: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    try:
        return get(job)
    except TrainingInterrupted:
        # A job's training stopped for Ctrl-C / SIGTERM: the whole experiment stops (exit 130), it did
        # not fail, and the job's own advice (`--resume`) is no option of moc-lab.
        raise KeyboardInterrupt from None
    except Exception as e:
        where = f" (full log: {job.log_path})" if getattr(job, "log_path", None) else ""
        raise ExperimentError(f"run {job.name} failed: {type(e).__name__}: {e}{where}") from e


def execute(
    jobs: Sequence[Any],
    workers: int,
    on_done: Callable[[Any, dict[str, Any]], None],
    run: Callable[[Any], dict[str, Any]],
) -> None:
    """Run ``jobs`` respecting ``depends_on``, at most ``workers`` at a time, each in a fresh process
    (in this process, one after the other, when ``workers`` is 1)."""
    done: set[str] = set()
    started: set[str] = set()
    if workers <= 1:
        while len(done) < len(jobs):
            ready = _ready(jobs, done, started)
            if not ready:
                raise ExperimentError("job dependencies cannot be met (a job depends on a missing one)")
            job = ready[0]
            started.add(job.name)
            on_done(job, _guarded(job, run))
            done.add(job.name)
        return
    spawn = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn, max_tasks_per_child=1) as pool:
        running: dict[Future, Any] = {}
        try:
            while len(done) < len(jobs):
                for job in _ready(jobs, done, started)[: workers - len(running)]:
                    started.add(job.name)
                    running[pool.submit(run, job)] = job
                if not running:
                    raise ExperimentError("job dependencies cannot be met (a job depends on a missing one)")
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = running.pop(fut)
                    on_done(job, _guarded(job, lambda _j, f=fut: f.result()))
                    done.add(job.name)
        except BaseException:
            # Fail fast: the other runs' results would be thrown away anyway. The pool has no public
            # way to stop running jobs, so end its worker processes (ours, started above) directly.
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
