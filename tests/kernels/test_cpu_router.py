"""The router head's C kernels (moc.kernels.cpu_router, through the op moc.kernels.router_op) in float32
against the float64 PyTorch head, on the edges of their vector loops: row lengths around a vector, ties,
invalid decisions, large scores; and what happens where they cannot run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from moc import errors
from moc.kernels import cpu_build, cpu_router, router_op
from moc.kernels.router_head import head_backward_torch, head_forward_torch

# Only a missing compiler skips: a kernel that does not build is a failure.
pytestmark = pytest.mark.skipif(not cpu_build.has_compiler(), reason="no C compiler to build the CPU kernels")
NAMES = ("top_p", "top_i", "load_balance", "z_loss", "counts", "entropy",
         "probs", "lse", "routed_share", "shared_p")  # fmt: skip


def _inputs(N: int, C: int, scale: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(N, C, generator=g), (torch.rand(N, generator=g) > 0.25).float()


def _op(scores: torch.Tensor, w: torch.Tensor, n_shared: int, k: int) -> tuple[torch.Tensor, ...]:
    """The registered op on the scores themselves (an identity weight, a zero bias)."""
    eye, zero = torch.eye(scores.shape[1]), torch.zeros(scores.shape[1])
    return router_op.router_head(scores, eye, zero, w, n_shared, k)


def _c_scores_grad(*args: torch.Tensor) -> torch.Tensor:
    """The C backward's gradient on the scores themselves: through an identity weight, dx is it exactly."""
    probs, shared_p = args[4], args[9]
    C = shared_p.shape[1] + probs.shape[1]
    x, eye = probs.new_zeros(probs.shape[0], C), torch.eye(C, dtype=probs.dtype)
    return cpu_router.backward_to_linear(*args, x, eye)[0]


def _backward(head: tuple[torch.Tensor, ...], w: torch.Tensor, fn: object, seed: int = 1) -> torch.Tensor:
    """The gradient on the scores for fixed upstream gradients (top_p, load balance, z-loss)."""
    top_p, top_i, _, _, counts, _, probs, lse, share, shared_p = head
    g = torch.Generator().manual_seed(seed)
    d_top = torch.randn(top_p.shape, generator=g, dtype=top_p.dtype)
    d_lb, d_z = torch.tensor(0.7, dtype=top_p.dtype), torch.tensor(-1.3, dtype=top_p.dtype)
    return fn(d_top, d_lb, d_z, w.to(top_p.dtype), probs, top_p, top_i, lse, share, shared_p, counts)  # type: ignore[operator]


SIZES = [(1, 1, 1), (15, 0, 2), (16, 1, 3), (17, 2, 4), (63, 1, 2), (64, 3, 2), (65, 1, 1), (511, 1, 2)]


@pytest.mark.parametrize(("n_routed", "n_shared", "k"), SIZES)
@pytest.mark.parametrize("scale", [3.0, 60.0])
def test_float32_kernels_are_as_close_to_float64_as_pytorch_float32(
    n_routed: int, n_shared: int, k: int, scale: float
) -> None:
    """Rows shorter and longer than a vector (16 floats) and than the four-vector groups (64), with scores
    at the size a router sees and at 20x that (exp's range): every output and the scores' gradient are
    within a few times PyTorch's own float32 error of the float64 reference."""
    scores, w = _inputs(37, n_shared + n_routed, scale, seed=n_routed + k)
    exact = head_forward_torch(scores.double(), w.double(), n_shared, k)
    c, pt = cpu_router.forward(scores, w, n_shared, k), head_forward_torch(scores, w, n_shared, k)
    clear = exact[0] > 1e-30  # a pick among probabilities that underflow to 0 in float32 is a tie there
    assert torch.equal(c[1][clear], exact[1][clear]), "the picks differ from float64's"
    if not torch.equal(c[1], exact[1]):  # such a tie went elsewhere: the references count C's own picks
        exact = _with_picks(exact, c[1], w.double(), k)
        pt = _with_picks(pt, c[1], w, k)
    for name, a, b, ref in zip(NAMES, c, pt, exact, strict=True):
        if name != "top_i" and ref.numel():  # (no shared chapters: shared_p is empty)
            own = (b.double() - ref).abs().max().item()
            bound = 4 * own + 1e-6 * max(1.0, ref.abs().max().item())
            assert (a.double() - ref).abs().max().item() <= bound, name
    g_exact = _backward(exact, w, head_backward_torch)
    g_c, g_pt = _backward(c, w, _c_scores_grad), _backward(pt, w, head_backward_torch)
    own = (g_pt.double() - g_exact).abs().max().item()
    assert (g_c.double() - g_exact).abs().max().item() <= 4 * own + 1e-6


def _with_picks(head: tuple[torch.Tensor, ...], top_i: torch.Tensor, w: torch.Tensor, k: int) -> tuple:
    """``head`` with its picks, counts and load balance recomputed for the picks ``top_i``."""
    probs = head[6]
    n, n_routed = w.sum().clamp(min=1), probs.shape[1]
    counts = torch.zeros(n_routed, dtype=probs.dtype).index_add_(0, top_i.reshape(-1), w.repeat_interleave(k))
    lb = n_routed * (counts * (w @ probs)).sum() / (n * k * n)
    return (probs.gather(1, top_i), top_i, lb, head[3], counts, *head[5:])


def _stable_top_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(-probs, dim=-1, stable=True).indices[..., :k]


@pytest.mark.parametrize(("n_routed", "k"), [(5, 1), (5, 5), (40, 3), (511, 3), (40, 17), (511, 20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_the_lowest_index_across_lanes_and_vectors(
    n_routed: int, k: int, dtype: torch.dtype
) -> None:
    """Scores on four levels: equal maxima in different lanes, vectors and groups of the row. Each pick
    is the lowest index among equal probabilities, as topk's; a one-hot row and a flat row too. A k above
    a vector's lanes (16 float32, 8 float64) takes the kernel's other top-k (arg-max passes)."""
    g = torch.Generator().manual_seed(n_routed + k)
    scores = torch.randint(0, 4, (30, 1 + n_routed), generator=g).to(dtype)
    scores[0], scores[1, 1 + n_routed // 2] = 0.0, 50.0
    top_p, top_i, *_, probs, _, _, _ = cpu_router.forward(scores, torch.ones(30, dtype=dtype), 1, k)
    assert torch.equal(top_i, _stable_top_k(probs, k))
    assert torch.equal(top_p, probs.gather(1, top_i))
    assert top_i[0].tolist() == list(range(k)) and top_i[1, 0] == n_routed // 2


@pytest.mark.parametrize(("n_routed", "n_shared", "dim"), [(1, 0, 1), (15, 1, 5), (64, 2, 16), (511, 1, 17)])
@pytest.mark.parametrize("bias", [True, False])
def test_scores_made_in_the_kernel_match_float64(n_routed: int, n_shared: int, dim: int, bias: bool) -> None:
    """forward_from_linear (the kernel scores x W^T + b itself, ROWS = 4 decisions at a time): 1-9
    decisions (whole and partial groups), rows around a vector, router inputs around one, against the
    float64 head on the float64 scores."""
    g = torch.Generator().manual_seed(n_routed + dim)
    C = n_shared + n_routed
    for N in (1, 3, 4, 9):
        x, weight = torch.randn(N, dim, generator=g), torch.randn(C, dim, generator=g)
        b = 2 * torch.randn(C, generator=g) if bias else None
        w = (torch.rand(N, generator=g) > 0.25).float()
        scores = x.double() @ weight.double().t() + (b.double() if b is not None else 0)
        exact = head_forward_torch(scores, w.double(), n_shared, 1)
        got = cpu_router.forward_from_linear(x, weight, b, w, n_shared, 1)
        clear = exact[0][:, 0] > 1e-30
        assert torch.equal(got[1][clear], exact[1][clear]), f"picks, N={N}"
        for name, a, ref in zip(NAMES, got, exact, strict=True):
            if name not in ("top_i", "counts", "load_balance") and ref.numel():
                torch.testing.assert_close(a.double(), ref, atol=2e-5, rtol=1e-4, msg=f"{name}, N={N}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_bias_is_added_as_the_rows_are_read(dtype: torch.dtype) -> None:
    """forward(scores, bias=b) gives the bits of forward(scores + b): the same float sum, in the kernel."""
    scores, w = (t.to(dtype) for t in _inputs(50, 2 + 77))
    bias = 2 * torch.randn(79, generator=torch.Generator().manual_seed(3))
    added = cpu_router.forward(scores + bias.to(dtype), w, 2, 3)
    folded = cpu_router.forward(scores, w, 2, 3, bias)
    for name, a, b in zip(NAMES, added, folded, strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match=r"one entry per chapter, \(79,\)"):
        cpu_router.forward(scores, w, 2, 3, bias[:-1])


def test_invalid_decisions_count_for_nothing_and_an_empty_batch_is_zero() -> None:
    scores, w = _inputs(20, 33)
    full = cpu_router.forward(scores, w, 1, 2)
    kept = cpu_router.forward(scores[w > 0], torch.ones(int(w.sum())), 1, 2)
    for name in ("load_balance", "z_loss", "counts", "entropy"):
        i = NAMES.index(name)
        torch.testing.assert_close(full[i], kept[i], msg=name)
    empty = cpu_router.forward(scores[:0], w[:0], 1, 2)
    assert empty[0].shape == (0, 2) and empty[4].eq(0).all()
    assert float(empty[2]) == float(empty[3]) == float(empty[5]) == 0.0


def test_reruns_are_bit_identical() -> None:
    scores, w = _inputs(300, 129)
    first, second = cpu_router.forward(scores, w, 1, 2), cpu_router.forward(scores, w, 1, 2)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(_backward(first, w, _c_scores_grad), _backward(second, w, _c_scores_grad))


def test_the_op_compiles_whole_and_matches_eager() -> None:
    x, w = _inputs(50, 16)
    weight, bias = torch.randn(70, 16) / 4, torch.randn(70)

    def loss(s: torch.Tensor) -> torch.Tensor:
        top_p, _, lb, z, _, entropy = router_op.router_head(s, weight, bias, w, 2, 3)
        return (top_p * torch.arange(3.0)).sum() + 0.7 * lb - 1.3 * z + 0 * entropy

    eager_s, compiled_s = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight.requires_grad_()
    eager = loss(eager_s)
    (eager_dx, eager_dw) = torch.autograd.grad(eager, [eager_s, weight])
    compiled = torch.compile(loss, fullgraph=True)(compiled_s)
    (compiled_dx, compiled_dw) = torch.autograd.grad(compiled, [compiled_s, weight])
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_dx, eager_dx)
    torch.testing.assert_close(compiled_dw, eager_dw)


def test_a_top_k_larger_than_the_routed_chapters_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="top_k=5 must be between 1 and the 4 routed chapters"):
        router_op.router_head(torch.randn(3, 2), torch.randn(5, 2), torch.zeros(5), torch.ones(3), 1, 5)
    with pytest.raises(ValueError, match="runs on the CPU, not meta: on other devices use .*RouterHead"):
        x = torch.randn(3, 2, device="meta")
        router_op.router_head(x, torch.randn(5, 2), torch.zeros(5), torch.ones(3), 1, 2)
    with pytest.raises(TypeError, match="x, weight and bias of one dtype"):
        x, weight = torch.randn(3, 2), torch.randn(5, 2, dtype=torch.float64)
        router_op.router_head(x, weight, torch.zeros(5), torch.ones(3), 1, 2)


def test_without_a_compiler_it_says_so_once_and_runs_the_pytorch_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert "float32 and float64, not torch.bfloat16" in cpu_router.unavailable(torch.bfloat16)
    scores, w = _inputs(10, 9)
    with_c = _op(scores, w, 1, 2)
    monkeypatch.setattr(cpu_build, "compiler", lambda: None)
    monkeypatch.setattr(errors, "_WARNED", set())
    cpu_router._library.cache_clear()
    cpu_build.library.cache_clear()
    try:
        said = r"router head: CPU kernel unavailable \(no C compiler found.*memory.kernel: torch"
        with pytest.warns(UserWarning, match=said):
            without = _op(scores, w, 1, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _op(scores, w, 1, 2)  # said once
    finally:
        cpu_router._library.cache_clear()
        cpu_build.library.cache_clear()
    want = head_forward_torch(scores, w, 1, 2)[:6]
    for a, b in zip(without, want, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(with_c[1], without[1])


def test_one_library_per_dtype_is_built_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOC_CACHE_DIR", str(tmp_path))
    cpu_router._library.cache_clear()
    cpu_build.library.cache_clear()
    try:
        assert cpu_router.unavailable(torch.float32) is None and cpu_router.unavailable(torch.float64) is None
        built = sorted(p.name for p in (tmp_path / "kernels").iterdir())
        assert [n.rsplit("_", 1)[0] for n in built] == ["cpu_router_double", "cpu_router_float"], built
    finally:
        cpu_router._library.cache_clear()
        cpu_build.library.cache_clear()


def test_the_router_bench_times_both_heads_eager_and_compiled() -> None:
    import subprocess
    import sys

    bench = Path(__file__).parents[2] / "bench" / "router_head.py"
    out = subprocess.run(
        [sys.executable, str(bench), "--chapters", "8", "--dim", "4", "--decisions", "20", "--rounds", "1",
         "--steps", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    rows = {line[:14].strip(): line[14:].split() for line in out.splitlines()[2:]}
    assert set(rows) == {"auto", "torch", "c op"}
    assert all(len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0 for v in rows.values())


def test_a_row_of_nan_scores_picks_chapters_that_exist() -> None:
    """A diverged run's NaN scores propagate as NaN, and the picks stay real chapter ids (a pick in the
    padding past the last chapter would count into memory that is not there)."""
    for n_routed in (5, 40, 64):
        scores = torch.randn(6, 1 + n_routed)
        scores[2] = float("nan")
        top_p, top_i, lb, *_ = cpu_router.forward(scores, torch.ones(6), 1, 2)
        assert top_i.ge(0).all() and top_i.lt(n_routed).all() and top_i[2].unique().numel() == 2
        assert top_p[2].isnan().all() and lb.isnan()
