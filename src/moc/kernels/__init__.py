"""Kernels of the memory read and of the router head.

- ``routed_read``: the blocked PyTorch loops (any device; the reference of the fast paths) and the autograd
  Function that recomputes the chapters' keys and values in backward (eager CPU runs, exported folders);
- ``triton_read``: the chapter-grouped and per-tile Triton kernels and the deterministic backward (CUDA);
- ``cpu_read``: C kernels for small token-routed reads on the CPU (``cpu_read.c``, built on first use);
- ``dispatch``: which of them runs, as ``memory.kernel`` says;
- ``op``: the read as registered PyTorch operators, so ``torch.compile`` takes a memory block whole;
- ``router_head``: the router's softmax, top-k and losses from one softmax, with a hand-written backward
  (PyTorch; exported with the model code); ``cpu_router`` the same in C for the CPU (``cpu_router.c``),
  ``router_op`` the router's linear layer and head as a registered operator running it;
- ``cpu_norm``: RMS normalisation's forward and backward in C for eager CPU runs (``cpu_norm.c``);
- ``eager_op``: a registered op's functions as a plain autograd Function, for eager calls;
- ``cpu_build``: builds the C kernels (``cpu_read.c``, ``cpu_router.c``, ``cpu_norm.c``, the shared
  ``cpu_common.h``).
"""

from moc.kernels.routed_read import RoutedRead, chapter_coefficients, routed_read

__all__ = ["RoutedRead", "chapter_coefficients", "routed_read"]
