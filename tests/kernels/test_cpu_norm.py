"""RMS normalisation's C kernels (moc.kernels.cpu_norm) against the norm written out in float64, on the
edges of their loops: widths around a vector (8 floats, 4 doubles), row counts around a block of rows
(8 / 4) and of the weight gradient's partial sums (64 rows); and what happens where they cannot run."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moc import errors
from moc.kernels import cpu_build, cpu_norm
from moc.kernels.cpu_norm import RMSNormFunction

# Only a missing compiler skips: a kernel that does not build is a failure.
pytestmark = pytest.mark.skipif(not cpu_build.has_compiler(), reason="no C compiler to build the CPU kernels")


def _written_out(
    x: torch.Tensor, w: torch.Tensor | None, g: torch.Tensor, eps: float
) -> tuple[torch.Tensor, ...]:
    """out, dx, dw in float64 by the formulas, not through autograd or F.rms_norm:
    r = (mean x^2 + eps)^-1/2, y = x r, out = y w; dx = r (g w - y mean(g w y)), dw = sum over rows g y."""
    x, g = x.double(), g.double()
    r = 1 / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    y = x * r
    gw = g if w is None else g * w.double()
    dx = r * (gw - y * (gw * y).mean(-1, keepdim=True))
    out = y if w is None else y * w.double()
    dw = None if w is None else (g * y).reshape(-1, x.shape[-1]).sum(0)
    return out, dx, dw


ROWS = [1, 3, 8, 9, 64, 65, 130]  # whole and partial blocks of rows; dw's partial sums across 64 rows
WIDTHS = [1, 3, 4, 7, 8, 16, 24, 37]  # below, at and past a vector of each dtype, with and without a tail


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("scaled", [True, False])
def test_forward_and_backward_match_the_norm_written_out_in_float64(
    dtype: torch.dtype, rows: int, width: int, scaled: bool
) -> None:
    g = torch.Generator().manual_seed(rows * 100 + width)
    x = (3 * torch.randn(rows, width, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    w = (1 + torch.randn(width, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    w = w if scaled else None
    grad = torch.randn(rows, width, generator=g, dtype=torch.float64).to(dtype)
    eps = 1e-5
    out = RMSNormFunction.apply(x, w, eps)
    out.backward(grad)
    exact_out, exact_dx, exact_dw = _written_out(x.detach(), None if w is None else w.detach(), grad, eps)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(out.double(), exact_out, **tol)
    torch.testing.assert_close(x.grad.double(), exact_dx, **tol)
    if w is not None:
        dw_tol = tol if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5 * rows**0.5}
        torch.testing.assert_close(w.grad.double(), exact_dw, **dw_tol)


def test_the_weight_gradient_keeps_float32_accuracy_over_many_rows() -> None:
    """dw sums a product per row: 40,000 positive products summed in float32 one after another drift by
    ~5e-6 relative; blocks of rows summed into a float64 total stay within 5e-7."""
    g = torch.Generator().manual_seed(0)
    x = (0.5 + torch.rand(40_000, 16, generator=g)).requires_grad_()
    w = torch.randn(16, generator=g).requires_grad_()
    grad = 1 + torch.rand(40_000, 16, generator=g)
    RMSNormFunction.apply(x, w, 1e-5).backward(grad)
    exact = _written_out(x.detach(), w.detach(), grad, 1e-5)[2]
    torch.testing.assert_close(w.grad.double(), exact, rtol=5e-7, atol=0)
    y = x.detach() * torch.rsqrt(x.detach().square().mean(-1, keepdim=True) + 1e-5)
    one_by_one = np.add.accumulate((grad * y).numpy(), axis=0, dtype=np.float32)[-1]  # what this guards
    assert np.abs(one_by_one - exact.numpy()).max() / exact.abs().max().item() > 1e-6


def test_leading_dims_strides_and_which_inputs_want_gradients() -> None:
    """(B, L, D) input, a non-contiguous view, a weight with no gradient, an input with none."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, 20, generator=g, dtype=torch.float64)
    x = base[:, :, ::2].requires_grad_()  # (4, 6, 10), strided
    w = torch.randn(10, generator=g, dtype=torch.float64)  # no gradient wanted
    grad = torch.randn(4, 6, 10, generator=g, dtype=torch.float64)
    out = RMSNormFunction.apply(x, w, 1e-6)
    out.backward(grad)
    exact_out, exact_dx, _ = _written_out(x.detach().reshape(-1, 10), w, grad.reshape(-1, 10), 1e-6)
    assert out.shape == (4, 6, 10)
    torch.testing.assert_close(out.reshape(-1, 10), exact_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad.reshape(-1, 10), exact_dx, rtol=1e-12, atol=1e-12)
    w2 = w.clone().requires_grad_()
    RMSNormFunction.apply(x.detach(), w2, 1e-6).backward(grad)  # only the weight wants one
    assert w2.grad is not None and w2.grad.shape == (10,)


def test_empty_rows() -> None:
    x = torch.randn(0, 16, requires_grad=True)
    out = RMSNormFunction.apply(x, torch.ones(16, requires_grad=True), 1e-5)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 16)


@pytest.mark.parametrize("scaled", [True, False])
def test_first_and_second_derivatives_pass_gradcheck(scaled: bool) -> None:
    """Finite differences in float64: the C backward (gradcheck) and, with create_graph, the PyTorch
    backward's own derivative (gradgradcheck), which a gradient penalty would take."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 9, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True) if scaled else None
    inputs = (x, w) if scaled else (x,)

    def fn(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return RMSNormFunction.apply(a, b, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_unsupported_dtypes_and_missing_kernels_are_named() -> None:
    assert "float32 and float64, not torch.bfloat16" in cpu_norm.unavailable(torch.bfloat16)
    with pytest.raises(RuntimeError, match="cannot run: the CPU norm kernels support float32 and float64"):
        cpu_norm.forward(torch.randn(2, 4, dtype=torch.bfloat16), None, 1e-5)


def test_without_the_kernels_the_layers_say_so_once_and_use_f_rms_norm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """moc.model.layers.rms_norm runs the C kernels eager on the CPU; where they cannot be built it warns
    once, naming why, and computes the same norm with F.rms_norm."""
    from moc.model import layers

    calls: list[int] = []
    real_apply = RMSNormFunction.apply
    monkeypatch.setattr(RMSNormFunction, "apply", lambda *a: calls.append(1) or real_apply(*a))
    x = torch.randn(5, 16, dtype=torch.float64)
    w = torch.randn(16, dtype=torch.float64)
    with_kernels = layers.rms_norm(x, w, 1e-5)
    assert calls == [1]
    monkeypatch.setattr(cpu_norm, "unavailable", lambda dtype: "no C compiler found: install gcc or set CC")
    monkeypatch.setattr(errors, "_WARNED", set())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        without = layers.rms_norm(x, w, 1e-5)
        layers.rms_norm(x, w, 1e-5)
    messages = [str(m.message) for m in seen if "RMS norm" in str(m.message)]
    assert len(messages) == 1 and "no C compiler found: install gcc or set CC" in messages[0]
    assert calls == [1]  # the kernels were not called again
    torch.testing.assert_close(without, with_kernels, rtol=1e-12, atol=1e-12)


def test_the_layers_use_the_kernels_eager_and_keep_the_input_dtype() -> None:
    """bf16 rows are normalised in float32 by the kernels and returned in bf16; under torch.compile the
    layers leave the norm to F.rms_norm (inductor fuses it)."""
    from moc.model import layers

    x = torch.randn(3, 8, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    out = layers.rms_norm(x, w, 1e-5)
    assert out.dtype == torch.bfloat16
    assert "RMSNormFunction" in type(out.grad_fn.next_functions[0][0]).__name__
    exact = _written_out(x.detach().float().reshape(-1, 16), w.detach(), torch.zeros(24, 16), 1e-5)[0]
    torch.testing.assert_close(out.float().reshape(-1, 16), exact.float().to(torch.bfloat16).float())
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: layers.rms_norm(a, b, 1e-5), backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w), out, rtol=1.6e-2, atol=1e-2)
    torch._dynamo.reset()


def test_with_more_than_two_threads_large_inputs_keep_f_rms_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels are single-threaded: above two threads only inputs of at most
    CPU_NORM_MAX_ENTRIES_MULTITHREADED entries take them."""
    from moc.model import layers

    calls: list[int] = []
    real_apply = RMSNormFunction.apply
    monkeypatch.setattr(RMSNormFunction, "apply", lambda *a: calls.append(a[0].numel()) or real_apply(*a))
    small = torch.randn(4, 16)
    large = torch.randn(layers.CPU_NORM_MAX_ENTRIES_MULTITHREADED // 16 + 1, 16)
    for threads in (1, 2, 8):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        calls.clear()
        for x in (small, large):
            torch.testing.assert_close(layers.rms_norm(x, None, 1e-5), F.rms_norm(x, (16,), eps=1e-5))
        assert calls == ([64, large.numel()] if threads <= 2 else [64]), threads


def test_the_bench_times_both_norms() -> None:
    bench = Path(__file__).parents[2] / "bench" / "rms_norm.py"
    run = [sys.executable, str(bench), "--shapes", "16x8w,32x16", "--rounds", "1", "--steps", "1"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [r[:3] for r in rows] == [["16", "x", "8"], ["32", "x", "16"]]
    assert all(float(r[-3]) > 0 and float(r[-2]) > 0 and r[-1].endswith("x") for r in rows)
