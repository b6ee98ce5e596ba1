"""The router's fused head (moc.model.router.RouterHead) against the plain definitions it replaces in
training: softmax + top-k + router_losses + routing_entropy, differentiated by autograd, in float64."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.model.router import ChapterRouter, RouterHead, router_losses, routing_entropy

DT = torch.float64


def _plain(logits: torch.Tensor, valid: torch.Tensor, n_shared: int, k: int) -> tuple[torch.Tensor, ...]:
    """The readable path: (top_p, top_i, load balance, z-loss, counts, entropy)."""
    probs = logits[:, n_shared:].softmax(-1)
    top_p, top_i = probs.topk(k, -1)
    indices = torch.cat([torch.arange(n_shared).expand(len(logits), n_shared), top_i + n_shared], -1)
    lb, z, counts = router_losses(logits, probs, indices, valid, n_shared)
    return top_p, top_i, lb, z, counts, routing_entropy(probs, valid)


@pytest.mark.parametrize("n_shared", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_router_head_matches_the_plain_losses_and_their_gradients(n_shared: int, k: int) -> None:
    g = torch.Generator().manual_seed(n_shared * 10 + k)
    N, C = 12, 9
    logits = (2 * torch.randn(N, C, dtype=DT, generator=g)).requires_grad_()
    valid = torch.rand(N, generator=g) > 0.3  # some decisions serve no real token
    d_top = torch.randn(N, k, dtype=DT, generator=g)
    d_lb, d_z = 0.7, -1.3  # any upstream weights: each term's gradient must be right on its own

    fused = RouterHead.apply(logits[:, n_shared:], logits[:, :n_shared], valid.to(DT), k)
    plain = _plain(logits, valid, n_shared, k)
    for name, a, b in zip(("top_p", "top_i", "lb", "z", "counts", "entropy"), fused, plain, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-10, atol=1e-12, msg=name)

    def grad(out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        loss = (out[0] * d_top).sum() + d_lb * out[2] + d_z * out[3]
        return torch.autograd.grad(loss, logits)[0]

    torch.testing.assert_close(grad(fused), grad(plain), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("term", ["top_p", "lb", "z"])
def test_each_gradient_path_of_the_router_head_is_nonzero(term: str) -> None:
    # A bug that dropped one term's gradient would still pass a check of the sum if the others dominated.
    logits = torch.randn(8, 6, dtype=DT, generator=torch.Generator().manual_seed(3)).requires_grad_()
    top_p, _, lb, z, _, _ = RouterHead.apply(logits[:, 1:], logits[:, :1], torch.ones(8, dtype=DT), 2)
    out = {"top_p": top_p.square().sum(), "lb": lb, "z": z}[term]
    (g,) = torch.autograd.grad(out, logits)
    plain = _plain(logits, torch.ones(8, dtype=torch.bool), 1, 2)
    ref = {"top_p": plain[0].square().sum(), "lb": plain[2], "z": plain[3]}[term]
    (g_ref,) = torch.autograd.grad(ref, logits)
    assert g.abs().max() > 1e-3
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_decide_matches_the_router_forward_and_its_losses() -> None:
    cfg = moc.load_config("tiny-moc", ["memory.n_shared_chapters=2", "memory.top_k=3"]).memory
    torch.manual_seed(0)
    router = ChapterRouter(16, cfg).double()
    summary, valid = torch.randn(2, 5, 16, dtype=DT), torch.rand(2, 5) > 0.2
    dec = router.decide(summary, valid, layer=4)
    idx, w, logits, probs = router(summary)
    lb, z, counts = router_losses(logits, probs, idx, valid, 2)
    torch.testing.assert_close(dec.indices, idx)
    torch.testing.assert_close(dec.weights, w)
    torch.testing.assert_close(dec.aux, cfg.load_balance_coef * lb + cfg.z_loss_coef * z)
    torch.testing.assert_close(dec.info.chapter_counts, counts)
    assert dec.info.layer == 4
    assert dec.info.entropy == pytest.approx(float(routing_entropy(probs.detach(), valid)), rel=1e-6)  # fp32


def test_decide_with_disabled_chapters_never_picks_them() -> None:
    cfg = moc.load_config("tiny-moc", ["memory.top_k=2"]).memory
    router = ChapterRouter(16, cfg)
    router.disabled[torch.tensor([0, 3, 4, 5])] = True  # the shared chapter and three routed ones
    dec = router.decide(torch.randn(3, 7, 16), torch.ones(3, 7, dtype=torch.bool), layer=1)
    assert not torch.isin(dec.indices, torch.tensor([0, 3, 4, 5])).any()
    torch.testing.assert_close(dec.weights.sum(-1), torch.ones(3, 7))


@pytest.mark.parametrize("n", [5, 15, 127, 128, 300])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_k_is_torch_topk_whatever_the_row_length(n: int, k: int) -> None:
    """Short rows are padded on the CPU (PyTorch's fast top-k path): the same values and indices, and the
    padding is never picked, even when most probabilities are exactly zero (disabled chapters)."""
    from moc.model.router import top_k

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
