"""The lab's errors. Both are :class:`moc.errors.MocError`, so ``moc-lab`` reports them as one line
(exit status 2) exactly as ``moc`` reports its own.

    MocError (moc.errors)
    ├── ExperimentError (RuntimeError)  moc_experiments.experiment: a run of an experiment failed
    │   └── ExperimentInterrupted       Ctrl-C / SIGTERM stopped the experiment (exit status 130)
    └── CorpusError (ValueError)        moc_experiments.corpus: bad settings, no text source installed
"""

from __future__ import annotations

from moc.errors import MocError


class ExperimentError(MocError, RuntimeError):
    """A run of the experiment failed; the message names the run and its log file."""


class ExperimentInterrupted(ExperimentError):
    """Ctrl-C or SIGTERM stopped an experiment; the message names the command that continues it."""

    exit_code = 130


class CorpusError(MocError, ValueError, RuntimeError):
    """A demo-corpus build cannot run (unknown source or relation, bad sizes, no text installed).

    It is also a ``ValueError`` and a ``RuntimeError``, the built-in errors callers may already catch.
    """
