"""One unit of work of an experiment: train one model for one phase, then measure it.

A :class:`Job` is plain data (picklable), so the runner can hand it to a worker process. ``run_job``
trains with :func:`moc.train.train`, then measures on the *pretraining* validation windows (loss per
window, router usage) and, when asked, runs the knowledge probes through lm-evaluation-harness
(:func:`moc.hf.evaluate`). Its stdout/stderr go to ``log_path``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


@dataclass
class ProbeJob:
    probes_dir: str | None  # lm-eval include_path (None: lm-eval's built-in tasks only)
    tasks: list[str]
    tokenizer_dir: str
    limit: int | None
    batch_size: int


@dataclass
class Job:
    name: str  # e.g. "seed0/pretrain/moc"
    seed: int
    phase: str  # "pretrain" | "ift"
    key: str  # model key (pretrain) or IFT run key
    cfg: dict[str, Any]  # the run's full RunConfig as a dict (train.out_dir set)
    init_from: str | None
    pretrain_dir: str
    val_seq_len: int
    val_windows: int
    eval_batch_size: int
    also_causal: bool  # also measure these weights with causal routing (leak ablation)
    probes: ProbeJob | None
    threads: int
    log_path: str
    cost: float = 1.0  # relative cost, for scheduling only
    depends_on: str | None = None  # name of the job whose checkpoint this one starts from
    heldout: str | None = None  # heldout.npz: also score the held-out facts and prose apart
    ablations: bool = False  # MoC: also score with the memory off and with the chapters shuffled


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def pretrain_val(
    model: torch.nn.Module, pretrain_dir: str | Path, seq_len: int, n_windows: int, batch_size: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Loss per validation window of the pretraining data, and router usage over the same windows.

    Returns ``({"loss", "tokens", "windows", "window_losses"}, router or None)`` with router =
    ``{"layers": [{"layer", "counts", "decisions", "mean_entropy", "coverage"}]}``. ``loss`` is
    token-weighted over all windows (windows are full, so it equals the mean of ``window_losses``).
    """
    from moc.data import PackedSequences, load_prepared

    ds = PackedSequences(load_prepared(pretrain_dir, "val"), seq_len)
    n = len(ds) if n_windows == 0 else min(n_windows, len(ds))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    window_losses: list[float] = []
    total, count = 0.0, 0
    counts: dict[int, torch.Tensor] = {}
    decisions: dict[int, int] = {}
    entropy: dict[int, float] = {}
    for start in range(0, n, batch_size):
        items = [ds[i] for i in range(start, min(n, start + batch_size))]
        ids = torch.stack([it["input_ids"] for it in items]).long().to(device)
        targets = torch.stack([it["targets"] for it in items]).long().to(device)  # already shifted
        # Per-document positions (as in training): packed documents stay separate.
        pos = torch.stack([it["position_ids"] for it in items]).long().to(device)
        out = model(ids, position_ids=pos)
        ce = F.cross_entropy(
            out.logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        mask = targets != -100
        sums, nums = (ce * mask).sum(1), mask.sum(1)
        window_losses += (sums / nums.clamp(min=1)).tolist()
        total += float(sums.sum())
        count += int(nums.sum())
        for info in out.routing or []:
            k = int(info.valid.sum())
            counts[info.layer] = counts.get(info.layer, 0) + info.chapter_counts.detach().float().cpu()
            decisions[info.layer] = decisions.get(info.layer, 0) + k
            entropy[info.layer] = entropy.get(info.layer, 0.0) + info.entropy * k
    model.train(was_training)
    val = {"loss": total / max(count, 1), "tokens": count, "windows": n, "window_losses": window_losses}
    if not counts:
        return val, None
    layers = []
    for layer in sorted(counts):
        c = [int(x) for x in counts[layer].round().long().tolist()]
        layers.append(
            {
                "layer": layer,
                "counts": c,
                "decisions": decisions[layer],
                "mean_entropy": entropy[layer] / max(decisions[layer], 1),
                "coverage": sum(1 for x in c if x > 0) / len(c),
            }
        )
    return val, {"layers": layers}


def run_probes(model: torch.nn.Module, probes: ProbeJob) -> dict[str, Any]:
    """Knowledge-probe accuracy per task through lm-evaluation-harness (``moc.hf.evaluate``)."""
    import moc.hf

    hf = moc.hf.from_moc_model(model)
    with _local_tasks_only(probes.probes_dir, probes.tasks):
        out = moc.hf.evaluate(
            hf,
            probes.tasks,
            include_path=probes.probes_dir,
            tokenizer=probes.tokenizer_dir,
            batch_size=probes.batch_size,
            limit=probes.limit,
            bootstrap_iters=0,
            device=str(next(model.parameters()).device),
        )
    tasks = {}
    for task, ns in out.get("n-samples", {}).items():
        metrics = out["results"].get(task, {})
        if "acc,none" not in metrics:
            continue
        tasks[task] = {
            "acc": float(metrics["acc,none"]),
            "acc_norm": float(metrics["acc_norm,none"]) if "acc_norm,none" in metrics else None,
            "n": int(ns["effective"]),
        }
    return {
        "tasks": tasks,
        "scorer": "lm-evaluation-harness",
        "loglikelihood_valid": out["config"].get("loglikelihood_valid", True),
    }


@contextlib.contextmanager
def _local_tasks_only(include_path: str | None, tasks: list[str]):
    """Index only the include_path tasks, not lm-eval's thousands of built-in YAMLs, when every task
    asked for lives there.

    Building lm-eval's full task index takes ~30 s on a 2-core machine, once per call. ``moc.hf.evaluate``
    builds a ``TaskManager(include_path=...)``; inside this context that manager skips the built-in
    tasks (``include_defaults=False``). Built-in tasks (e.g. ``arc_easy``) keep the full index.
    """
    import lm_eval.tasks as tasks_mod

    original = tasks_mod.TaskManager
    local = (
        set(original(include_path=include_path, include_defaults=False).all_tasks) if include_path else set()
    )
    if not include_path or not set(tasks) <= local:
        yield
        return

    class LocalTaskManager(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("include_path"):
                kwargs.setdefault("include_defaults", False)
            super().__init__(*args, **kwargs)

    tasks_mod.TaskManager = LocalTaskManager
    try:
        yield
    finally:
        tasks_mod.TaskManager = original


# --------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _split_losses(model: torch.nn.Module, job: Job) -> dict[str, Any]:
    from moc_experiments.experiment.protocol.heldout import KINDS, heldout_loss

    assert job.heldout is not None
    return {k: heldout_loss(model, job.heldout, k, job.val_seq_len, job.eval_batch_size) for k in KINDS}


def _ablations(model: torch.nn.Module, job: Job, seed: int) -> dict[str, Any]:
    """Validation loss (and held-out facts' loss) of the trained MoC with its memory output zeroed
    (does the model use what it reads?) and with its routed chapters' contents permuted (same router
    choices, other content: a loss that rises here was held in the bank). The capacity experiment's
    own ablations, so both experiments ablate alike."""
    from moc_experiments.experiment.capacity.metrics import chapters_shuffled, memory_off

    out = {}
    for name, ablated in (("memory_off", memory_off(model)), ("shuffled", chapters_shuffled(model, seed))):
        val, _ = pretrain_val(
            ablated, job.pretrain_dir, job.val_seq_len, job.val_windows, job.eval_batch_size
        )
        out[name] = {"val": val["loss"], "window_losses": val["window_losses"]}
        if job.heldout is not None:
            out[name]["val_split"] = _split_losses(ablated, job)
    return out


def run_job(job: Job) -> dict[str, Any]:
    """Train, then measure; returns the RUN record stored in results.json."""
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()  # restored afterwards: in-process jobs share the caller's torch
    with (
        open(job.log_path, "w", encoding="utf-8") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        try:
            return _run_job(job)
        finally:
            torch.set_num_threads(threads)


def _run_job(job: Job) -> dict[str, Any]:
    import moc
    from moc.accounting import count_flops
    from moc.config import from_dict
    from moc.train import train

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(job.threads)
    t_start = time.perf_counter()
    cfg = from_dict(job.cfg)
    torch.manual_seed(cfg.train.seed)  # the model's initial weights depend on the seed only
    model = moc.build_model(cfg)
    res = train(cfg, init_from=job.init_from, model=model)
    train_s = time.perf_counter() - t_start

    t0 = time.perf_counter()
    val, router = pretrain_val(model, job.pretrain_dir, job.val_seq_len, job.val_windows, job.eval_batch_size)
    record: dict[str, Any] = {
        "phase": job.phase,
        "seed": job.seed,
        "steps": res.step,
        "tokens": res.tokens_seen,
        "sequences": res.tokens_seen // cfg.train.seq_len,
        # Counted at the run's micro-batch (distinct chapters are projected once per micro-batch).
        "train_flops": count_flops(cfg, cfg.train.seq_len, cfg.train.micro_batch_size)["total"]
        * (res.tokens_seen // cfg.train.seq_len),
        # Measured in the last step: distinct chapters one micro-batch projected; MFU (GPU only) from the
        # expected (uniform routing) and from the measured count.
        "distinct_chapters": res.final.get("distinct_chapters"),
        "mfu": res.final.get("mfu"),
        "mfu_measured": res.final.get("mfu_measured"),
        "loss_curve": [_finite_or_none(x) for x in res.loss_history],
        "aux_curve": [_finite_or_none(x) for x in res.aux_loss_history],
        "val_curve": [[h["step"], h["val_loss"]] for h in res.val_history],
        "val": val,
        "router": router,
        "checkpoint": res.last_checkpoint,
        "trainable_params": res.n_trainable_params,
        "optimizer_state_bytes": res.optimizer_state_bytes,
    }
    if job.phase == "ift":
        record["ift_val_loss"] = res.val_history[-1]["val_loss"] if res.val_history else None
    if job.also_causal:
        causal = moc.build_model(cfg.replace({"memory.routing": "causal"}))
        causal.load_state_dict(model.state_dict())
        causal.to(next(model.parameters()).device)
        record["val_causal"], _ = pretrain_val(
            causal, job.pretrain_dir, job.val_seq_len, job.val_windows, job.eval_batch_size
        )
    if job.heldout is not None:
        record["val_split"] = _split_losses(model, job)
    if job.ablations and cfg.memory.enabled:
        record["ablations"] = _ablations(model, job, cfg.train.seed)
    if job.probes is not None:
        record["probes"] = run_probes(model, job.probes)
    record["eval_s"] = time.perf_counter() - t0
    record["train_s"] = train_s
    record["wall_s"] = time.perf_counter() - t_start
    return record
