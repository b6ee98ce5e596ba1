"""Kernels of the memory read.

- ``routed_read``: the blocked PyTorch loops (any device; the reference of the fast paths) and the autograd
  Function that recomputes the chapters' keys and values in backward (eager CPU runs, exported folders);
- ``triton_read``: the chapter-grouped and per-tile Triton kernels and the deterministic backward (CUDA);
- ``cpu_read``: C kernels for small token-routed reads on the CPU (``cpu_read.c``, built on first use);
- ``dispatch``: which of them runs, as ``memory.kernel`` says;
- ``op``: the read as registered PyTorch operators, so ``torch.compile`` takes a memory block whole.
"""

from moc.kernels.routed_read import RoutedRead, chapter_coefficients, routed_read

__all__ = ["RoutedRead", "chapter_coefficients", "routed_read"]
