"""Eager calls of the registered ops run their implementation, context set-up and backward as a plain
autograd Function (moc.kernels.eager_op): the same numbers as the op, bit for bit, forward and backward,
and no zeros made for the outputs nothing used."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moc.kernels import cpu_build, cpu_read, op, router_op
from moc.kernels.eager_op import eager_function

sys.path.insert(0, str(Path(__file__).parent))
from test_op import _problem  # noqa: E402


def _router_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=dtype)
    weight, bias = torch.randn(20, 6, generator=g, dtype=dtype), torch.randn(20, generator=g, dtype=dtype)
    w = (torch.rand(40, generator=g) > 0.2).to(dtype)
    return x, weight, bias, w


def _head_grads(head: object, inputs: tuple[torch.Tensor, ...], use_top_p: bool) -> tuple[torch.Tensor, ...]:
    x, weight, bias, w = (t.clone().requires_grad_(i < 3) for i, t in enumerate(inputs))
    outs = head(x, weight, bias, w, 2, 3)  # type: ignore[operator]
    top_p, _, lb, z = outs[:4]
    loss = 0.7 * lb - 1.3 * z + ((top_p * torch.arange(3.0, dtype=top_p.dtype)).sum() if use_top_p else 0)
    return (*outs, *torch.autograd.grad(loss, (x, weight, bias)))


@pytest.mark.skipif(not cpu_build.has_compiler(), reason="no C compiler to build the CPU kernels")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("use_top_p", [True, False])
def test_the_eager_router_head_equals_the_op_bit_for_bit(dtype: torch.dtype, use_top_p: bool) -> None:
    """Without top_p in the loss its gradient reaches the eager backward as None, not zeros."""
    inputs = _router_inputs(dtype)
    via_op = _head_grads(router_op.router_head_op, inputs, use_top_p)
    eager = _head_grads(router_op._eager_router_head, inputs, use_top_p)
    for a, b in zip(via_op, eager, strict=True):
        assert torch.equal(a, b)


def _c_problem(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A float32 read with chapters of 4 tokens: the CPU C kernels' shapes."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(7, 1, 4, 8, generator=g)
    k, v = (torch.randn(6, 4, 2, 8, generator=g) for _ in range(2))
    idx = torch.stack([torch.randperm(6, generator=g)[:3] for _ in range(7)])
    return q, k, v, idx, torch.rand(7, 3, generator=g).softmax(-1)


@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize("kernels", ["PyTorch loops", "C"])
def test_the_eager_read_equals_the_op_bit_for_bit(weighting: str, kernels: str) -> None:
    if kernels == "C" and not cpu_build.has_compiler():
        pytest.skip("no C compiler to build the CPU kernels")
    q, k, v, idx, w = _problem(weighting, shape=(5, 2, 2)) if kernels != "C" else _c_problem()
    if kernels == "C":
        assert cpu_read.unavailable(torch.float32, 4, 8, 3) is None  # they run this read
    results = []
    for run in (op.routed_read_op, op._eager_routed_read):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
        out, _ = run(leaves[0], leaves[1], leaves[2], idx, leaves[3], weighting, 8**-0.5,
                     "auto" if kernels == "C" else "torch")  # fmt: skip
        do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        results.append((out, *torch.autograd.grad((out * do).sum(), leaves)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_eager_calls_skip_the_op_and_compiled_calls_keep_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrappers call the Function eagerly; a compiled call traces the op (no graph break)."""

    def op_called(*args: object) -> None:
        raise AssertionError("an eager call went through torch.library's dispatch")

    q, k, v, idx, w = _problem("kv")
    want = op.read(q, k, v, idx, w)
    monkeypatch.setattr(op, "routed_read_op", op_called)
    torch.testing.assert_close(op.read(q, k, v, idx, w), want, rtol=0, atol=0)
    monkeypatch.undo()
    seen: list[str] = []
    real_op = op.routed_read_op

    def traced(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append("op")
        return real_op(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(op, "routed_read_op", traced)
    torch._dynamo.reset()
    compiled = torch.compile(op.read, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, idx, w), want, rtol=0, atol=0)
    assert seen == ["op"]
    torch._dynamo.reset()


def test_eager_function_runs_the_given_pieces_and_passes_none_for_unused_outputs() -> None:
    seen: list[object] = []

    def implementation(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        return x * scale, x.sum()

    def setup_context(ctx: object, inputs: tuple[object, ...], output: object) -> None:
        ctx.scale = inputs[1]  # type: ignore[attr-defined]

    def backward(ctx: object, d_out: torch.Tensor | None, d_sum: torch.Tensor | None) -> tuple[object, ...]:
        seen.append(d_sum)
        return d_out * ctx.scale, None  # type: ignore[attr-defined, operator]

    fn = eager_function(implementation, setup_context, backward)
    x = torch.ones(3, requires_grad=True)
    out, _ = fn(x, 2.5)
    out.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.5)) and seen == [None]
