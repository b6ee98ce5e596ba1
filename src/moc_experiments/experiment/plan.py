"""``moc-lab run NAME --plan``: what an experiment would train, without data or training.

The plan lists each model (depth, parameters, forward FLOPs per sequence at the pretraining
micro-batch, the iso-FLOP mismatch) and each phase's recipe. The iso-FLOP dense depth comes from the
batch-aware count (:func:`moc.accounting.count_flops` with ``batch_size``): MoC projects each distinct
chapter once per micro-batch, so its FLOPs per sequence, and the matching dense depth, depend on it.
"""

from __future__ import annotations

from typing import Any

from moc_experiments.experiment.config import ExperimentConfig
from moc_experiments.experiment.models import ift_runs, model_specs, phase_micro_batch, phase_seq_len


def experiment_plan(exp: ExperimentConfig) -> dict[str, Any]:
    """The models and phases of ``exp`` as a dict (vocabulary: ``data.vocab_size``)."""
    from moc_experiments.experiment.runner import _model_record, _phase_record

    specs = model_specs(exp, exp.data.vocab_size)
    seq_len, micro = phase_seq_len(exp, exp.pretrain), phase_micro_batch(exp, exp.pretrain)
    phases = {"pretrain": _phase_record(exp, "pretrain", specs)}
    if exp.ift.steps > 0:
        phases["ift"] = _phase_record(exp, "ift", specs)
    for name, ph in phases.items():
        ph["epochs"] = getattr(exp, name).epochs  # when set, the steps come from the data size
    n_runs = len(specs) + len(ift_runs(exp, specs))
    return {
        "name": exp.name,
        "vocab_size": exp.data.vocab_size,
        "models": {k: _model_record(s, seq_len, micro) for k, s in specs.items()},
        "phases": phases,
        "runs": n_runs * exp.seeds,
        "seeds": exp.seeds,
    }


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
