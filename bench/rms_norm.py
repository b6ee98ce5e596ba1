"""RMS normalisation's CPU forward and backward: PyTorch's ``F.rms_norm`` against moc's C kernels.

For each shape, one eager forward and backward (gradients on x and, with a scale, on the weight) through
``F.rms_norm``, which PyTorch's CPU autograd differentiates through its decomposition, and through
``moc.kernels.cpu_norm.RMSNormFunction`` (what ``moc.model.layers.rms_norm`` runs eager on the CPU).
Both interleaved in one process on one thread, timed in CPU seconds of the process, median of the
rounds. Defaults: the capacity presets' norms (16 x 68 tokens of width 16 and 24 with a scale; the
8k-token bank of width 16 without)::

    python bench/rms_norm.py
    python bench/rms_norm.py --shapes 2048x512w,65536x64
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from interleave import time_interleaved

from moc.kernels.cpu_norm import RMSNormFunction


def make_run(rows: int, dim: int, scaled: bool, fused: bool) -> Callable[[], None]:
    g = torch.Generator().manual_seed(rows * dim)
    x = torch.randn(rows, dim, generator=g, requires_grad=True)
    weight = torch.randn(dim, generator=g, requires_grad=True) if scaled else None
    grad = torch.randn(rows, dim, generator=g)

    def run() -> None:
        out = RMSNormFunction.apply(x, weight, 1e-5) if fused else F.rms_norm(x, (dim,), weight, 1e-5)
        out.backward(grad)

    return run


def parse_shape(text: str) -> tuple[int, int, bool]:
    """The shape "1088x16w" -> (1088, 16, True): rows x width, "w" for a learned scale."""
    scaled = text.endswith("w")
    rows, dim = text.rstrip("w").split("x")
    return int(rows), int(dim), scaled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="1088x16w,1088x24w,8192x16", help="ROWSxWIDTH[w], w: with a scale")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    runs: dict[tuple[tuple[int, int, bool], bool], Callable[[], None]] = {}
    for shape in shapes:
        for fused in (False, True):
            runs[shape, fused] = make_run(*shape, fused)
            runs[shape, fused]()  # warm up (and build the kernels)
    times = time_interleaved(runs, args.rounds, args.steps)
    print("RMS norm forward + backward, eager, 1 thread (ms)")
    print(f"{'rows x width':>16}  {'F.rms_norm':>10}  {'moc C':>7}  C / F.rms_norm")
    for shape in shapes:
        torch_ms, c_ms = (statistics.median(times[shape, fused]) for fused in (False, True))
        name = f"{shape[0]} x {shape[1]}" + (" (scale)" if shape[2] else "")
        print(f"{name:>16}  {torch_ms:10.3f}  {c_ms:7.3f}  {c_ms / torch_ms:.2f}x")


if __name__ == "__main__":
    main()
