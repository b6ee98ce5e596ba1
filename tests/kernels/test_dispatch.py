"""Who runs the routed read (moc.kernels.dispatch): memory.kernel, fallbacks said once, failures per shape."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from moc.kernels import cpu_build, cpu_read, dispatch
from moc.kernels.routed_read import routed_read_forward_torch

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr("moc.errors._WARNED", set())
    monkeypatch.setattr(dispatch, "_FAILED", {})
    monkeypatch.setattr(dispatch, "_USED", set())


def _args(hd: int = 8) -> tuple:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(4, 1, 2, hd, generator=g)
    k, v = torch.randn(5, 4, 1, hd, generator=g), torch.randn(5, 4, 1, hd, generator=g)
    idx = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 2]])
    return q, k, v, idx, torch.full((4, 2), 0.5), "kv", hd**-0.5


def test_torch_takes_the_pytorch_loops_and_the_cpu_its_c_kernels() -> None:
    assert dispatch.read_impls(CUDA, "torch") == (None, None)
    assert dispatch.read_impls(CPU, "torch") == (None, None)
    assert dispatch.read_impls(CPU, "auto") == (dispatch._cpu_forward, dispatch._cpu_backward)


@pytest.mark.skipif(cpu_read.unavailable(torch.float32, 4) is not None, reason="no C compiler")
def test_on_the_cpu_small_reads_run_the_c_kernels_and_large_ones_the_loops_without_a_word() -> None:
    fwd, bwd = dispatch.read_impls(CPU, "auto")
    q, k, v, idx, w, weighting, scale = _args()
    out, lse = fwd(q, k, v, idx, w, weighting, scale)
    torch.testing.assert_close(out, routed_read_forward_torch(q, k, v, idx, w, weighting, scale)[0])
    bwd(torch.ones_like(q), q, out, lse, k, v, idx, w, weighting, scale)
    assert dispatch.paths_used(reset=True) == ["cpu backward", "cpu forward"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read the kernels do not suit is a choice, not a fallback
        q, k, v, idx, w, weighting, scale = _args(hd=128)
        fwd(q, k, v, idx, w, weighting, scale)
    assert dispatch.paths_used() == ["torch forward"]


def test_a_cpu_without_a_c_compiler_says_so_once_and_reads_with_the_loops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpu_build, "compiler", lambda: None)
    cpu_read._library.cache_clear()
    cpu_build.library.cache_clear()
    fwd, _ = dispatch.read_impls(CPU, "auto")
    args = _args()
    with pytest.warns(UserWarning, match="CPU kernel unavailable.*no C compiler.*memory.kernel: torch"):
        out, _ = fwd(*args)
    torch.testing.assert_close(out, routed_read_forward_torch(*args)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        fwd(*args)
    assert dispatch.paths_used() == ["torch forward"]
    cpu_read._library.cache_clear()
    cpu_build.library.cache_clear()


def test_asking_for_triton_where_it_cannot_run_is_an_error_that_names_why() -> None:
    with pytest.raises(dispatch.KernelError, match="needs a CUDA device.*memory.kernel: auto"):
        dispatch.read_impls(CPU, "triton")
    with pytest.raises(dispatch.KernelError, match="'fast' is not one of"):
        dispatch.read_impls(CUDA, "fast")


def test_a_machine_without_a_c_compiler_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("triton")
    monkeypatch.setattr(cpu_build.shutil, "which", lambda name: None)
    monkeypatch.delenv("CC", raising=False)
    with pytest.raises(dispatch.KernelError, match="no C compiler"):
        dispatch.read_impls(CUDA, "triton")
    with pytest.warns(UserWarning, match="no C compiler.*install gcc"):
        assert dispatch.read_impls(CUDA, "auto") == (None, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        dispatch.read_impls(CUDA, "auto")


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_a_failing_kernel_falls_back_for_its_shapes_only_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moc.kernels import triton_read

    calls: list[int] = []

    def kernel(q: torch.Tensor, *args: object) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(q.shape[-1])
        if q.shape[-1] == 8:
            raise RuntimeError("no such GPU feature")
        return routed_read_forward_torch(q, *args)

    monkeypatch.setattr(triton_read, "unsupported", lambda q, k: None)
    monkeypatch.setattr(triton_read, "forward", kernel)
    monkeypatch.setattr(dispatch, "environment_problem", lambda: None)
    fwd, _ = dispatch.read_impls(CUDA, "auto")
    with pytest.warns(
        UserWarning, match="failed for grouped forward, float32, 2 heads / 1 KV heads of 8.*GPU feature"
    ):
        out, _ = fwd(*_args(8))
    torch.testing.assert_close(out, routed_read_forward_torch(*_args(8))[0])  # the PyTorch loops' answer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fwd(*_args(8))  # remembered: neither retried nor said again
        fwd(*_args(16))  # other shapes keep the kernel
    assert calls == [8, 16]
    assert dispatch.paths_used() == ["torch forward", "triton grouped forward"]
    with pytest.raises(dispatch.KernelError, match="memory.kernel: triton: the kernel failed"):
        dispatch.read_impls(CUDA, "triton")[0](*_args(8))  # memory.kernel: triton never falls back
