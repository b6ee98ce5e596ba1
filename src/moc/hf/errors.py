"""The exception for problems loading, exporting, generating with or evaluating a model."""

from __future__ import annotations

from moc.config import ConfigError


class HFError(ConfigError):
    """A problem with a checkpoint, an export folder or a tokenizer; the message names the path and fix.

    It subclasses :class:`~moc.config.ConfigError` so every ``moc`` command prints it as a one-line error.
    """
