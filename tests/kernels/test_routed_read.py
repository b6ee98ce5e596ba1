"""The routed memory read (moc.kernels): blocked autograd Function and Triton kernel vs. a naive read.

The naive read here materialises each tile's weighted keys/values (the per-decision copy the kernel
exists to avoid) and runs an explicit softmax: written from the maths, sharing no code with the kernel.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable

import pytest
import torch

from moc.kernels.routed_read import routed_read, routed_read_forward_torch

DT = torch.float64
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
    q, mem, wk, wv, idx, w, kv_fn = _problem()
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


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_kernels_match_pytorch_in_the_interpreter() -> None:
    """The Triton forward and backward on the CPU (TRITON_INTERPRET=1, in a subprocess so the setting
    stays there); tile sizes that are not powers of two, grouped heads, all three weightings."""
    script = textwrap.dedent(
        """
        import torch
        from moc.kernels.routed_read import routed_read_backward_torch, routed_read_forward_torch
        from moc.kernels.triton_read import _BROKEN, triton_backward, triton_forward
        g = torch.Generator().manual_seed(0)
        D, Qt, H, hd, U, T, kvh, n = 3, 5, 4, 16, 6, 4, 2, 3
        q = torch.randn(D, Qt, H, hd, generator=g)
        k, v = torch.randn(U, T, kvh, hd, generator=g), torch.randn(U, T, kvh, hd, generator=g)
        idx = torch.stack([torch.randperm(U, generator=g)[:n] for _ in range(D)])
        w = torch.rand(D, n, generator=g).softmax(-1)
        do = torch.randn(D, Qt, H, hd, generator=g)
        for weighting in ("kv", "v", "logit"):
            o1, l1 = triton_forward(q, k, v, idx, w, weighting, hd ** -0.5)
            o2, l2 = routed_read_forward_torch(q, k, v, idx, w, weighting, hd ** -0.5)
            torch.testing.assert_close(o1, o2, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(l1, l2, atol=1e-5, rtol=1e-5)
            args = (do, q, o2, l2, k, v, idx, w, weighting, hd ** -0.5)
            got, want = triton_backward(*args), routed_read_backward_torch(*args)
            for name, a, b in zip("dq dk dv dw".split(), got, want):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
        assert not _BROKEN, _BROKEN  # the kernels ran (no silent fallback)
        print("ok")
        """
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_forward_only_helper_agrees_with_the_function() -> None:
    q, mem, wk, wv, idx, w, kv_fn = _problem()
    k, v = kv_fn(mem, wk, wv)
    out, lse = routed_read_forward_torch(q.detach(), k.detach(), v.detach(), idx, w.detach(), "v", 8**-0.5)
    torch.testing.assert_close(out, routed_read(q, idx, w, kv_fn, (mem, wk, wv), "v").detach())
    assert lse.shape == (5, 4, 3)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_a_failing_kernel_falls_back_once_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from moc.kernels import triton_read

    def broken(*args: object) -> None:
        raise RuntimeError("no such GPU feature")

    monkeypatch.setattr(triton_read, "unsupported", lambda q, k: None)
    monkeypatch.setattr(triton_read, "_launch", broken)
    monkeypatch.setattr(triton_read, "_BROKEN", [])
    monkeypatch.setattr(triton_read, "_WARNED", set())
    q, mem, wk, wv, idx, w, kv_fn = _problem()
    k, v = kv_fn(mem, wk, wv)
    args = (q.detach(), k.detach(), v.detach(), idx, w.detach(), "kv", 8**-0.5)
    with pytest.warns(UserWarning, match="no such GPU feature"):
        out, lse = triton_read.triton_forward(*args)
    torch.testing.assert_close(out, routed_read_forward_torch(*args)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once only
        triton_read.triton_forward(*args)
