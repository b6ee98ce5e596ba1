"""The gathered read (the plain-ops read that torch.compile fuses on the CPU) against the naive float64
read: outputs and, through autograd, every gradient, for each chapter weighting and GQA layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moc.kernels.routed_read import gathered_read

sys.path.insert(0, str(Path(__file__).parent))
from naive_read import naive_read  # noqa: E402

DT = torch.float64


def _inputs(D: int, Qt: int, H: int, kvh: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    hd, U, T, n = 8, 9, 4, 3
    q = torch.randn(D, Qt, H, hd, dtype=DT, generator=g).requires_grad_()
    k = torch.randn(U, T, kvh, hd, dtype=DT, generator=g).requires_grad_()
    v = torch.randn(U, T, kvh, hd, dtype=DT, generator=g).requires_grad_()
    idx = torch.stack([torch.randperm(U, generator=g)[:n] for _ in range(D)])
    w = (torch.rand(D, n, dtype=DT, generator=g) + 0.1).requires_grad_()
    return q, k, v, idx, w


@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize(("Qt", "H", "kvh"), [(1, 2, 1), (3, 4, 2), (2, 4, 4)])
def test_gathered_read_matches_the_naive_read_and_its_gradients(
    weighting: str, Qt: int, H: int, kvh: int
) -> None:
    q, k, v, idx, w = _inputs(D=6, Qt=Qt, H=H, kvh=kvh)
    do = torch.randn(6, Qt, H, 8, dtype=DT, generator=torch.Generator().manual_seed(1))
    out = gathered_read(q, k, v, idx, w, weighting)
    grads = torch.autograd.grad(out, (q, k, v, w), do)
    ref = naive_read(q, k, v, idx, w, weighting)
    ref_grads = torch.autograd.grad(ref, (q, k, v, w), do)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    for name, a, b in zip("qkvw", grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"d{name}")


def test_gathered_read_uses_the_given_scale() -> None:
    q, k, v, idx, w = _inputs(D=3, Qt=2, H=2, kvh=1)
    # Doubling the scale is the same as doubling the queries.
    a = gathered_read(q, k, v, idx, w, "kv", scale=2.0 / 8**0.5)
    b = gathered_read(2 * q, k, v, idx, w, "kv")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("limit", "c_kernels", "path"), [(None, False, "gathered"), (0, False, "op"), (None, True, "op")]
)
def test_compiled_on_the_cpu_a_small_read_is_gathered_and_a_large_one_is_not(
    make_model, monkeypatch: pytest.MonkeyPatch, limit: int | None, c_kernels: bool, path: str
) -> None:
    """Under torch.compile on the CPU, a read the C kernels serve goes through the registered op (which
    runs them); otherwise a read within ``GATHERED_READ_ELEMENTS`` runs as plain gathered ops (what the
    compiler fuses) and a larger one keeps the op. Each matches eager."""
    import importlib

    from moc.model import read_backend

    # the modules (moc.kernels re-exports a function under the name routed_read)
    rr, op_mod = (importlib.import_module(f"moc.kernels.{m}") for m in ("routed_read", "op"))
    used: list[str] = []
    gathered, op = rr.gathered_read, op_mod.read
    monkeypatch.setattr(rr, "gathered_read", lambda *a: used.append("gathered") or gathered(*a))
    monkeypatch.setattr(op_mod, "read", lambda *a, **k: used.append("op") or op(*a, **k))
    if limit is not None:
        monkeypatch.setattr(read_backend, "GATHERED_READ_ELEMENTS", limit)
    monkeypatch.setattr(read_backend, "cpu_kernels_run", lambda *args: c_kernels)
    model = make_model("memory.routing=token", live_memory=True)
    ids = torch.randint(0, 256, (2, 12))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got, want = compiled(ids, labels=ids), model(ids, labels=ids)
    torch.testing.assert_close(got.loss, want.loss)
    grads = torch.autograd.grad(got.loss, list(model.parameters()), allow_unused=True)
    ref = torch.autograd.grad(want.loss, list(model.parameters()), allow_unused=True)
    for a, b in zip(grads, ref, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert set(used) == {path}
    torch._dynamo.reset()
