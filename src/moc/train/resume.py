"""Starting a training run from a checkpoint, and saving one: what :mod:`moc.train.loop` hands over.

- :func:`load_start`: the weights a run starts from: the newest verified checkpoint of its out_dir
  (``--resume``), or ``--init-from`` weights only; a fresh run over old checkpoints is refused unless
  ``train.overwrite``.
- :class:`TrainingState`: the optimizer, schedule, data position, RNG and :class:`Progress` a checkpoint
  carries beside the weights, loaded with every consistency check of :mod:`moc.train.checkpoint` and
  saved atomically through its :class:`~moc.train.checkpoint.CheckpointManager`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from moc.config import RunConfig
from moc.errors import one_line
from moc.train import checkpoint, parallel
from moc.train.batches import TrainBatches
from moc.train.errors import TrainError


@dataclass
class Progress:
    """Counters and histories that a checkpoint carries across resumes."""

    step: int = 0
    loss_history: list[float] = field(default_factory=list)
    aux_history: list[float] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    nan_skips: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0


def load_start(
    cfg: RunConfig,
    manager: checkpoint.CheckpointManager,
    info: parallel.DistInfo,
    model: nn.Module,
    init_from: str | Path | None,
    resume: bool,
) -> tuple[Path | None, str | None]:
    """Load the weights to start from into ``model``: (the checkpoint resumed, or None; the --init-from
    source, or None). A fresh run in an out_dir with checkpoints is refused unless train.overwrite."""
    ckpt = find_resume_checkpoint(manager, info) if resume else None
    stale = [d for _, d in manager.complete_steps()] if ckpt is None else []
    if stale and not cfg.train.overwrite:
        raise TrainError(
            f"{manager.root} already holds checkpoints (newest: {stale[-1].name}) from an earlier "
            "run; pass --resume to continue it, choose another train.out_dir, or set "
            "train.overwrite=true to delete them and start over"
        )
    initialized_from = None
    if ckpt is not None:
        checkpoint.check_config_compatible(ckpt, cfg.to_dict())
        load_weights_into(model, ckpt / checkpoint.WEIGHTS, str(ckpt))
    elif init_from is not None:
        src = checkpoint.resolve_checkpoint(init_from)
        checkpoint.check_config_compatible(src.parent if src.is_file() else src, cfg.to_dict())
        load_weights_into(model, src if src.is_file() else src / checkpoint.WEIGHTS, str(src))
        initialized_from = str(src)
    if stale and info.is_main:  # after loading --init-from, which may point into this out_dir
        manager.remove_all()
    parallel.barrier(info)
    return ckpt, initialized_from


def find_resume_checkpoint(manager: checkpoint.CheckpointManager, info: parallel.DistInfo) -> Path | None:
    """The newest checkpoint that verifies (the main process looks; every rank gets its answer), or None
    when there is none; raises when checkpoints exist but none verifies."""
    found, problem = None, None
    if info.is_main:
        manager.clean_temp()  # leftovers of a save that was killed
        # The newest checkpoint that matches the sizes/hashes recorded when it was saved; each damaged
        # newer one is named on stderr and skipped.
        latest = manager.latest_verified(warn=lambda m: print(f"moc train: {m}", file=sys.stderr))
        found = str(latest) if latest else None
        if latest is None and manager.latest() is not None:
            problem = (
                f"no checkpoint in {manager.root} verifies (see above); restore the damaged files, "
                "or start over with train.overwrite=true or another train.out_dir"
            )
    found, problem = parallel.broadcast_object((found, problem), info)  # every rank raises together
    if problem:
        raise checkpoint.CheckpointError(problem)
    if found is None and info.is_main:
        print(f"moc train: --resume found no complete checkpoint in {manager.root}; starting fresh")
    return Path(found) if found else None


def load_weights_into(model: nn.Module, path: Path, source: str) -> None:
    """Load the weights file ``path`` into ``model`` after checking every tensor fits (named ``source``)."""
    if not path.is_file():
        raise checkpoint.CheckpointError(f"{path} does not exist")
    state = checkpoint.load_weights(path)
    checkpoint.check_state_fits(model.state_dict(), state, source)
    model.load_state_dict(state, strict=True)


@dataclass
class TrainingState:
    """What a run's checkpoint holds beside the weights, and the objects it is restored into."""

    cfg: RunConfig
    info: parallel.DistInfo
    model: nn.Module  # unwrapped (full state dicts are gathered from it under FSDP)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    manager: checkpoint.CheckpointManager
    aliases: dict[str, str]  # tied tensors, stored once (``checkpoint.shared_aliases``)

    def load(self, ckpt: Path) -> Progress:
        """Restore the optimizer, schedule, data position and RNG from ``ckpt``; return its progress."""
        # The trainer state first: its step is what the folder and the optimizer are checked against.
        ts = checkpoint.load_torch_file(ckpt / checkpoint.TRAINER_STATE)
        try:
            progress = Progress(**ts["progress"])
        except (KeyError, TypeError) as e:
            raise _not_a_trainer_state(ckpt, e) from None
        checkpoint.check_trainer_state_step(ckpt, progress.step)
        osd = checkpoint.load_torch_file(ckpt / checkpoint.OPTIMIZER)
        shapes = {n: tuple(q.shape) for n, q in self.model.named_parameters(remove_duplicate=False)}
        sizes = [len(g["params"]) for g in self.opt.param_groups]
        checkpoint.check_optimizer_layout(ckpt / checkpoint.OPTIMIZER, osd)
        saved = [g.get("category") for g in osd["param_groups"]]
        ours = [g.get("category") for g in self.opt.param_groups]
        if saved != ours:  # the state would load by parameter name, but the schedule's groups would not
            raise checkpoint.CheckpointError(
                f"the optimizer state in {ckpt} does not fit this run (its parameter groups {saved}, this "
                f"run's {ours}); was train.freeze_bank or the set of trainable parameters changed? Start a "
                "new out_dir or use --init-from for weights only"
            )
        checkpoint.check_optimizer_fits(
            ckpt / checkpoint.OPTIMIZER, osd, shapes, sizes, progress.step - progress.nan_skips
        )
        try:
            parallel.load_full_optimizer_state(self.model, self.opt, osd)
        except (KeyError, ValueError, RuntimeError) as e:
            raise checkpoint.CheckpointError(
                f"the optimizer state in {ckpt} does not fit this run ({one_line(e)}); start a new out_dir "
                "or use --init-from for weights only"
            ) from None
        try:
            self.sched.load_state_dict(ts["scheduler"])
            self.batches.sampler.load_state_dict(ts["sampler"])
            checkpoint.restore_rng(ts["rng"])
        except ValueError as e:  # the data or train.seq_len changed: the saved data position is meaningless
            raise checkpoint.CheckpointError(
                f"cannot resume from {ckpt}: {e}; resume with the original data and train.seq_len, or start "
                "a new out_dir (--init-from CHECKPOINT keeps the weights)"
            ) from None
        except (KeyError, TypeError) as e:
            raise _not_a_trainer_state(ckpt, e) from None
        self._say_what_differs(ts)
        return progress

    def _say_what_differs(self, ts: dict[str, Any]) -> None:
        """Name what makes this resume differ from an uninterrupted run (thread count, global batch)."""
        threads, info = ts.get("cpu_threads"), self.info
        cpu = info.device.type == "cpu"
        if cpu and threads and threads != torch.get_num_threads() and info.is_main:
            print(
                f"moc train: the checkpoint was written with {threads} CPU threads, this run uses "
                f"{torch.get_num_threads()}; losses will differ from an uninterrupted run in the last digits "
                f"(set OMP_NUM_THREADS={threads} for a bit-identical resume)",
                file=sys.stderr,
            )
        if ts.get("global_batch") != self.batches.global_batch and info.is_main:
            print(
                f"moc train: the checkpoint used a global batch of {ts.get('global_batch')} windows, this "
                f"run uses {self.batches.global_batch}; continuing from the same data position"
            )

    def save(self, step: int, progress: Progress, metrics: dict[str, Any]) -> None:
        """Write the checkpoint of ``step`` (every rank calls this: FSDP gathers the full state)."""
        msd = parallel.full_model_state(self.model)  # collectives under FSDP: every rank must call these
        osd = parallel.full_optimizer_state(self.model, self.opt)
        if self.info.is_main:
            ts = {
                "progress": asdict(progress),
                "scheduler": self.sched.state_dict(),
                "sampler": self.batches.sampler.state_dict(),
                "rng": checkpoint.capture_rng(),
                "world_size": self.info.world_size,
                "global_batch": self.batches.global_batch,
                "cpu_threads": torch.get_num_threads(),  # CPU losses repeat exactly only at the same count
            }

            def write(d: Path) -> None:
                checkpoint.save_weights(msd, d / checkpoint.WEIGHTS, self.aliases)
                torch.save(osd, d / checkpoint.OPTIMIZER)
                torch.save(ts, d / checkpoint.TRAINER_STATE)
                (d / checkpoint.CONFIG).write_text(self.cfg.to_yaml())
                (d / checkpoint.METRICS).write_text(json.dumps(metrics, default=str))
                checkpoint.copy_tokenizer(self.cfg, d)  # generate/export then work from any directory

            self.manager.save(step, write)
        parallel.barrier(self.info)


def _not_a_trainer_state(ckpt: Path, e: Exception) -> checkpoint.CheckpointError:
    return checkpoint.CheckpointError(
        f"{ckpt / checkpoint.TRAINER_STATE} is not a moc trainer state (missing or bad {e}); "
        "resume from another checkpoint or start a new out_dir"
    )
