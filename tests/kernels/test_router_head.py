"""The router head (moc.kernels.router_head.RouterHead, and the C kernels' op moc.kernels.router_op)
against the plain definitions it replaces in training: softmax + top-k + router_losses + routing_entropy,
differentiated by autograd, in float64; and the top-k both use."""

from __future__ import annotations

import pytest
import torch

from moc.kernels import cpu_build
from moc.kernels.router_head import RouterHead, top_k, top_k_by_keys
from moc.kernels.router_op import router_head
from moc.model.router import router_losses, routing_entropy

DT = torch.float64
NO_COMPILER = not cpu_build.has_compiler()  # a kernel that does not build is a failure, not a skip
HEADS = ["torch", pytest.param("c", marks=pytest.mark.skipif(NO_COMPILER, reason="no C compiler"))]


def _c_head(scores: torch.Tensor, w: torch.Tensor, n_shared: int, k: int) -> tuple[torch.Tensor, ...]:
    """The op on the scores themselves: x = scores, an identity weight and a zero bias (exact)."""
    eye = torch.eye(scores.shape[1], dtype=scores.dtype)
    return router_head(scores, eye, torch.zeros(scores.shape[1], dtype=scores.dtype), w, n_shared, k)


RUN = {"torch": RouterHead.apply, "c": _c_head}  # the C kernels: float64 here, libm's exp and log


def _plain(logits: torch.Tensor, valid: torch.Tensor, n_shared: int, k: int) -> tuple[torch.Tensor, ...]:
    """The readable path: (top_p, top_i, load balance, z-loss, counts, entropy)."""
    probs = logits[:, n_shared:].softmax(-1)
    top_p, top_i = probs.topk(k, -1)
    indices = torch.cat([torch.arange(n_shared).expand(len(logits), n_shared), top_i + n_shared], -1)
    lb, z, counts = router_losses(logits, probs, indices, valid, n_shared)
    return top_p, top_i, lb, z, counts, routing_entropy(probs, valid)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("n_shared", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_router_head_matches_the_plain_losses_and_their_gradients(head: str, n_shared: int, k: int) -> None:
    g = torch.Generator().manual_seed(n_shared * 10 + k)
    N, C = 12, 9
    logits = (2 * torch.randn(N, C, dtype=DT, generator=g)).requires_grad_()
    valid = torch.rand(N, generator=g) > 0.3  # some decisions serve no real token
    d_top = torch.randn(N, k, dtype=DT, generator=g)
    d_lb, d_z = 0.7, -1.3  # any upstream weights: each term's gradient must be right on its own

    fused = RUN[head](logits, valid.to(DT), n_shared, k)
    plain = _plain(logits, valid, n_shared, k)
    for name, a, b in zip(("top_p", "top_i", "lb", "z", "counts", "entropy"), fused, plain, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-10, atol=1e-12, msg=name)

    def grad(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        loss = (out[0] * d_top).sum() + d_lb * out[2] + d_z * out[3]
        return torch.autograd.grad(loss, logits)[0]

    torch.testing.assert_close(grad(fused), grad(plain), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("term", ["top_p", "lb", "z"])
def test_each_gradient_path_of_the_router_head_is_nonzero(head: str, term: str) -> None:
    # A bug that dropped one term's gradient would still pass a check of the sum if the others dominated.
    logits = torch.randn(8, 6, dtype=DT, generator=torch.Generator().manual_seed(3)).requires_grad_()
    top_p, _, lb, z, _, _ = RUN[head](logits, torch.ones(8, dtype=DT), 1, 2)
    out = {"top_p": top_p.square().sum(), "lb": lb, "z": z}[term]
    (g,) = torch.autograd.grad(out, logits)
    plain = _plain(logits, torch.ones(8, dtype=torch.bool), 1, 2)
    ref = {"top_p": plain[0].square().sum(), "lb": plain[2], "z": plain[3]}[term]
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert g.abs().max() > 1e-3
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("n", [5, 15, 127, 128, 300])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_is_torch_topk_whatever_the_row_length(n: int, k: int) -> None:
    """Short rows are padded on the CPU (PyTorch's fast top-k path): the same values and indices, and the
    padding is never picked, even when most probabilities are exactly zero (disabled chapters)."""
    g = torch.Generator().manual_seed(n * 10 + k)
    probs = torch.rand(40, n, generator=g).softmax(-1)
    want = probs.topk(k, dim=-1)
    got = top_k(probs, k)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    sparse = torch.zeros(3, n)
    sparse[:, 0] = 1.0  # one chapter holds all the mass; the rest are exact zeros
    values, idx = top_k(sparse, k)
    assert values[:, 0].eq(1.0).all() and values[:, 1:].eq(0.0).all()
    assert idx.lt(n).all() and idx[:, 0].eq(0).all()


def _stable_top_k(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: largest first, equal values by lowest index (a stable sort, independent of topk)."""
    idx = torch.sort(-probs, dim=-1, stable=True).indices[..., :k]
    return probs.gather(-1, idx), idx


def _tied_probs(n: int, seed: int) -> torch.Tensor:
    """Rows of probabilities with many exact ties: coarse levels, all-zero rows, one-hot rows."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 4, (30, n), generator=g).float()
    probs = torch.cat([levels / levels.sum(-1, keepdim=True).clamp(min=1), torch.zeros(2, n)])
    probs[-1, n // 2] = 1.0
    return torch.cat([probs, torch.rand(8, n, generator=g).softmax(-1)])


@pytest.mark.parametrize("n", [4, 31, 511])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_top_k_by_keys_is_a_top_k_with_ties_to_the_lowest_index(n: int, k: int) -> None:
    probs = _tied_probs(n, n + k)
    values, idx = top_k_by_keys(probs, k)
    want_values, want_idx = _stable_top_k(probs, k)
    assert torch.equal(idx, want_idx) and torch.equal(values, want_values)
    assert torch.equal(top_k_by_keys(probs[:, :k], k)[1], _stable_top_k(probs[:, :k], k)[1])  # k == n


def test_top_k_under_torch_compile_is_the_same_top_k() -> None:
    """Compiled on the CPU, top_k takes the key reductions: same picks and values as the reference."""
    probs = _tied_probs(127, 0)
    compiled = torch.compile(top_k, fullgraph=True)
    for k in (2, 4):
        values, idx = compiled(probs, k)
        want_values, want_idx = _stable_top_k(probs, k)
        assert torch.equal(idx, want_idx) and torch.equal(values, want_values)


@pytest.mark.skipif(NO_COMPILER, reason="no C compiler")
@pytest.mark.parametrize("dim", [6, 21])
def test_the_op_takes_the_gradient_through_the_linear_layer_as_autograd_does(dim: int) -> None:
    """The op scores the chapters itself (x @ weight.T + bias) and orders the backward's products its
    own way: the same gradients on x, weight and bias as autograd through F.linear and the head."""
    g = torch.Generator().manual_seed(5)
    # 19 decisions: blocks of 4 and a last one of 3; inputs of 6 and 21: part of a vector, and more than one
    x, weight, bias = (torch.randn(*s, dtype=DT, generator=g) for s in ((19, dim), (11, dim), (11,)))
    valid = (torch.rand(19, generator=g) > 0.3).to(DT)
    d_top = torch.randn(19, 3, dtype=DT, generator=g)

    def grads(head: object, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        leaves = [p.clone().requires_grad_() for p in params]
        top_p, _, lb, z, _, _ = head(*leaves)  # type: ignore[operator]
        loss = (top_p * d_top).sum() + 0.7 * lb - 1.3 * z
        return torch.autograd.grad(loss, leaves)

    def through_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return RouterHead.apply(torch.nn.functional.linear(x, weight, bias), valid, 2, 3)

    def op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return router_head(x, weight, bias, valid, 2, 3)

    for a, b in zip(grads(op, x, weight, bias), grads(through_linear, x, weight, bias), strict=True):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
