"""``moc-lab run NAME --plan``: what an experiment would train, without data or training.

The plan lists each model (depth, parameters, forward FLOPs per sequence at the pretraining
micro-batch, the iso-FLOP mismatch) and each phase's recipe: the same records (:func:`model_record`,
:func:`phase_record`) that ``results.json`` holds after a run (:mod:`.runner`). The iso-FLOP dense
depth comes from the batch-aware count (:func:`moc.accounting.count_flops` with ``batch_size``): MoC
projects each distinct chapter once per micro-batch, so its FLOPs per sequence, and the matching dense
depth, depend on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from moc.config import RunConfig
from moc_experiments.experiment.protocol.config import ExperimentConfig
from moc_experiments.experiment.protocol.models import (
    ModelSpec,
    ift_runs,
    model_specs,
    phase_config,
    phase_micro_batch,
    phase_seq_len,
)


def experiment_plan(exp: ExperimentConfig) -> dict[str, Any]:
    """The models and phases of ``exp`` as a dict (vocabulary: ``data.vocab_size``)."""
    specs = model_specs(exp, exp.data.vocab_size)
    seq_len, micro = phase_seq_len(exp, exp.pretrain), phase_micro_batch(exp, exp.pretrain)
    phases = {"pretrain": phase_record(exp, "pretrain", specs)}
    if exp.ift.steps > 0:
        phases["ift"] = phase_record(exp, "ift", specs)
    for name, ph in phases.items():
        ph["epochs"] = getattr(exp, name).epochs  # when set, the steps come from the data size
    n_runs = len(specs) + len(ift_runs(exp, specs))
    return {
        "name": exp.name,
        "vocab_size": exp.data.vocab_size,
        "models": {k: model_record(s, seq_len, micro) for k, s in specs.items()},
        "phases": phases,
        "runs": n_runs * exp.seeds,
        "seeds": exp.seeds,
    }


def step_seconds(cfg: RunConfig, steps: int, threads: int) -> float:
    """Seconds per optimizer step of ``cfg``'s training recipe on this machine: ``steps`` steps timed
    after 2 untimed ones (which compile, with ``train.compile``), on random tokens of the run's shape
    (micro-batch x sequence length x accumulation). Random tokens route like trained ones cost-wise:
    the read's cost depends on the shapes and top-k, not on which chapters are picked."""
    import torch

    import moc
    from moc.train.optim import build_optimizer

    t = cfg.train
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = moc.build_model(cfg)
        forward = torch.compile(model) if t.compile else model
        opt = build_optimizer(model, t)
        ids = torch.randint(0, cfg.model.vocab_size, (t.micro_batch_size, t.seq_len + 1))
        model.train()
        t0 = 0.0
        for i in range(steps + 2):
            if i == 2:
                t0 = time.perf_counter()
            for _ in range(t.grad_accum_steps):
                out = forward(ids[:, :-1], labels=ids[:, 1:])
                loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / steps
    finally:
        torch.set_num_threads(old)


def estimated_hours(exp: ExperimentConfig) -> list[str]:
    """Lines estimating the pretraining time of ``exp`` on this machine from ``plan_steps`` steps of each
    model timed here now (evaluation, probes and IFT add to each run; records already kept save runs)."""
    from moc_experiments.experiment.protocol.runner import workers_and_threads

    specs = model_specs(exp, exp.data.vocab_size)
    workers, threads = workers_and_threads(exp)
    lines = [
        f"{'model':<16} {'LR':>8} {'ms/step':>8}  "
        f"(timed here now, {exp.plan_steps} steps, {threads} thread(s))"
    ]
    core_s, per_step = 0.0, {}
    for key, spec in specs.items():
        cfg = phase_config(spec, exp, "pretrain", seed=0, out_dir=Path("."), prepared_dir=Path("."))
        per_step[key] = step_seconds(cfg, exp.plan_steps, threads)
        lines.append(f"{key:<16} {cfg.train.lr:>8.2g} {1e3 * per_step[key]:>8.1f}")
        core_s += per_step[key] * cfg.train.max_steps * exp.seeds
    if exp.pretrain.epochs is not None:
        lines.append(
            "pretrain.epochs decides the steps from the data: multiply ms/step by the steps it gives"
        )
        return lines
    lines.append(
        f"estimated pretraining time: {core_s / 3600:.2f} h of {threads}-thread workers, ~"
        f"{core_s / 3600 / workers:.2f} h on {workers} worker(s) for {exp.seeds} seed(s) "
        "(training steps only; measurement adds a little to each run"
        + (f"; runs recorded in {exp.records} are not trained again" if exp.records else "")
        + ")"
    )
    return lines


def model_record(spec: ModelSpec, seq_len: int, batch_size: int = 1) -> dict[str, Any]:
    """A model as ``results.json`` and the plan describe it: its shape, parameters, FLOPs per sequence
    at ``seq_len`` and micro-batch ``batch_size``, its architecture and, for MoC, its routing."""
    from moc.accounting import count_flops, count_params

    fl = count_flops(spec.cfg, seq_len, batch_size)  # per sequence at the pretraining micro-batch
    rec: dict[str, Any] = {
        "label": spec.label,
        "role": spec.role,
        "n_layers": spec.cfg.model.n_layers,
        "d_model": spec.cfg.model.d_model,
        "params": count_params(spec.cfg),
        "seq_len": seq_len,
        "micro_batch_size": batch_size,
        "forward_flops_per_seq": fl["forward"],
        "train_flops_per_seq": fl["total"],
        "architecture": {"model": spec.cfg.to_dict()["model"], "memory": spec.cfg.to_dict()["memory"]},
    }
    if spec.has_memory:
        rec["routing"] = spec.cfg.memory.routing
        rec["memory_layers"] = spec.cfg.memory_layers
    if spec.isoflop_mismatch is not None:
        rec["isoflop_mismatch"] = spec.isoflop_mismatch
    return rec


def phase_record(exp: ExperimentConfig, phase: str, specs: dict[str, ModelSpec]) -> dict[str, Any]:
    """A phase's recipe (``pretrain`` or ``ift``) as MoC trains it: steps, batch, tokens, learning rates,
    schedule; for IFT its variants."""
    cfg = phase_config(specs["moc"], exp, phase, seed=0, out_dir=Path("."), prepared_dir=Path("."))
    t = cfg.train
    batch = t.micro_batch_size * t.grad_accum_steps
    rec = {
        "steps": t.max_steps,
        "batch": batch,
        "seq_len": t.seq_len,
        "tokens": t.max_steps * batch * t.seq_len,
        "lr": t.lr,
        "memory_lr": t.memory_lr,
        "bank_lr": t.bank_lr,
        "schedule": t.schedule,
        "warmup_steps": t.warmup_steps,
        "weight_decay": t.weight_decay,
        "grad_clip": t.grad_clip,
    }
    if phase == "ift":
        rec["variants"] = list(exp.ift.variants)
    return rec


def plan_text(exp: ExperimentConfig) -> str:
    """``--plan``: the models and phases, then (``plan_steps`` > 0) the estimated hours on this machine."""
    text = format_plan(experiment_plan(exp))
    if exp.plan_steps > 0:
        text += "\n\n" + "\n".join(estimated_hours(exp))
    return text


def format_plan(plan: dict[str, Any]) -> str:
    """A readable table of :func:`experiment_plan`."""
    lines = [f"experiment {plan['name']}: {plan['runs']} training runs ({plan['seeds']} seed(s))", ""]
    lines.append("models (forward FLOPs per sequence at the pretraining micro-batch):")
    for key, m in plan["models"].items():
        fwd = m["forward_flops_per_seq"] / 1e9
        what = "inference-FLOP" if key == "dense_wide" else "iso-FLOP"
        extra = f", {what} mismatch {m['isoflop_mismatch']:+.2%}" if "isoflop_mismatch" in m else ""
        lines.append(
            f"  {key:<16} {m['n_layers']:>3} layers  {m['params']['total']:>13,} params  "
            f"{fwd:>10,.1f} GFLOP/seq (seq_len {m['seq_len']}, micro-batch {m['micro_batch_size']}){extra}"
        )
    lines.append("")
    lines.append("phases:")
    for name, ph in plan["phases"].items():
        if ph.get("epochs") is not None:
            size = f"{ph['epochs']:g} epochs of the packed data x {ph['batch']} x {ph['seq_len']} tokens"
        else:
            size = f"{ph['steps']:>6} steps x {ph['batch']} x {ph['seq_len']} = {ph['tokens']:,} tokens"
        lines.append(
            f"  {name:<9} {size}; lr {ph['lr']:.3g}, {ph['schedule']} schedule, {ph['warmup_steps']} warmup "
            f"steps, weight decay {ph['weight_decay']}"
        )
    return "\n".join(lines)
