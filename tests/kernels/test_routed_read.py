"""The routed memory read (moc.kernels): blocked autograd Function and Triton kernel vs. a naive read.

The naive read here materialises each tile's weighted keys/values (the per-decision copy the kernel
exists to avoid) and runs an explicit softmax: written from the maths, sharing no code with the kernel.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import pytest
import torch

from moc.kernels.routed_read import (
    reads_by_chapter,
    routed_read,
    routed_read_backward_torch,
    routed_read_forward_torch,
)

rr = importlib.import_module(
    "moc.kernels.routed_read"
)  # the module (moc.kernels exports a function of its name)
DT = torch.float64
DEFAULT = rr.DEFAULT_BLOCK_ELEMENTS
KVFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
Problem = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, KVFn]


def _problem(
    D: int = 5,
    Qt: int = 3,
    H: int = 4,
    hd: int = 8,
    U: int = 7,
    T: int = 4,
    kvh: int = 2,
    n: int = 3,
    dim: int = 16,
    seed: int = 0,
) -> Problem:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(D, Qt, H, hd, dtype=DT, generator=g).requires_grad_()
    mem = torch.randn(U, T, dim, dtype=DT, generator=g).requires_grad_()
    wk = torch.randn(kvh * hd, dim, dtype=DT, generator=g).requires_grad_()
    wv = torch.randn(kvh * hd, dim, dtype=DT, generator=g).requires_grad_()
    idx = torch.stack([torch.randperm(U, generator=g)[:n] for _ in range(D)])
    w = (torch.rand(D, n, dtype=DT, generator=g) + 0.1).requires_grad_()

    def kv_fn(mem: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (mem @ wk.t()).view(U, T, kvh, hd), (mem @ wv.t()).view(U, T, kvh, hd)

    return q, mem, wk, wv, idx, w, kv_fn


def _naive(
    q: torch.Tensor,
    mem: torch.Tensor,
    wk: torch.Tensor,
    wv: torch.Tensor,
    idx: torch.Tensor,
    w: torch.Tensor,
    kv_fn: KVFn,
    weighting: str,
) -> torch.Tensor:
    k, v = kv_fn(mem, wk, wv)
    D, Qt, H, hd = q.shape
    kvh = k.shape[2]
    out = []
    for d in range(D):
        ws = w[d][:, None, None, None]
        K = k[idx[d]] * (ws if weighting == "kv" else 1)  # (n, T, kvh, hd): the per-decision copy
        V = v[idx[d]] * (ws if weighting in ("kv", "v") else 1)
        K, V = K.flatten(0, 1), V.flatten(0, 1)
        bias = (w[d].log() if weighting == "logit" else torch.zeros_like(w[d])).repeat_interleave(k.shape[1])
        heads = []
        for h in range(H):
            j = h // (H // kvh)
            s = q[d, :, h] @ K[:, j].t() / math.sqrt(hd) + bias
            heads.append(torch.softmax(s, -1) @ V[:, j])
        out.append(torch.stack(heads, 1))
    return torch.stack(out)


@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize("block_elements", [1, 1 << 20])  # one tile per block, or all tiles at once
def test_outputs_and_gradients_match_the_naive_read(weighting: str, block_elements: int) -> None:
    _assert_matches_the_naive_read(_problem(), weighting, block_elements)


def _assert_matches_the_naive_read(
    problem: Problem, weighting: str, block_elements: int | None = None
) -> None:
    """routed_read's output and the gradients of every input equal the naive read's (float64)."""
    q, mem, wk, wv, idx, w, kv_fn = problem
    inputs = (q, mem, wk, wv, w)
    out = routed_read(q, idx, w, kv_fn, (mem, wk, wv), weighting, block_elements=block_elements)
    ref = _naive(q, mem, wk, wv, idx, w, kv_fn, weighting)
    probe = torch.randn_like(ref)
    got = torch.autograd.grad((out * probe).sum(), inputs)
    want = torch.autograd.grad((ref * probe).sum(), inputs)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    for name, a, b in zip(("q", "mem", "wk", "wv", "w"), got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"d{n}: {m}")


def test_nothing_chapter_sized_is_saved_for_backward() -> None:
    # 40 tiles x 3 chapters: a per-decision K/V copy would be 40 x 3 x T x kvh x hd per tensor.
    q, mem, wk, wv, idx, w, kv_fn = _problem(D=40, U=7)
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = routed_read(q, idx, w, kv_fn, (mem, wk, wv), "kv")
    inputs = {t.data_ptr() for t in (q, mem, wk, wv, idx, w)}
    new = [t for t in saved if t.data_ptr() not in inputs]
    # only the output and the log-sum-exp (D x H x Qt) are new
    assert sorted(t.numel() for t in new) == sorted([out.numel(), 40 * 4 * 3])
    out.sum().backward()
    assert mem.grad is not None and w.grad is not None


def test_bad_weighting_and_shapes_are_named() -> None:
    q, mem, wk, wv, idx, w, kv_fn = _problem()
    with pytest.raises(ValueError, match="chapter weighting 'k'"):
        routed_read(q, idx, w, kv_fn, (mem, wk, wv), "k")
    with pytest.raises(ValueError, match="must both be"):
        routed_read(q, idx[:, :2], w, kv_fn, (mem, wk, wv), "kv")


def test_forward_only_helper_agrees_with_the_function() -> None:
    q, mem, wk, wv, idx, w, kv_fn = _problem()
    k, v = kv_fn(mem, wk, wv)
    out, lse = routed_read_forward_torch(q.detach(), k.detach(), v.detach(), idx, w.detach(), "v", 8**-0.5)
    torch.testing.assert_close(out, routed_read(q, idx, w, kv_fn, (mem, wk, wv), "v").detach())
    assert lse.shape == (5, 4, 3)


def _chapter_major(monkeypatch: pytest.MonkeyPatch, block_elements: int) -> None:
    """Make RoutedRead's PyTorch loops run chapter-major whatever the shapes."""
    fwd, bwd = routed_read_forward_torch, routed_read_backward_torch
    monkeypatch.setattr(rr, "routed_read_forward_torch", lambda *a: fwd(*a[:7], block_elements, True))
    monkeypatch.setattr(rr, "routed_read_backward_torch", lambda *a: bwd(*a[:10], block_elements, True))


@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize(
    ("Qt", "block_elements"),
    [(1, 1), (1, 1 << 20), (3, 1 << 20)],  # one pair per block, whole chapters; tiles of several queries
)
def test_chapter_major_loops_match_the_naive_read(
    monkeypatch: pytest.MonkeyPatch, weighting: str, Qt: int, block_elements: int
) -> None:
    # 30 tiles over 7 chapters: most chapters are read by several tiles (and one tile's pairs span blocks)
    _chapter_major(monkeypatch, block_elements)
    _assert_matches_the_naive_read(_problem(D=30, Qt=Qt, seed=3), weighting)


def test_chapter_major_lse_and_an_unread_chapter() -> None:
    # Chapter 6 is read by no tile: its dk/dv rows stay 0; lse is the log-sum-exp over all n*T keys.
    q, mem, wk, wv, _, w, kv_fn = _problem(D=12, Qt=1, U=7, n=3, seed=5)
    idx = torch.stack([torch.randperm(6)[:3] for _ in range(12)])
    k, v = (t.detach() for t in kv_fn(mem, wk, wv))
    q, w = q.detach(), w.detach()
    args = (q, k, v, idx, w, "kv", 8**-0.5)
    out, lse = routed_read_forward_torch(*args, DEFAULT, True)
    out_t, lse_t = routed_read_forward_torch(*args, DEFAULT, False)
    torch.testing.assert_close(out, out_t, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, lse_t, atol=1e-12, rtol=1e-12)
    s = torch.einsum(
        "dhe,dkhe->dhk", q[:, 0], (k[idx] * w[..., None, None, None]).flatten(1, 2)[:, :, [0, 0, 1, 1]]
    )
    torch.testing.assert_close(lse[..., 0], torch.logsumexp(s * 8**-0.5, -1), atol=1e-12, rtol=1e-12)
    do = torch.randn_like(out)
    _, dk, dv, _ = routed_read_backward_torch(do, q, out, lse, k, v, idx, w, "kv", 8**-0.5, DEFAULT, True)
    assert dk[6].abs().max() == 0 and dv[6].abs().max() == 0
    assert (dk[:6].abs().sum((1, 2, 3)) > 0).all() and (dv[:6].abs().sum((1, 2, 3)) > 0).all()


def test_chapter_major_is_chosen_where_tiles_would_copy_each_chapter_many_times() -> None:
    text_token = reads_by_chapter(torch.Size([4096, 1, 4, 32]), torch.Size([128, 64, 4, 32]), 5)
    text_causal = reads_by_chapter(torch.Size([64, 64, 4, 32]), torch.Size([128, 64, 4, 32]), 5)
    toy_2k = reads_by_chapter(torch.Size([1088, 1, 2, 8]), torch.Size([128, 16, 1, 8]), 3)  # capacity MoC 2k
    toy_causal = reads_by_chapter(torch.Size([16, 68, 4, 4]), torch.Size([128, 16, 4, 4]), 3)
    assert text_token and text_causal and not toy_2k and not toy_causal
    # the boundary: exactly CHAPTER_MAJOR_MIN_COPIES entries per chapter
    q, k = torch.Size([rr.CHAPTER_MAJOR_MIN_COPIES // 16, 1, 1, 4]), torch.Size([2, 4, 2, 2])
    assert reads_by_chapter(q, k, 2) and not reads_by_chapter(q, k, 1)
