"""Learning-rate schedules as LambdaLR multipliers: WSD, cosine and constant, each with linear warmup.

Every parameter group's learning rate at optimizer step ``s`` (0-indexed) is ``base_lr * f(s)``; the
same ``f`` multiplies every group, so the ratios between groups hold at every step.

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg.train))
"""

from __future__ import annotations

import math
from collections.abc import Callable

from moc.config import ConfigError, TrainConfig


def decay_start_step(cfg: TrainConfig) -> int:
    """``train.decay_start`` as a step: a value > 1 is a step, a value in (0, 1] a fraction of max_steps."""
    ds = cfg.decay_start
    if ds <= 0:
        raise ConfigError(f"train.decay_start must be > 0 (a step, or a fraction of max_steps), got {ds}")
    return int(ds) if ds > 1 else round(ds * cfg.max_steps)


def _decay_shape(shape: str, progress: float) -> float:
    """1 at progress 0, 0 at progress 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ConfigError(f"train.decay_shape: unknown shape {shape!r}; use linear, cosine or 1-sqrt")


def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """The multiplier ``f(step)`` for ``cfg.schedule``; validated eagerly so bad configs fail at start.

    - warmup: ``f(s) = (s + 1) / warmup_steps`` for ``s < warmup_steps`` (step 0 already trains).
    - ``wsd``: 1 until ``decay_start`` (a fraction never starts before the end of warmup; a step
      before it is an error), then decays with ``decay_shape`` to ``min_lr_ratio``, reached
      exactly at the last step ``max_steps - 1`` and held afterwards.
    - ``cosine``: cosine from 1 after warmup to ``min_lr_ratio`` at the last step.
    - ``constant``: 1 after warmup.
    """
    warmup, max_steps, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio
    if warmup < 0:
        raise ConfigError(f"train.warmup_steps must be >= 0, got {warmup}")
    if max_steps <= 0:
        raise ConfigError(f"train.max_steps must be positive, got {max_steps}")
    if not 0.0 <= floor <= 1.0:
        raise ConfigError(f"train.min_lr_ratio must be in [0, 1], got {floor}")
    last = max_steps - 1
    if cfg.schedule == "wsd":
        start = decay_start_step(cfg)
        if cfg.decay_start <= 1:  # a fraction: short runs just start decaying once warmup is done
            start = max(start, warmup)
        elif start < warmup:
            raise ConfigError(
                f"train.decay_start resolves to step {start}, before the end of warmup "
                f"(train.warmup_steps={warmup}); start the decay after warmup"
            )
        _decay_shape(cfg.decay_shape, 0.0)  # validate the shape name now
    elif cfg.schedule == "cosine":
        start = warmup
    elif cfg.schedule == "constant":
        start = None
    else:
        raise ConfigError(f"train.schedule: unknown schedule {cfg.schedule!r}; use wsd, cosine or constant")
    shape = "cosine" if cfg.schedule == "cosine" else cfg.decay_shape

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if start is None or step < start:
            return 1.0
        span = last - start
        progress = 1.0 if span <= 0 else min((step - start) / span, 1.0)
        return floor + (1.0 - floor) * _decay_shape(shape, progress)

    return multiplier
