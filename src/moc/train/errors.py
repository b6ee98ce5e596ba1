"""Errors raised by the training engine; each message names the problem and the fix."""

from __future__ import annotations

from moc.errors import MocError


class TrainError(MocError, RuntimeError):
    """A problem that stops training before or during the run (bad data, bad checkpoint, ...)."""


class CheckpointError(TrainError):
    """A checkpoint is missing, incomplete, or does not fit the model being trained."""


class DivergenceError(TrainError):
    """The loss became NaN or infinite (``train.nan_policy=stop``)."""


class TrainingInterrupted(TrainError):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run after a step; a checkpoint of that step was written.

    ``moc pretrain`` / ``moc ift`` exit with status 130 and print where to resume from."""

    exit_code = 130

    def __init__(self, message: str, step: int, checkpoint: str | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint
