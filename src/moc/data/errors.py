"""The one exception type for bad data input."""

from __future__ import annotations

from moc.config import ConfigError


class DataError(ConfigError):
    """A problem with the user's data, tokenizer or prepared directory; the message names the file and fix.

    It subclasses :class:`~moc.config.ConfigError` so that every ``moc`` command prints it as a clean
    one-line error instead of a traceback.
    """
