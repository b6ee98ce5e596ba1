"""Errors raised by the training engine; each message names the problem and the fix."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A problem that stops training before or during the run (bad data, bad checkpoint, ...)."""


class CheckpointError(TrainError):
    """A checkpoint is missing, incomplete, or does not fit the model being trained."""


class DivergenceError(TrainError):
    """The loss became NaN or infinite (``train.nan_policy=stop``)."""
