"""A signal that lands in a run's last step is not swallowed: the step is saved and TrainingInterrupted
raised, so a caller running jobs one after another (the lab) stops instead of starting the next."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

import moc
from moc.train import train
from moc.train.errors import TrainingInterrupted


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_last_training_step_is_not_swallowed(tiny_cfg: Any, sig: signal.Signals) -> None:
    """Ctrl-C that lands in the last step used to be dropped (the run returned normally and the lab's
    next job started); now training raises TrainingInterrupted after saving that step."""
    cfg = tiny_cfg("train.max_steps=3", "train.save_every=0")
    torch.manual_seed(cfg.train.seed)
    model = moc.build_model(cfg)
    forward, calls = model.forward, [0]

    def hooked(*args: object, **kwargs: object) -> object:
        if model.training:
            calls[0] += 1
            if calls[0] == 3:
                os.kill(os.getpid(), sig)
        return forward(*args, **kwargs)

    model.forward = hooked
    with pytest.raises(TrainingInterrupted, match=rf"stopped by {sig.name} during the last step \(3\)") as e:
        train(cfg, model=model)
    assert e.value.step == 3 and Path(e.value.checkpoint, "model.safetensors").is_file()
