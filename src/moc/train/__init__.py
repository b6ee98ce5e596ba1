"""The training engine: ``moc pretrain`` / ``moc ift`` and the in-process API.

from moc.train import train
result = train(cfg, resume=True)          # -> TrainResult
result.loss_history, result.val_history, result.best_checkpoint
"""

from moc.train.errors import CheckpointError, DivergenceError, TrainError
from moc.train.loop import TrainResult, train

__all__ = ["CheckpointError", "DivergenceError", "TrainError", "TrainResult", "train"]
