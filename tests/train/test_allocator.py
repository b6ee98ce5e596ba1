"""train.retain_freed_memory (moc.train.allocator): glibc's malloc told to keep freed memory, once, by CPU
training; where it cannot be, said once."""

from __future__ import annotations

import sys
import warnings

import pytest

from moc.train import allocator


class _FakeLibc:
    """A C library whose mallopt records its calls (a ctypes function: it takes argtypes/restype)."""

    def __init__(self, answer: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.answer = answer
        libc = self

        class Mallopt:
            def __call__(self, param: int, value: int) -> int:
                libc.calls.append((param, value))
                return libc.answer

        self.mallopt = Mallopt()


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> _FakeLibc:
    libc = _FakeLibc()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(allocator.sys, "platform", "linux")
    allocator.retain_freed_memory.cache_clear()
    yield libc
    allocator.retain_freed_memory.cache_clear()


def test_glibc_is_told_to_map_nothing_below_32_mib_and_never_trim(fake_libc: _FakeLibc) -> None:
    assert allocator.retain_freed_memory() is None
    # glibc's <malloc.h>: M_MMAP_THRESHOLD = -3 (its 64-bit maximum is 32 MiB), M_TRIM_THRESHOLD = -1
    assert fake_libc.calls == [(-3, 32 * 1024 * 1024), (-1, 2**31 - 1)]
    allocator.retain_freed_memory()
    assert len(fake_libc.calls) == 2  # once per process


def test_a_refusal_or_another_system_is_said_once(
    fake_libc: _FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("moc.errors._WARNED", set())
    fake_libc.answer = 0
    refused = r"retain_freed_memory: .*mallopt\(-3, 33554432\) was refused.*false"
    with pytest.warns(UserWarning, match=refused):
        assert allocator.retain_freed_memory_once() is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        allocator.retain_freed_memory_once()
    allocator.retain_freed_memory.cache_clear()
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert "not Linux (darwin)" in allocator.retain_freed_memory()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_this_machines_c_library_accepts_the_settings() -> None:
    assert allocator.retain_freed_memory() is None


@pytest.mark.parametrize("retain", [True, False])
def test_cpu_training_retains_freed_memory_unless_told_not_to(
    tiny_cfg, monkeypatch: pytest.MonkeyPatch, retain: bool
) -> None:
    import moc.train.loop as loop
    from moc.train import train

    calls: list[bool] = []
    monkeypatch.setattr(loop, "retain_freed_memory_once", lambda: calls.append(True) or True)
    train(tiny_cfg("train.max_steps=1", f"train.retain_freed_memory={str(retain).lower()}"))
    assert calls == ([True] if retain else [])
