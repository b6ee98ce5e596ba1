"""moc.errors.warn_once: the one way moc says something once per process."""

from __future__ import annotations

import warnings

import pytest

from moc.errors import warn_once


def test_a_message_is_said_once_whatever_the_warning_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("moc.errors._WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # Python's own filter would repeat it
        assert warn_once("a") and not warn_once("a") and warn_once("b")
    assert [str(w.message) for w in caught] == ["a", "b"]
    assert all(w.category is UserWarning and w.filename == __file__ for w in caught)  # points at the caller
