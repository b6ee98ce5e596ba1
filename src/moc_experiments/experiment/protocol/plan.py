"""``moc-lab run NAME --plan``: what an experiment would train, without data or training.

The plan lists each model (depth, parameters, forward FLOPs per sequence at the pretraining
micro-batch, the iso-FLOP mismatch) and each phase's recipe: the same records (:func:`model_record`,
:func:`phase_record`) that ``results.json`` holds after a run (:mod:`.runner`). The iso-FLOP dense
depth comes from the batch-aware count (:func:`moc.accounting.count_flops` with ``batch_size``): MoC
projects each distinct chapter once per micro-batch, so its FLOPs per sequence, and the matching dense
depth, depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def format_plan(plan: dict[str, Any]) -> str:
    """A readable table of :func:`experiment_plan`."""
    lines = [f"experiment {plan['name']}: {plan['runs']} training runs ({plan['seeds']} seed(s))", ""]
    lines.append("models (forward FLOPs per sequence at the pretraining micro-batch):")
    for key, m in plan["models"].items():
        fwd = m["forward_flops_per_seq"] / 1e9
        extra = f", iso-FLOP mismatch {m['isoflop_mismatch']:+.2%}" if "isoflop_mismatch" in m else ""
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
