"""The root of every error ``moc`` reports as one line.

Every problem caused by the user's input or environment (a bad config key, a missing file, a corrupt
checkpoint, a full disk while saving) is raised as a subclass of :class:`MocError` whose message names
the path or key and the fix. The ``moc`` command catches :class:`MocError` once, in
:func:`moc.cli.main`, prints ``moc <command>: <message>`` on stderr and exits with status 2 (130 for an
interrupted run). Anything else that escapes is a bug in moc and keeps its traceback.

The tree::

    MocError
    ├── UsageError (ValueError)         a command-line option out of range (--device, --batches, ...)
    ├── ConfigError (ValueError)        moc.config: bad keys, values, YAML, --set overrides
    │   ├── DataError                   moc.data: sources, tokenizers, prepared folders
    │   └── HFError                     moc.hf: checkpoints to load, export folders, tokenizers
    └── TrainError (RuntimeError)       moc.train
        ├── CheckpointError             missing, corrupt or mismatched checkpoints
        ├── DivergenceError             NaN/Inf loss with train.nan_policy=stop
        └── TrainingInterrupted         SIGINT/SIGTERM: a checkpoint was written (exit 130)

Applications subclass it too (the lab's ``ExperimentError`` and ``CorpusError``, in
``moc_experiments.errors``) and run their commands through :func:`moc.cli.run_command`.
"""

from __future__ import annotations

import warnings

_WARNED: set[str] = set()


class MocError(Exception):
    """A problem with the user's input or environment; the message names the path or key and the fix."""

    #: process exit status of the ``moc`` command for this error
    exit_code: int = 2


class UsageError(MocError, ValueError):
    """A command-line option that cannot work (``--batches 0``, ``--device banana``, a prompt that is
    not UTF-8); the message names the option and the values it takes."""


def utf8_text(text: str, option: str) -> str:
    """``text`` (from argv or stdin) if it is valid UTF-8; Python keeps undecodable bytes as lone
    surrogates, which tokenizers reject with a TypeError, so name the option and the byte instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        byte = f"0x{ord(bad) - 0xDC00:02x}" if 0xDC80 <= ord(bad) <= 0xDCFF else repr(bad)
        raise UsageError(
            f"{option} is not valid UTF-8 text (byte {byte} at character {e.start}); pass UTF-8 text "
            "(convert with iconv -t utf-8)"
        ) from None
    return text


def one_line(text: object) -> str:
    """``text`` as a single line: a multi-line message (e.g. from a C++ library) joined with ' | '."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines and isinstance(text, BaseException):
        return type(text).__name__  # e.g. a bare MemoryError
    return " | ".join(lines)


def os_error_message(e: OSError) -> str:
    """``path: reason`` for an ``OSError`` (``[Errno 28] No space left on device: 'x'`` -> readable)."""
    reason = e.strerror or one_line(e) or type(e).__name__
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    where = " -> ".join(str(p) for p in paths)
    return f"{where}: {reason}" if where else reason


def warn_once(message: str, stacklevel: int = 1) -> bool:
    """``warnings.warn(message, stacklevel=stacklevel)`` as if called where ``warn_once`` is, the first time
    this process meets ``message`` (whatever the warning filters say about repeats); True if it warned."""
    if message in _WARNED:
        return False
    _WARNED.add(message)
    warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
    return True
