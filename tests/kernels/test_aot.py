"""The read's Triton kernels compiled ahead of time for an A100 (sm_80) and an H100 (sm_90a) on this
CPU machine (moc.kernels.aot: Triton's compiler and its bundled ptxas): every autotune config of the
backward and of the grouped forward in bf16 at head size 64 compiles with no spilled register and
within the card's shared memory. The full matrix (every kernel, fp16 and bf16, head sizes 64 and 128,
every weighting) is `make aot-table`, whose table is in docs/benchmarks.md."""

from __future__ import annotations

import os

import pytest

from moc.kernels import aot

WHY = aot.missing()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"no AOT compile check: {WHY}")


@pytest.fixture(autouse=True)
def _fp_fusion(monkeypatch: pytest.MonkeyPatch) -> None:
    # Triton 3.9 warns unless this is set; 1 is its default (and what a launch on the GPU compiles)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", os.environ.get("TRITON_DEFAULT_FP_FUSION", "1"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.mark.parametrize(
    "variant", aot.variants(fast=True), ids=lambda v: f"{v.kernel}-{v.target}-w{v.num_warps}s{v.num_stages}"
)
def test_kernel_compiles_without_spills_within_shared_memory(variant: aot.Variant) -> None:
    r = aot.compile_variant(variant)
    assert not r.error, r.error
    assert r.spill_bytes == 0, f"{variant}: {r.registers} registers, {r.spill_bytes} bytes spilled"
    assert r.shared_bytes <= aot.SHARED_LIMIT[variant.target], (variant, r.shared_bytes)
    assert 0 < r.registers <= 255


def test_the_check_sees_a_spilling_kernel() -> None:
    """The backward with 64-row steps and 4 warps at head size 128 spills on sm_80: the check must say
    so (it reads ptxas's own report, not a guess)."""
    import moc.kernels.triton_read as tr

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tr, "BLOCK_M_BWD", 64)
        r = aot.compile_variant(aot.Variant("_grouped_bwd", "sm_80", "bfloat16", 128, 4, 2, "kv"))
    assert not r.error and r.spill_bytes > 0 and not r.ok, r


def test_the_check_sees_a_kernel_over_the_shared_memory_of_an_a100() -> None:
    r = aot.Compiled(aot.Variant("_tiles_fwd", "sm_80", "bfloat16", 64, 4, 2), 100, 0, 170 * 1024, 0.0)
    assert not r.ok and aot.Compiled(r.variant, 100, 0, 160 * 1024, 0.0).ok
