"""The backbone's attention (moc.model.layers.scaled_dot_product_attention) against attention written out
in float64: head dims below, at and above the CPU's padding threshold, causal, boolean and additive
masks, grouped-query heads, outputs and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from moc.model import layers
from moc.model.layers import CPU_SDPA_MIN_HEAD_DIM, scaled_dot_product_attention


def _naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v, each query head reading its group's key/value head."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is None:
        L, S = scores.shape[-2:]
        mask = torch.ones(L, S, dtype=torch.bool).tril(S - L)
    scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("hd", [4, 8, 15, 16, 24])
@pytest.mark.parametrize("mask_kind", ["causal", "bool", "additive"])
def test_attention_matches_float64_for_head_dims_around_the_padding(hd: int, mask_kind: str) -> None:
    g = torch.Generator().manual_seed(hd)
    B, H, Hkv, L = 2, 4, 2, 7
    q = torch.randn(B, H, L, hd, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, L, hd, generator=g, dtype=torch.float64) for _ in range(2))
    mask = None
    if mask_kind == "bool":  # two packed documents per row
        doc = torch.tensor([0, 0, 0, 1, 1, 1, 1])
        mask = ((doc[:, None] == doc[None]) & torch.ones(L, L, dtype=torch.bool).tril()).expand(B, 1, L, L)
    elif mask_kind == "additive":
        mask = torch.randn(B, 1, L, L, generator=g, dtype=torch.float64)
    want = _naive(*(x.clone().requires_grad_() for x in (q, k, v)), mask)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    inputs = [x.float().requires_grad_() for x in (q, k, v)]
    got = scaled_dot_product_attention(
        *inputs, None if mask is None else mask if mask.dtype == torch.bool else mask.float(),
        is_causal=mask is None, enable_gqa=True,
    )  # fmt: skip
    assert got.shape == (B, H, L, hd)
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)
    ref_inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    _naive(*ref_inputs, mask).backward(grad)
    got.backward(grad.float())
    for name, a, b in zip("qkv", inputs, ref_inputs, strict=True):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_below_the_threshold_the_cpu_attention_runs_padded(monkeypatch: pytest.MonkeyPatch) -> None:
    """What SDPA itself receives: head dims below the threshold padded to it, others as they are."""
    seen: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        seen.append(q.shape[-1])
        return sdpa(q, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(layers.F, "scaled_dot_product_attention", spy)
    for hd in (8, 16, 24):
        x = torch.randn(1, 2, 3, hd)
        scaled_dot_product_attention(x, x, x, None, is_causal=True, enable_gqa=False)
    assert seen == [CPU_SDPA_MIN_HEAD_DIM, 16, 24]


def test_the_head_dim_bench_times_each_dim_as_is_and_padded() -> None:
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).parents[2] / "bench" / "attention_head_dim.py"
    run = [sys.executable, str(bench), "--dims", "8,16", "--batch", "1", "--seq", "8", "--rounds", "1",
           "--steps", "1"]  # fmt: skip
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows.keys() == {"8", "16"}
    assert rows["8"][2] == "16" and rows["8"][4].endswith("x") and len(rows["16"]) == 2
    assert all(float(rows[d][1]) > 0 for d in rows)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_norms_and_the_loss_keep_float64_and_widen_only_narrower_dtypes(dtype: torch.dtype) -> None:
    """RMSNorm, rms_normalize and the LM loss compute in float32 or the input's dtype if wider: a float64
    model's normalisation matches float64 maths to 1e-12, not to float32's 1e-7."""
    from moc.model.layers import RMSNorm, float32_or_wider, rms_normalize
    from moc.model.loss import chunked_linear_cross_entropy

    g = torch.Generator().manual_seed(0)
    x = (1 + torch.rand(5, 7, generator=g, dtype=torch.float64) * 1e-3).to(dtype)  # near-equal entries
    exact = x.double() / x.double().square().mean(-1, keepdim=True).add(1e-6).sqrt()
    norm = RMSNorm(7, eps=1e-6).to(dtype)
    for got in (norm(x), rms_normalize(x, 1e-6)):
        assert got.dtype == dtype
        tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2}[dtype]
        torch.testing.assert_close(got.double(), exact, rtol=tol, atol=tol)
    assert float32_or_wider(x).dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    h, w = (torch.randn(n, 7, generator=g, dtype=torch.float64) for n in (6, 11))
    labels = torch.randint(0, 11, (6,), generator=g)
    loss = chunked_linear_cross_entropy(h.to(dtype), w.to(dtype), labels, chunk_size=4)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    if dtype == torch.float64:
        want = torch.nn.functional.cross_entropy(h @ w.t(), labels)
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
