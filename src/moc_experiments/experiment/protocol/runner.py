"""Run an experiment end to end: data -> pretrain every model -> measure -> IFT -> measure -> report.

    from moc_experiments.experiment import load_experiment, run_experiment
    results = run_experiment(load_experiment("demo"))      # writes runs/demo/{results.json,report.md,*.png}

Protocol (per seed): every model pretrains on the same tokens in the same order (same seed, sequence
length and batch); then each MoC IFT variant and each dense baseline fine-tunes from its pretrained
checkpoint with the same IFT recipe; after each phase we measure validation loss on the pretraining
distribution, router usage and the knowledge probes. Runs are independent single-process jobs, so
``workers`` of them can run side by side (one per CPU core) without changing any result.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from moc_experiments.errors import ExperimentError
from moc_experiments.experiment.pool import RESULTS_FILE, execute, keep_results_aside, log, write_json
from moc_experiments.experiment.pool import cores as pool_cores
from moc_experiments.experiment.protocol.config import ExperimentConfig, check_data_given
from moc_experiments.experiment.protocol.data import ExperimentData, prepare_experiment_data
from moc_experiments.experiment.protocol.jobs import Job, ProbeJob, run_job
from moc_experiments.experiment.protocol.models import (
    ModelSpec,
    ift_label,
    ift_runs,
    model_specs,
    phase_config,
    phase_micro_batch,
    phase_seq_len,
)
from moc_experiments.experiment.protocol.plan import model_record, phase_record
from moc_experiments.experiment.protocol.records import save_record, saved_records
from moc_experiments.experiment.protocol.report import tables, write_report

RESULTS_FORMAT = 1


def _log(msg: str, progress: bool) -> None:
    log("moc-lab run", msg, progress)


def workers_and_threads(exp: ExperimentConfig) -> tuple[int, int]:
    """Parallel jobs and torch threads per job: on CPU one job per core (small models use a core
    better alone than two cores share one model); on GPU one job at a time."""
    cores = pool_cores()
    if torch.cuda.is_available():
        return 1, exp.threads or cores
    workers = exp.workers or cores
    return workers, exp.threads or max(cores // workers, 1)


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def plan_jobs(
    exp: ExperimentConfig,
    specs: dict[str, ModelSpec],
    data: ExperimentData,
    out: Path,
    threads: int,
    heldout: Path | None = None,
) -> list[Job]:
    """Every training run of every seed, pretraining before the IFT runs that start from it, scheduled
    seed by seed (each run is seeded alone, so the order changes no number): a sweep stopped partway
    holds whole seeds of every model, which the paired comparisons can use."""
    ift = ift_runs(exp, specs)
    probes = None
    if data.probe_tasks:
        probes = ProbeJob(
            str(data.probes_dir) if data.probes_dir else None,
            list(data.probe_tasks),
            str(data.tokenizer_dir),
            exp.eval.probe_limit,
            exp.eval.batch_size,
        )
    val_len = phase_seq_len(exp, exp.pretrain)
    val_batch = min(exp.eval.batch_size, 16)  # logits of 16 x seq_len x vocab stay small
    jobs: list[Job] = []
    for rank, seed in enumerate(exp.seed_list):
        runs = out / "runs" / f"seed{seed}"
        first = len(jobs)
        for key, spec in specs.items():
            # Sequence routing sees the future: its probe scores would be invalid (so none are taken) and
            # its weights are also measured with causal routing.
            leaky = _leaky(spec)
            cfg = phase_config(
                spec,
                exp,
                "pretrain",
                seed=seed,
                out_dir=runs / "pretrain" / key,
                prepared_dir=data.pretrain_dir,
            )
            jobs.append(
                Job(
                    name=f"seed{seed}/pretrain/{key}",
                    seed=seed,
                    phase="pretrain",
                    key=key,
                    cfg=cfg.to_dict(),
                    init_from=None,
                    pretrain_dir=str(data.pretrain_dir),
                    val_seq_len=val_len,
                    val_windows=exp.eval.val_windows,
                    eval_batch_size=val_batch,
                    also_causal=leaky,
                    probes=None if leaky else probes,
                    threads=threads,
                    log_path=str(out / "logs" / f"seed{seed}-pretrain-{key}.log"),
                    cost=_cost(cfg, spec),
                    heldout=str(heldout) if heldout else None,
                    ablations=exp.eval.ablations and spec.has_memory,
                )
            )
        for run_key, (base, variant) in ift.items():
            spec = specs[base]
            cfg = phase_config(
                spec,
                exp,
                "ift",
                seed=seed,
                out_dir=runs / "ift" / run_key,
                prepared_dir=data.ift_dir,
                variant=variant,
            )
            jobs.append(
                Job(
                    name=f"seed{seed}/ift/{run_key}",
                    seed=seed,
                    phase="ift",
                    key=run_key,
                    cfg=cfg.to_dict(),
                    init_from=str(runs / "pretrain" / base),
                    pretrain_dir=str(data.pretrain_dir),
                    val_seq_len=val_len,
                    val_windows=exp.eval.val_windows,
                    eval_batch_size=val_batch,
                    also_causal=False,
                    probes=None if _leaky(spec) else probes,
                    threads=threads,
                    log_path=str(out / "logs" / f"seed{seed}-ift-{run_key}.log"),
                    cost=_cost(cfg, spec),
                    depends_on=f"seed{seed}/pretrain/{base}",
                    heldout=str(heldout) if heldout else None,
                )
            )
        seed_jobs = jobs[first:]
        # Every job of an earlier seed costs more than any of a later one (the pool starts the costliest
        # ready job first), while within a seed the longer runs still go first.
        top = 2 * max(j.cost for j in seed_jobs)
        for j in seed_jobs:
            j.cost += (len(exp.seed_list) - rank) * top
    return jobs


def _leaky(spec: ModelSpec) -> bool:
    return spec.has_memory and spec.cfg.memory.routing == "sequence"


def _cost(cfg: Any, spec: ModelSpec) -> float:
    """Relative cost for scheduling: counted training FLOPs of the run (memory layers cost ~1.5x on CPU
    what their FLOPs suggest, from measurements; only the order of jobs depends on this)."""
    from moc.accounting import count_flops

    t = cfg.train
    per_seq = count_flops(cfg, t.seq_len, t.micro_batch_size)["total"]
    flops = per_seq * t.max_steps * t.micro_batch_size * t.grad_accum_steps
    return flops * (1.5 if spec.has_memory else 1.0)


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


def run_experiment(exp: ExperimentConfig, progress: bool = True, train: bool = True) -> dict[str, Any]:
    """Run ``exp`` and write ``results.json``, ``report.md`` and plots into ``exp.run_dir``.

    With ``records``, a pretraining run whose record matches is not trained again, and each finished one
    is recorded. ``train=False``: train nothing; the results and report hold the recorded runs (e.g. to
    rebuild a sweep's report in a fresh clone)."""
    t_start = time.perf_counter()
    check_data_given(exp)  # before anything is written
    out = exp.run_dir
    out.mkdir(parents=True, exist_ok=True)
    # The protocol reuses no earlier run: whatever results the folder holds (this experiment's or
    # another's) are kept aside, never overwritten.
    backup = keep_results_aside(out / RESULTS_FILE)
    if backup is not None:
        _log(f"kept the earlier results in {out} as {backup}", progress)
    (out / "experiment.yaml").write_text(exp.to_yaml())
    cache = Path(exp.data.cache_dir) if exp.data.cache_dir else out / "data"
    data = prepare_experiment_data(exp, cache, progress)
    t_data = time.perf_counter() - t_start

    heldout = None
    if exp.eval.split_val and data.pretrain_text is not None:
        from moc_experiments.experiment.protocol.heldout import write_heldout

        heldout = write_heldout(
            data.pretrain_text,
            data.tokenizer_dir,
            exp.data.val_fraction,
            exp.data.split_seed,
            cache / "heldout.npz",
        )
    specs = model_specs(exp, data.vocab_size)
    workers, threads = workers_and_threads(exp)
    jobs = plan_jobs(exp, specs, data, out, threads, heldout)
    fingerprint = data.summary.get("corpus_fingerprint")
    wanted = {(j.key, j.seed): j.cfg for j in jobs if j.phase == "pretrain"}
    reused = saved_records(exp, wanted, fingerprint)
    jobs = [j for j in jobs if j.phase != "pretrain" or (j.key, j.seed) not in reused]
    if reused:
        _log(f"reusing {len(reused)} finished run(s) recorded in {exp.records}", progress)
    if not train:
        if not reused:
            raise ExperimentError(
                f"{exp.name}: no finished run to report (records: {exp.records or 'none set'}); "
                f"run `moc-lab run {exp.name}` first"
            )
        if jobs:
            _log(f"{len(jobs)} run(s) not trained (reporting the recorded ones only)", progress)
        jobs = []
    pre_len = phase_seq_len(exp, exp.pretrain)
    pre_micro = phase_micro_batch(exp, exp.pretrain)  # FLOPs per sequence at the micro-batch run
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "kind": "protocol",
        "name": exp.name,
        "description": _description(exp),
        "config": exp.to_dict(),
        "environment": {
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "python": platform.python_version(),
            "workers": workers,
            "threads": threads,
        },
        "data": data.summary,
        "probe_tasks": data.probe_info,
        "models": {k: model_record(s, pre_len, pre_micro) for k, s in specs.items()},
        "ift_runs": {
            k: {"base": base, "variant": variant, "label": ift_label(specs, base, variant)}
            for k, (base, variant) in ift_runs(exp, specs).items()
        },
        "phases": {"pretrain": phase_record(exp, "pretrain", specs)},
        "runs": [{"seed": s, "pretrain": {}, "ift": {}} for s in exp.seed_list],
        "notes": _notes(exp, data),
    }
    if exp.ift.steps > 0:
        results["phases"]["ift"] = phase_record(exp, "ift", specs)
    by_seed = {r["seed"]: r for r in results["runs"]}
    for (key, seed), rec in reused.items():
        by_seed[seed]["pretrain"][key] = rec
    _log(
        f"{len(jobs)} training runs on {workers} worker(s) x {threads} thread(s); logs in {out / 'logs'}",
        progress,
    )
    t_train = time.perf_counter()

    def on_done(job: Job, record: dict[str, Any]) -> None:
        record.pop("checkpoint", None)
        by_seed[job.seed][job.phase][job.key] = record
        write_json(out / RESULTS_FILE, results)  # partial results survive an interrupted run
        if exp.records is not None and job.phase == "pretrain":  # and, in the records, a session's end
            save_record(exp, job.key, job.seed, job.cfg, record, fingerprint)
        _log(
            f"{job.name}: val loss {record['val']['loss']:.3f}, train {record['train_s']:.0f}s, "
            f"eval {record['eval_s']:.0f}s (elapsed {time.perf_counter() - t_start:.0f}s)",
            progress,
        )

    execute(jobs, workers, on_done, run_job)
    if not train:  # seeds with no recorded run are left out (paired comparisons skip them anyway)
        results["runs"] = [r for r in results["runs"] if r["pretrain"]]
    for seed_run in results["runs"]:  # a stable order in the file, whatever order jobs finished in
        seed_run["pretrain"] = {k: seed_run["pretrain"][k] for k in specs if k in seed_run["pretrain"]}
        seed_run["ift"] = {k: seed_run["ift"][k] for k in results["ift_runs"] if k in seed_run["ift"]}
    results["timing"] = {
        "data_s": t_data,
        **data.timing,
        "train_s": time.perf_counter() - t_train,
        "total_s": time.perf_counter() - t_start,
    }
    write_json(out / RESULTS_FILE, results)
    report = write_report(results, out)
    results["timing"]["total_s"] = time.perf_counter() - t_start
    write_json(out / RESULTS_FILE, results)
    write_report(results, out)  # again, with the final wall time
    if progress:
        print()
        print(tables(results))
        print()
        _log(f"done in {results['timing']['total_s']:.0f}s; report: {report}", progress)
    return results


def _description(exp: ExperimentConfig) -> str:
    what = "pretrain MoC and dense baselines on the same tokens, measure"
    if exp.ift.steps > 0:
        what += ", instruction fine-tune (MoC with its bank frozen or at a low learning rate), measure again"
    return f"The Mixture-of-Chapters protocol at small scale: {what}."


def _notes(exp: ExperimentConfig, data: ExperimentData) -> list[str]:
    notes = []
    if data.probes_dir is not None and exp.eval.probe_limit:
        notes.append(
            f"Knowledge probes use the first {exp.eval.probe_limit} questions of each task "
            "(eval.probe_limit), scored by lm-evaluation-harness (acc: summed log-likelihood)."
        )
    if any("unigram" in t for t in data.probe_info.values()):
        notes.append(
            "Probe baselines: lm-eval's acc sums the log-likelihood of each answer, so a model that knows "
            "no fact still beats chance by preferring short answers (shortest) or frequent tokens "
            "(unigram); knowledge shows only above every baseline."
        )
    if exp.moc_config.memory.routing == "sequence":
        notes.append(
            "The main MoC model uses the paper's sequence routing, which sees the future: its "
            "validation loss and probe scores are not valid language-model measurements."
        )
    return notes
