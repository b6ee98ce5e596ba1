"""The helpers the C kernels share (moc/kernels/cpu_common.h), built with the kernels' own flags: the
vectorised float32 exp against float64, and the folded lane sums against plain sums."""

from __future__ import annotations

import ctypes
import subprocess

import numpy as np
import pytest

from moc.kernels import cpu_build

pytestmark = pytest.mark.skipif(not cpu_build.has_compiler(), reason="no C compiler to build the CPU kernels")

SOURCE = r"""
#include <stdint.h>
typedef float real;
#define LANES 16
#include "cpu_common.h"
void exp_many(const float *x, float *y, int64_t n) { /* n a multiple of LANES */
    for (int64_t i = 0; i < n; i += LANES) *(vec *)(y + i) = exp_v(load(x + i));
}
void sums(const float *x, float *out, int n) { /* n vectors of LANES, each summed across its lanes */
    vec v[64];
    for (int i = 0; i < n; i++) v[i] = load(x + i * LANES);
    hsums(v, n, out);
}
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    folder = tmp_path_factory.mktemp("common")
    (folder / "t.c").write_text(SOURCE)
    out = folder / "t.so"
    cmd = [cpu_build.compiler(), *cpu_build.FLAGS, "-DFAST_EXP", f"-I{cpu_build.KERNEL_DIR}",
           str(folder / "t.c"), "-o", str(out), "-lm"]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True)
    return ctypes.CDLL(str(out))


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def test_exp_is_within_one_ulp_on_the_normal_range_and_zero_below(lib: ctypes.CDLL) -> None:
    """Every 256th float in [-87, 0] (4M values): within 1 ulp of float64's exp. Below the range, -inf
    included, exactly 0; NaN stays NaN."""
    lo = np.float32(-87.0).view(np.int32)  # negative floats: larger bit patterns are more negative
    bits = np.arange(np.int32(-(2**31)), lo, 256, dtype=np.int64).astype(np.int32)
    x = np.concatenate([bits.view(np.float32), np.float32([0.0, -1e-30, -0.5, -1.0])])
    x = np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])
    y = np.empty_like(x)
    lib.exp_many(_ptr(x), _ptr(y), ctypes.c_int64(len(x)))
    exact = np.exp(x.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert (np.abs(y - exact) / ulp).max() <= 1.0
    below = np.float32([-87.5, -100.0, -1e4, -3.4e38, -np.inf] + [np.nan] + [-200.0] * 10)
    y = np.empty_like(below)
    lib.exp_many(_ptr(below), _ptr(y), ctypes.c_int64(16))
    assert (y[:5] == 0).all() and np.isnan(y[5]) and (y[6:] == 0).all()


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17, 40])
def test_folded_lane_sums_are_the_sums_of_each_vector(lib: ctypes.CDLL, n: int) -> None:
    """hsums against float64 sums, for counts below, at and past a group of 8 vectors; each vector's
    lanes distinct, so a sum taken from the wrong vector or lane shows."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 16)).astype(np.float32) + np.arange(n, dtype=np.float32)[:, None] * 100
    out = np.full(n + 1, 7.0, np.float32)  # one past the end: must stay untouched
    lib.sums(_ptr(x), _ptr(out), ctypes.c_int(n))
    np.testing.assert_allclose(out[:n], x.astype(np.float64).sum(1), rtol=1e-6, atol=1e-4)
    assert out[n] == 7.0

