"""The models an experiment compares and the per-phase training configs they share.

- ``moc``: the MoC model of the experiment (``moc`` section; causal routing in our presets).
- ``dense_backbone``: the same backbone with the memory removed.
- ``dense_isoflop``: a dense model of the same width whose depth (an integer) best matches MoC's
  forward FLOPs (:func:`moc.accounting.isoflop_config`); its FLOP mismatch is reported.
- ``dense_wide`` (opt-in): a dense model of the backbone's depth, wider, whose inference FLOPs per
  token (the bank's K/V cached, as a deployed MoC computes them once) best match MoC's.
- ``moc_ROUTING`` for each of ``also_routings``: the same MoC with another routing mode, compared like it.
- ``moc_sequence`` (or ``moc_causal`` when the main model uses the paper's sequence routing): the leak
  ablation, the same MoC with the other routing mode; pretrained only.

Every model trains with one recipe: the MoC config's ``train`` section plus the phase settings. Only the
memory-specific learning rates differ, as the paper prescribes (they have no effect on dense models),
and the pretraining LR where ``lrs`` gives a model its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moc.config import RunConfig
from moc_experiments.experiment.protocol.config import ExperimentConfig, PhaseSettings


@dataclass(frozen=True)
class ModelSpec:
    """One compared model. ``cfg`` carries the architecture (its train section is the shared recipe)."""

    key: str
    label: str
    role: str  # "moc" | "baseline" | "leak_ablation"
    cfg: RunConfig
    isoflop_mismatch: float | None = None  # (dense - moc) / moc forward FLOPs, for dense_isoflop

    @property
    def has_memory(self) -> bool:
        return self.cfg.memory.enabled


def phase_seq_len(exp: ExperimentConfig, phase: PhaseSettings) -> int:
    return phase.seq_len or exp.moc_config.train.seq_len


def phase_micro_batch(exp: ExperimentConfig, phase: PhaseSettings) -> int:
    """Sequences per micro-batch of a phase (what the FLOP counts of its runs are taken at)."""
    return phase.micro_batch_size or exp.moc_config.train.micro_batch_size


def _routing_label(routing: str) -> str:
    return {
        "causal": "causal routing",
        "sequence": "sequence routing, sees the future",
        "token": "token routing",
    }[routing]


def model_specs(exp: ExperimentConfig, vocab_size: int | None = None) -> dict[str, ModelSpec]:
    """The models of ``exp`` by key, in reporting order. ``vocab_size`` replaces moc.model.vocab_size
    (the experiment's tokenizer decides it)."""
    from moc.accounting import isoflop

    base = exp.moc_config
    if vocab_size is not None:
        base = base.replace({"model.vocab_size": vocab_size})
    routing = base.memory.routing
    specs = {
        "moc": ModelSpec("moc", f"MoC ({_routing_label(routing)})", "moc", base.replace({"name": "moc"}))
    }
    dense = {"memory.enabled": False, "memory.layers": []}
    if "dense_backbone" in exp.baselines:
        cfg = base.replace({**dense, "name": "dense_backbone"})
        specs["dense_backbone"] = ModelSpec(
            "dense_backbone", f"Dense backbone ({cfg.model.n_layers} layers)", "baseline", cfg
        )
    if "dense_isoflop" in exp.baselines:
        # Batch-aware: MoC projects each distinct chapter once per micro-batch (moc.accounting).
        iso = isoflop(base, phase_seq_len(exp, exp.pretrain), phase_micro_batch(exp, exp.pretrain))
        cfg = base.replace({**dense, "model.n_layers": iso["dense_layers"], "name": "dense_isoflop"})
        specs["dense_isoflop"] = ModelSpec(
            "dense_isoflop",
            f"Dense iso-FLOP ({iso['dense_layers']} layers, {100 * iso['mismatch']:+.1f}% FLOPs)",
            "baseline",
            cfg,
            isoflop_mismatch=float(iso["mismatch"]),
        )
    if "dense_wide" in exp.baselines:
        cfg, mismatch = wide_dense(
            base, phase_seq_len(exp, exp.pretrain), phase_micro_batch(exp, exp.pretrain)
        )
        specs["dense_wide"] = ModelSpec(
            "dense_wide",
            f"Dense wide (d={cfg.model.d_model}, {100 * mismatch:+.1f}% inference FLOPs)",
            "baseline",
            cfg.replace({"name": "dense_wide"}),
            isoflop_mismatch=mismatch,
        )
    for other in exp.also_routings:
        key = f"moc_{other}"
        specs[key] = ModelSpec(
            key, f"MoC ({_routing_label(other)})", "moc", base.replace({"memory.routing": other, "name": key})
        )
    if exp.leak_ablation:
        other = "sequence" if routing != "sequence" else "causal"
        key = f"moc_{other}"
        specs[key] = ModelSpec(
            key,
            f"MoC ({_routing_label(other)})",
            "leak_ablation",
            base.replace({"memory.routing": other, "name": key}),
        )
    return specs


def inference_flops(cfg: RunConfig, seq_len: int, micro_batch: int) -> float:
    """Forward FLOPs per token with the bank's K/V cached (the capacity experiment's count)."""
    from moc_experiments.experiment.capacity.models import flops_per_token

    return flops_per_token(cfg, seq_len, micro_batch)["inference"]


def wide_dense(moc: RunConfig, seq_len: int, micro_batch: int) -> tuple[RunConfig, float]:
    """The dense model of ``moc``'s depth whose inference FLOPs per token best match ``moc``'s, and its
    mismatch ``(dense - moc) / moc``. Width grows in steps of 2 x n_heads (heads keep an even size, as
    RoPE needs) with d_ff in the backbone's ratio rounded to a multiple of 8; ties go to the narrower."""
    m = moc.model
    target = inference_flops(moc, seq_len, micro_batch)
    dense = moc.replace({"memory.enabled": False, "memory.layers": []})
    step = 2 * m.n_heads
    best: tuple[float, RunConfig] | None = None
    for d in range(m.d_model, 8 * m.d_model + 1, step):
        d_ff = max(8, round(m.d_ff * d / m.d_model / 8) * 8)
        cfg = dense.replace({"model.d_model": d, "model.d_ff": d_ff})
        gap = inference_flops(cfg, seq_len, micro_batch) / target - 1
        if best is None or abs(gap) < abs(best[0]):
            best = (gap, cfg)
        if gap > 0:  # FLOPs grow with width: nothing wider comes closer
            break
    assert best is not None
    return best[1], float(best[0])


def pretrain_lr(exp: ExperimentConfig, key: str) -> float:
    """A model's pretraining backbone LR: its own (``lrs``) or the shared ``pretrain.lr``."""
    return exp.lrs.get(key, exp.pretrain.lr)


def ift_runs(exp: ExperimentConfig, specs: dict[str, ModelSpec]) -> dict[str, tuple[str, str | None]]:
    """IFT run key -> (pretrained model key, MoC bank treatment or None for dense models)."""
    if exp.ift.steps == 0:
        return {}
    runs: dict[str, tuple[str, str | None]] = {f"moc_{v}": ("moc", v) for v in exp.ift.variants}
    for key, spec in specs.items():
        if spec.role == "baseline":
            runs[key] = (key, None)
    return runs


def ift_label(specs: dict[str, ModelSpec], base_key: str, variant: str | None) -> str:
    if variant is None:
        return specs[base_key].label
    what = {"frozen": "bank frozen", "low_lr": "bank at low LR"}[variant]
    return f"{specs[base_key].label.split(' (')[0]}, IFT {what}"


def phase_config(
    spec: ModelSpec,
    exp: ExperimentConfig,
    phase: str,
    *,
    seed: int,
    out_dir: Path,
    prepared_dir: Path,
    variant: str | None = None,
) -> RunConfig:
    """The full training config of one run: the model, the shared recipe and the phase's settings.

    ``variant`` (IFT of a MoC model): ``frozen`` freezes the bank for real, ``low_lr`` trains it at
    ``ift.bank_lr_scale * lr``. Memory layers train at ``memory_lr_scale * lr`` in both.
    """
    ph: PhaseSettings = exp.pretrain if phase == "pretrain" else exp.ift
    lr = pretrain_lr(exp, spec.key) if phase == "pretrain" else ph.lr
    t = spec.cfg.train
    o: dict = {
        "train.seed": seed,
        "train.out_dir": str(out_dir),
        "train.max_steps": ph.steps,
        "train.epochs": ph.epochs,
        "train.lr": lr,
        "train.memory_lr": lr * ph.memory_lr_scale,
        "train.bank_lr": lr * ph.bank_lr_scale,
        "train.freeze_bank": variant == "frozen",
        "train.schedule": ph.schedule,
        "train.warmup_steps": ph.warmup_steps,
        "train.decay_start": ph.decay_start,
        "train.min_lr_ratio": ph.min_lr_ratio,
        "train.seq_len": ph.seq_len or t.seq_len,
        "train.micro_batch_size": ph.micro_batch_size or t.micro_batch_size,
        "train.grad_accum_steps": ph.grad_accum_steps or t.grad_accum_steps,
        "train.eval_every": ph.eval_every,
        # Checkpoint only at the end (the next phase starts from it). A rerun of the experiment starts
        # every run afresh (the experiment owns these folders), so old checkpoints are replaced.
        "train.save_every": 0,
        "train.keep_last": 1,
        "train.overwrite": True,
        "train.progress": False,
        "train.tensorboard": False,
        "train.wandb": False,
        "data.prepared_dir": str(prepared_dir),
        "data.train": [],
        "name": f"{spec.key}-{phase}" + (f"-{variant}" if variant else ""),
    }
    return spec.cfg.replace(o)


def sequences_per_run(cfg: RunConfig) -> int:
    """Training sequences a run consumes: steps x global batch (one process)."""
    t = cfg.train
    return t.max_steps * t.micro_batch_size * t.grad_accum_steps
