"""The training loop behind ``moc pretrain`` / ``moc ift``: :func:`train` runs one job in-process.

One optimizer step = ``grad_accum_steps`` micro-batches per process. The LM loss of a step is
token-weighted over the whole global batch (sum of token losses / number of target tokens, across
micro-batches and processes), so the step's gradient does not depend on how the batch is split; the
router aux loss (``out.aux_loss``) is averaged over micro-batches and added.

The loop hands the rest to its neighbours: starting from and saving a checkpoint to
:mod:`moc.train.resume` (on top of :mod:`moc.train.checkpoint`), the metrics row and MFU to
:mod:`moc.train.metrics` (written by :mod:`moc.train.logger`).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import moc
from moc.config import RunConfig, load_config, validate_train
from moc.train import batches, checkpoint, parallel
from moc.train.allocator import retain_freed_memory_once
from moc.train.errors import DivergenceError, TrainError, TrainingInterrupted
from moc.train.logger import RunLogger
from moc.train.metrics import StepMetrics, distinct_chapters
from moc.train.optim import apply_freezing, build_optimizer, group_lrs, optimizer_state_bytes
from moc.train.resume import Progress, TrainingState, load_start
from moc.train.schedule import lr_multiplier


@dataclass
class TrainResult:
    """What a run produced. Histories cover the whole run, including steps before a resume."""

    out_dir: str
    step: int  # optimizer steps completed
    loss_history: list[float]  # LM loss of steps 1..step (index i is step i + 1; NaN where skipped)
    aux_loss_history: list[float]  # router aux loss per step
    val_history: list[dict[str, float]]  # {"step", "val_loss", "val_ppl"} per evaluation
    final: dict[str, Any]  # the last train row (loss, lr_*, grad_norm, ...) and the last eval
    checkpoints: list[str] = field(default_factory=list)  # kept checkpoint dirs, oldest first
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None  # lowest val_loss among kept checkpoints
    resumed_from: str | None = None
    initialized_from: str | None = None
    n_params: int = 0
    n_trainable_params: int = 0
    optimizer_state_bytes: int = 0  # Adam state on this process (frozen parameters have none)
    nan_skips: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0  # training time (steps only), summed over resumes


def train(
    cfg: RunConfig | str | dict,
    *,
    init_from: str | Path | None = None,
    resume: bool = False,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train ``cfg`` (a config, preset name or YAML path) and return the run's metrics.

    - ``resume``: continue exactly from the newest complete checkpoint in ``train.out_dir`` (weights,
      optimizer, schedule, RNG and data position), or start fresh if there is none.
    - ``init_from``: start from these weights only (a checkpoint dir, a run's out_dir or a
      .safetensors file; used for IFT). Its model/memory config must match ``cfg``. A checkpoint in
      ``out_dir`` found by ``resume`` takes precedence.
    - ``model``: train this module instead of ``moc.build_model(cfg)`` (it must match ``cfg``).

    Under ``torchrun`` every process calls this; the process group is created and destroyed here.
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    info = parallel.init_distributed()
    try:
        return _Run(cfg, info, model).execute(init_from=init_from, resume=resume)
    finally:
        parallel.shutdown(info)


class _Run:
    """One training job: setup (data, model, resume/init, wrapping, optimizer), the loop, the result."""

    def __init__(self, cfg: RunConfig, info: parallel.DistInfo, model: nn.Module | None) -> None:
        validate_train(cfg)  # before any work
        self.cfg, self.t, self.info = cfg, cfg.train, info
        self.out_dir = Path(self.t.out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TrainError(f"train.out_dir={self.out_dir} is a file, not a folder; choose another out_dir")
        self.manager = checkpoint.CheckpointManager(self.out_dir / "checkpoints", self.t.keep_last)
        _seed_everything(self.t.seed)
        docs = cfg.data.separate_documents
        self.train_ds = batches.windows(batches.open_split(cfg, "train", required=True), self.t.seq_len, docs)
        if len(self.train_ds) == 0:
            raise TrainError(f"no windows of train.seq_len={self.t.seq_len} in {cfg.data.prepared_dir}")
        if self.t.micro_batch_size * info.world_size > len(self.train_ds):  # would repeat windows per batch
            raise TrainError(
                f"train.micro_batch_size={self.t.micro_batch_size} x {info.world_size} process(es) is more "
                f"than the {len(self.train_ds)} training windows of train.seq_len={self.t.seq_len} in "
                f"{cfg.data.prepared_dir}; lower train.micro_batch_size (or train.seq_len), or add data"
            )
        if self.t.epochs is not None:  # train.epochs: max_steps from the number of packed windows
            global_batch = self.t.micro_batch_size * self.t.grad_accum_steps * info.world_size
            steps = batches.steps_for_epochs(len(self.train_ds), self.t.epochs, global_batch)
            self.cfg = cfg = cfg.replace({"train.max_steps": steps})
            self.t = cfg.train
            validate_train(cfg)
        val, self.no_val_reason = batches.open_val_split(cfg)
        self.val_ds = batches.windows(val, self.t.seq_len, docs) if val is not None else None
        self.model = model if model is not None else moc.build_model(cfg)
        self.aliases = checkpoint.shared_aliases(self.model)  # before wrapping changes the parameters
        self.autocast_dtype = _autocast_dtype(self.t.dtype, info.device)
        if self.t.retain_freed_memory and torch.device(info.device).type == "cpu":
            retain_freed_memory_once()
        self.metrics = StepMetrics(cfg, info.device, info.world_size)
        self.progress = Progress()
        self.distinct_chapters = 0.0  # measured in each step (see _distinct_chapters)

    # --- setup ------------------------------------------------------------------------------------

    def execute(self, init_from: str | Path | None, resume: bool) -> TrainResult:
        ckpt, initialized_from = load_start(self.cfg, self.manager, self.info, self.model, init_from, resume)
        frozen = self._build_training(ckpt)
        self.log = RunLogger(self.cfg, self.out_dir, self.info.is_main, self.progress.step)
        try:
            if self.info.is_main:
                (self.out_dir / "config.yaml").write_text(self.cfg.to_yaml())
            start = (
                f"resuming from {ckpt} at step {self.progress.step}"
                if ckpt
                else f"initialized from {initialized_from}"
                if initialized_from
                else "from scratch"
            )
            self.log.message(self._start_message(frozen, start))
            with self._stop_on_signals():
                final = self._loop()
                # A signal during the last step has nothing left to stop, but its sender asked to stop:
                # returning normally would let a caller (the lab's next job, a script) run on.
                if self._stop_agreed():
                    self._stopped_in_last_step()
        finally:
            self.log.close()
        return self._result(final, ckpt, initialized_from)

    def _stopped_in_last_step(self) -> None:
        step = self.progress.step
        own = getattr(self, "_stop_signal", None)
        name = signal.Signals(own).name if own else "a signal to another process"
        ckpt = self.manager.root / checkpoint.step_dir_name(step)
        raise TrainingInterrupted(
            f"stopped by {name} during the last step ({step}); the run is complete and its checkpoint "
            f"is saved in {ckpt}",
            step=step,
            checkpoint=str(ckpt),
        )

    def _build_training(self, ckpt: Path | None) -> list[str]:
        """Freeze, checkpoint, move, compile and wrap the model; build optimizer, schedule and batches;
        restore their state from ``ckpt``. Returns the frozen bank tensors' names."""
        t, info, model = self.t, self.info, self.model
        frozen = apply_freezing(model, t)
        if t.activation_checkpointing:
            if hasattr(model, "gradient_checkpointing"):
                model.gradient_checkpointing = True  # MoCModel checkpoints each block itself
            else:
                parallel.apply_activation_checkpointing(model)
        model.to(info.device)
        if t.compile:
            parallel.compile_blocks(model)
        self.wrapped = parallel.wrap_model(model, t.parallel, info)
        self.opt = build_optimizer(model, t)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_multiplier(t))
        self.batches = batches.TrainBatches(self.train_ds, self.cfg, info)
        self.state = TrainingState(
            self.cfg, info, model, self.opt, self.sched, self.batches, self.manager, self.aliases
        )
        if ckpt is not None:
            self.progress = self.state.load(ckpt)
        return frozen

    def _param_counts(self) -> tuple[int, int]:
        """(all parameters, trainable parameters)."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    def _start_message(self, frozen: list[str], start: str) -> str:
        n_params, n_train = self._param_counts()
        return (
            f"moc train: {self.cfg.name}, {n_params:,} parameters ({n_train:,} trainable"
            f"{f', {len(frozen)} frozen bank tensors' if frozen else ''}), {self.info.world_size} "
            f"process(es) on {self.info.device}, global batch {self.batches.global_batch} x {self.t.seq_len} "
            f"tokens, {start}"
        )

    def _result(self, final: dict[str, Any], ckpt: Path | None, initialized_from: str | None) -> TrainResult:
        latest, best = self.manager.latest(), self.manager.best()
        p = self.progress
        n_params, n_train = self._param_counts()
        return TrainResult(
            out_dir=str(self.out_dir),
            step=p.step,
            loss_history=list(p.loss_history),
            aux_loss_history=list(p.aux_history),
            val_history=list(p.val_history),
            final=final,
            checkpoints=[str(d) for _, d in self.manager.complete_steps()],
            last_checkpoint=str(latest) if latest else None,
            best_checkpoint=str(best) if best else None,
            resumed_from=str(ckpt) if ckpt else None,
            initialized_from=initialized_from,
            n_params=n_params,
            n_trainable_params=n_train,
            optimizer_state_bytes=optimizer_state_bytes(self.opt),
            nan_skips=p.nan_skips,
            tokens_seen=p.tokens_seen,
            elapsed_s=p.elapsed_s,
        )

    # --- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> dict[str, Any]:
        t, p = self.t, self.progress
        val_batches = None
        if self.val_ds is not None and t.eval_batches > 0:
            val_batches = batches.eval_batches(self.val_ds, self.cfg, self.info)
        elif t.eval_batches <= 0:
            self.log.message("train.eval_batches=0: skipping evaluation")
        else:  # say why: "no validation split" misleads when the split exists but is too short
            self.log.message(f"skipping evaluation: {self.no_val_reason}")
        final: dict[str, Any] = {}
        if p.loss_history:  # resuming a run that may already be finished
            final = {"step": p.step, "loss": p.loss_history[-1]}
            final.update({k: v for k, v in (p.val_history[-1:] or [{}])[0].items() if k != "step"})
        tokens_per_step = self.batches.global_batch * t.seq_len
        window_tokens, window_time = 0, 0.0
        while p.step < t.max_steps:
            t0 = time.perf_counter()
            loss, aux, gnorm = self._train_step(self.batches.next_step())
            step = p.step + 1
            if math.isfinite(loss) and math.isfinite(aux) and math.isfinite(gnorm):
                self.opt.step()
            else:
                self._non_finite(step, loss, aux, gnorm)
            lrs = group_lrs(self.opt)  # the learning rates this step used
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            dt = time.perf_counter() - t0
            p.step, p.tokens_seen, p.elapsed_s = step, p.tokens_seen + tokens_per_step, p.elapsed_s + dt
            p.loss_history.append(loss)
            p.aux_history.append(aux)

            window_tokens, window_time = window_tokens + tokens_per_step, window_time + dt
            tok_s, chapters = window_tokens / max(window_time, 1e-9), self.distinct_chapters
            row, postfix = self.metrics.row(step, loss, aux, gnorm, lrs, tok_s, p.tokens_seen, chapters)
            self.log.progress(step, postfix)
            final.update({k: v for k, v in row.items() if k != "kind"})
            if step % max(t.log_every, 1) == 0 or step in (1, t.max_steps):
                self.log.log(row)
                window_tokens, window_time = 0, 0.0
            if step == 1:
                mib = optimizer_state_bytes(self.opt) / 2**20
                self.log.message(f"optimizer state: {mib:.1f} MiB on this process")

            last = step == t.max_steps
            evaluated = False
            if val_batches is not None and ((t.eval_every > 0 and step % t.eval_every == 0) or last):
                final.update(self._eval_and_log(step, val_batches))
                evaluated = True
            if (t.save_every > 0 and step % t.save_every == 0) or last:
                metrics = {"step": step, "loss": loss, "aux_loss": aux}
                if evaluated:
                    metrics.update(p.val_history[-1])
                self.state.save(step, p, metrics)
            if not last and self._stop_agreed():
                self._stop_after(step, {"step": step, "loss": loss, "aux_loss": aux})
        return final

    # --- SIGINT / SIGTERM: finish the step, save, exit 130 ----------------------------------------

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, Ctrl-C (SIGINT) and SIGTERM (what schedulers send before killing a job) only
        set a flag: the current step finishes, a checkpoint is written and :class:`TrainingInterrupted`
        is raised. A second signal acts as usual (KeyboardInterrupt), and the atomic save still never
        leaves a partial checkpoint. Only the main thread may install handlers; elsewhere, nothing."""
        self._stop_signal: int | None = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum
            for s, h in previous.items():  # the next signal of either kind interrupts at once
                signal.signal(s, h)
            if self.info.is_main:
                print(
                    f"\nmoc train: {signal.Signals(signum).name} received; finishing this step and saving "
                    "a checkpoint (send it again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _stop_agreed(self) -> bool:
        """True on every rank if any rank got a signal: one all_reduce per step, so all ranks stop after
        the same step (under torchrun a signal may reach the ranks at different moments)."""
        flag = torch.tensor([1.0 if getattr(self, "_stop_signal", None) else 0.0], device=self.info.device)
        return bool(parallel.all_reduce_sum(flag, self.info).item() > 0)

    def _stop_after(self, step: int, metrics: dict[str, Any]) -> None:
        t = self.t
        if not (t.save_every > 0 and step % t.save_every == 0):  # not saved at this step yet
            self.state.save(step, self.progress, metrics)
        ckpt = self.manager.root / checkpoint.step_dir_name(step)
        own = getattr(self, "_stop_signal", None)
        name = signal.Signals(own).name if own else "a signal to another process"
        raise TrainingInterrupted(
            f"stopped by {name} after step {step}; checkpoint saved in {ckpt}; continue with the same "
            "command plus --resume",
            step=step,
            checkpoint=str(ckpt),
        )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.autocast_dtype)

    def _train_step(self, micro: list[batches.Batch]) -> tuple[float, float, float]:
        """Forward/backward over this rank's micro-batches, then clip. Returns (loss, aux, grad_norm)."""
        info, accum, model = self.info, len(micro), self.model
        n_local = float(sum(b.n_targets for b in micro))
        count = torch.tensor([n_local], dtype=torch.float64, device=info.device)  # NCCL needs device tensors
        n_targets = float(parallel.all_reduce_sum(count, info).item())
        # DDP/FSDP average gradients over ranks, so each rank scales its token-loss sum by world / total.
        scale = info.world_size / max(n_targets, 1.0)
        # [token-loss sum, aux sum, distinct chapters summed over micro-batches]
        sums = torch.zeros(3, dtype=torch.float64, device=info.device)
        for j, b in enumerate(micro):
            with parallel.grad_sync(self.wrapped, model, sync=j == accum - 1):
                with self._autocast():
                    out = self.wrapped(b.input_ids, **_loss_kwargs(b))
                    ce = out.loss
                aux = out.aux_loss if out.aux_loss is not None else ce.new_zeros(())
                (ce * scale + aux / accum).backward()
            chapters = distinct_chapters(out.routing, self.cfg.memory.n_chapters, sums)
            sums += torch.stack([ce.detach().double(), aux.detach().double(), chapters])
        parallel.all_reduce_sum(sums, info)
        params = [q for q in model.parameters() if q.grad is not None]
        clip = self.t.grad_clip if self.t.grad_clip > 0 else float("inf")  # inf: just measure the norm
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip) if params else torch.zeros(())
        if hasattr(gnorm, "full_tensor"):  # FSDP2 returns a DTensor
            gnorm = gnorm.full_tensor()
        loss, aux_sum, gn, chapters = torch.stack(
            [sums[0] / max(n_targets, 1.0), sums[1], gnorm.to(sums), sums[2]]
        ).tolist()
        self.distinct_chapters = chapters / (accum * info.world_size)
        return loss, aux_sum / (accum * info.world_size), gn

    def _non_finite(self, step: int, loss: float, aux: float, gnorm: float) -> None:
        what = (
            "loss"
            if not math.isfinite(loss)
            else "router aux loss"
            if not math.isfinite(aux)
            else "gradient norm"
        )
        desc = f"non-finite {what} at step {step} (loss={loss}, aux_loss={aux}, grad_norm={gnorm})"
        if self.t.nan_policy == "skip":
            self.progress.nan_skips += 1
            n = self.progress.nan_skips
            self.log.message(f"{desc}: skipped this update (train.nan_policy=skip; {n} skipped so far)")
            return
        last = self.manager.latest()
        raise DivergenceError(
            f"{desc}; stopped before applying it (train.nan_policy=stop). Last good checkpoint: "
            f"{last if last else 'none written yet'}. Lower the learning rate or lengthen warmup and resume "
            "with --resume, or set train.nan_policy=skip to skip such steps"
        )

    @torch.no_grad()
    def _evaluate(self, batches: list[batches.Batch]) -> tuple[float, int]:
        """Token-weighted validation loss: sum of token losses / number of target tokens (all ranks)."""
        model = self.model  # unwrapped: DDP's forward hooks are for training (FSDP shards in place)
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.info.device)
        for b in batches:
            with self._autocast():
                ce = model(b.input_ids, **_loss_kwargs(b)).loss
            sums[0] += ce.double()
            sums[1] += b.n_targets
        parallel.all_reduce_sum(sums, self.info)
        model.train(was_training)
        total, n = sums.tolist()
        return total / max(n, 1.0), int(n)

    def _eval_and_log(self, step: int, batches: list[batches.Batch]) -> dict[str, Any]:
        val_loss, n_tok = self._evaluate(batches)
        ev = {"step": step, "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 700.0))}
        self.progress.val_history.append(dict(ev))
        self.log.log({"kind": "eval", **ev, "val_tokens": n_tok})
        self.log.message(f"step {step}: val_loss {val_loss:.4f}, val_ppl {ev['val_ppl']:.2f}")
        return {"val_loss": val_loss, "val_ppl": ev["val_ppl"], "val_tokens": n_tok}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default, fp32 elsewhere; ``train.dtype`` forces one or the other."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if dtype == "bfloat16" else None


def _loss_kwargs(b: batches.Batch) -> dict[str, Any]:
    """Model kwargs for a packed batch: its document positions, and the summed LM loss of its (already
    shifted) targets computed in chunks, so no (B, L, vocab) logits are held (``model.loss_chunk_size``)."""
    return {
        "position_ids": b.position_ids,
        "labels": b.targets,  # already shifted: hence shift_labels=False
        "return_logits": False,
        "shift_labels": False,
        "loss_reduction": "sum",
    }
