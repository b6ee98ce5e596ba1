"""Learning-rate schedules as LambdaLR multipliers: WSD, cosine and constant, each with linear warmup.

Every parameter group's learning rate at optimizer step ``s`` (0-indexed) is ``base_lr * f(s)``; the
same ``f`` multiplies every group, so the ratios between groups hold at every step.

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg.train))
"""

from __future__ import annotations

import math
from collections.abc import Callable

from moc.config import TrainConfig, validate_schedule


def decay_start_step(cfg: TrainConfig) -> int:
    """``train.decay_start`` as a step: a value > 1 is a step, a value in (0, 1] a fraction of max_steps."""
    ds = cfg.decay_start
    return int(ds) if ds > 1 else round(ds * cfg.max_steps)


def _decay_shape(shape: str, progress: float) -> float:
    """1 at progress 0, 0 at progress 1 (``shape`` is checked by :func:`moc.config.validate_schedule`)."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)  # "1-sqrt"


def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """The multiplier ``f(step)`` for ``cfg.schedule``; validated eagerly so bad configs fail at start.

    - warmup: ``f(s) = (s + 1) / warmup_steps`` for ``s < warmup_steps`` (step 0 already trains).
    - ``wsd``: 1 until ``decay_start`` (a fraction never starts before the end of warmup; a step
      before it is an error), then decays with ``decay_shape`` to ``min_lr_ratio``, reached
      exactly at the last step ``max_steps - 1`` and held afterwards.
    - ``cosine``: cosine from 1 after warmup to ``min_lr_ratio`` at the last step.
    - ``constant``: 1 after warmup.
    """
    validate_schedule(cfg)
    warmup, max_steps, floor = cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio
    last = max_steps - 1
    if cfg.schedule == "wsd":
        # A fraction never starts before the end of warmup (validate_schedule rejects such a step).
        start = max(decay_start_step(cfg), warmup)
    elif cfg.schedule == "cosine":
        start = warmup
    else:  # "constant"
        start = None
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
