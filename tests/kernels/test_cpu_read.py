"""The routed read's C kernels (moc.kernels.cpu_read) against the naive float64 read: outputs and every
gradient, per chapter weighting, GQA layout and dtype; where they cannot run, the reason is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moc.kernels import cpu_build, cpu_read
from moc.kernels.routed_read import routed_read_backward_torch, routed_read_forward_torch

sys.path.insert(0, str(Path(__file__).parent))
from naive_read import naive_grads  # noqa: E402

pytestmark = pytest.mark.skipif(
    cpu_read.unavailable(torch.float32, 4) is not None, reason="no C compiler to build the CPU kernels"
)


def _inputs(
    D: int, Qt: int, H: int, kvh: int, hd: int = 8, T: int = 4, n: int = 3,
    dtype: torch.dtype = torch.float64, seed: int = 0,
) -> tuple[torch.Tensor, ...]:  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    U = 9
    q = torch.randn(D, Qt, H, hd, dtype=dtype, generator=g)
    k = torch.randn(U, T, kvh, hd, dtype=dtype, generator=g)
    v = torch.randn(U, T, kvh, hd, dtype=dtype, generator=g)
    idx = torch.stack([torch.randperm(U, generator=g)[:n] for _ in range(D)])
    w = torch.rand(D, n, dtype=dtype, generator=g) + 0.1
    do = torch.randn(D, Qt, H, hd, dtype=dtype, generator=g)
    return q, k, v, idx, w, do


def _read(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, w: torch.Tensor,
          do: torch.Tensor, weighting: str) -> tuple[torch.Tensor, ...]:  # fmt: skip
    scale = q.shape[-1] ** -0.5
    out, lse = cpu_read.forward(q, k, v, idx, w, weighting, scale)
    return (out, *cpu_read.backward(do, q, out, lse, k, v, idx, w, weighting, scale))


@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize(("Qt", "H", "kvh", "hd", "T"), [(1, 2, 1, 8, 16), (3, 4, 2, 8, 4), (2, 4, 4, 16, 8)])
def test_the_c_kernels_match_the_naive_read_and_its_gradients(
    weighting: str, Qt: int, H: int, kvh: int, hd: int, T: int
) -> None:
    q, k, v, idx, w, do = _inputs(D=6, Qt=Qt, H=H, kvh=kvh, hd=hd, T=T)
    got = _read(q, k, v, idx, w, do, weighting)
    want = naive_grads(do, q, k, v, idx, w, weighting)
    for name, a, b in zip(("out", "dq", "dk", "dv", "dw"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("weighting", ["kv", "logit"])
@pytest.mark.parametrize("spread", [1.0, 60.0])  # ordinary scores, and scores that push exp to its clamps
def test_float32_is_as_accurate_as_the_pytorch_path(weighting: str, spread: float) -> None:
    """float32 uses the kernels' own vectorised exp: against float64, each output and gradient is within
    a few times the error of the PyTorch loops in float32."""
    q, k, v, idx, w, do = _inputs(D=8, Qt=1, H=2, kvh=1, hd=8, T=16, dtype=torch.float32)
    q = q * spread
    got = _read(q, k, v, idx, w, do, weighting)
    want = naive_grads(do, q, k, v, idx, w, weighting)
    scale = q.shape[-1] ** -0.5
    out, lse = routed_read_forward_torch(q, k, v, idx, w, weighting, scale)
    torch_path = (out, *routed_read_backward_torch(do, q, out, lse, k, v, idx, w, weighting, scale))
    for name, a, b, t in zip(("out", "dq", "dk", "dv", "dw"), got, want, torch_path, strict=True):
        assert a.dtype == torch.float32
        err, torch_err = ((x.double() - b).abs().max().item() for x in (a, t))
        assert err <= 4 * torch_err + 1e-7 * b.abs().max().item(), (name, err, torch_err)


def test_a_chapter_of_weight_zero_is_not_read_under_logit_weighting() -> None:
    q, k, v, idx, w, do = _inputs(D=4, Qt=2, H=2, kvh=1)
    w[:, 1] = 0.0  # log w = -inf: its keys get no attention at all
    out = _read(q, k, v, idx, w, do, "logit")[0]
    keep = [0, 2]
    ref = naive_grads(do, q, k, v, idx[:, keep], w[:, keep], "logit")[0]
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


def test_the_same_inputs_give_the_same_bits() -> None:
    q, k, v, idx, w, do = _inputs(D=32, Qt=1, H=2, kvh=1, T=16, dtype=torch.float32)
    first, second = _read(q, k, v, idx, w, do, "kv"), _read(q, k, v, idx, w, do, "kv")
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def _padded_tokens_last(k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k and v as moc.model.memory projects them on the CPU: one buffer (2, Hkv, hd, U T + T), each
    chapter's tokens adjacent, rows padded by a chapter; seen as (U, T, Hkv, hd)."""
    U, T, kvh, hd = k.shape
    buf = torch.zeros(2, kvh, hd, U * T + T, dtype=k.dtype)
    buf[..., : U * T] = torch.stack([k, v]).permute(0, 3, 4, 1, 2).reshape(2, kvh, hd, U * T)
    kv = buf[..., : U * T].view(2, kvh, hd, U, T)
    return kv[0].permute(2, 3, 0, 1), kv[1].permute(2, 3, 0, 1)


@pytest.mark.parametrize(("H", "kvh", "hd", "T"), [(2, 1, 8, 16), (4, 2, 8, 4)])
def test_keys_and_values_in_any_layout_give_the_same_bits(H: int, kvh: int, hd: int, T: int) -> None:
    """Contiguous k, v (copied tokens last), k, v of the memory layer's padded tokens-last buffer and a
    dense tokens-last copy (both read in place) give the same bits; dk, dv come back laid out as the
    tokens-last k, v that were read."""
    q, k, v, idx, w, do = _inputs(D=7, Qt=1, H=H, kvh=kvh, hd=hd, T=T, dtype=torch.float32)
    first = _read(q, k, v, idx, w, do, "kv")
    padded = _padded_tokens_last(k, v)
    assert padded[0].stride(1) == 1 and torch.equal(padded[0], k) and torch.equal(padded[1], v)
    dense = tuple(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for x in (k, v))
    for kk, vv in (padded, dense):
        got = _read(q, kk, vv, idx, w, do, "kv")
        for name, a, b in zip(("out", "dq", "dk", "dv", "dw"), got, first, strict=True):
            assert torch.equal(a, b), name
        for grad, x in zip(got[2:4], (kk, vv), strict=True):
            assert grad.stride() == x.stride()
    assert first[2].stride() == dense[0].stride()  # contiguous k: its tokens-last copy's layout


def test_what_the_kernels_cannot_take_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "float32 and float64, not torch.bfloat16" in cpu_read.unavailable(torch.bfloat16, 16)
    assert "power of two, not 12" in cpu_read.unavailable(torch.float32, 12)
    assert "at most 64 chapters per decision, not 65" in cpu_read.unavailable(torch.float32, 16, 8, 65)
    monkeypatch.setattr(cpu_build, "compiler", lambda: None)
    assert "no C compiler found: install gcc or set CC" in cpu_read.unavailable(torch.float32, 16)


def _forget_built_libraries() -> None:
    cpu_read._library.cache_clear()
    cpu_build.library.cache_clear()


def test_the_library_is_built_once_per_size_into_the_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOC_CACHE_DIR", str(tmp_path))
    run, builds = cpu_build.subprocess.run, []

    def counting_run(cmd: list[str], **kwargs: object) -> object:
        builds.extend([cmd] if "-shared" in cmd else [])
        return run(cmd, **kwargs)

    monkeypatch.setattr(cpu_build.subprocess, "run", counting_run)
    _forget_built_libraries()
    try:
        assert cpu_read.unavailable(torch.float32, 8, 4) is None
        built = sorted(p.name for p in (tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].startswith("cpu_read_float_hd4_tc8_"), built
        _forget_built_libraries()  # as a new process: it finds the file instead of compiling
        assert cpu_read.unavailable(torch.float32, 8, 4) is None
        assert cpu_read.unavailable(torch.float64, 8, 4) is None  # another dtype: its own library
        assert len(builds) == 2
    finally:
        _forget_built_libraries()


def test_small_tiles_suit_the_kernels_and_large_ones_the_matrix_products() -> None:
    assert cpu_read.suits(8, 16)  # the capacity models' reads
    assert not cpu_read.suits(32, 64)  # the real-text demo's
