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
    from moc.model.router import top_k_by_keys

    probs = _tied_probs(n, n + k)
    values, idx = top_k_by_keys(probs, k)
    want_values, want_idx = _stable_top_k(probs, k)
    assert torch.equal(idx, want_idx) and torch.equal(values, want_values)
    assert torch.equal(top_k_by_keys(probs[:, :k], k)[1], _stable_top_k(probs[:, :k], k)[1])  # k == n


def test_top_k_under_torch_compile_is_the_same_top_k() -> None:
    """Compiled on the CPU, top_k takes the key reductions: same picks and values as the reference."""
    from moc.model.router import top_k

    probs = _tied_probs(127, 0)
    compiled = torch.compile(top_k, fullgraph=True)
    for k in (2, 4):
        values, idx = compiled(probs, k)
        want_values, want_idx = _stable_top_k(probs, k)
        assert torch.equal(idx, want_idx) and torch.equal(values, want_values)
