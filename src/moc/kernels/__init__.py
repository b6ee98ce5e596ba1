"""Kernels of the memory read: the blocked PyTorch autograd Function and the Triton fast path (CUDA).

``routed_read`` (pure PyTorch, any device) is the reference and the CPU path; ``triton_read`` holds the
Triton forward kernel the model uses on CUDA when Triton is installed.
"""

from moc.kernels.routed_read import RoutedRead, chapter_coefficients, routed_read

__all__ = ["RoutedRead", "chapter_coefficients", "routed_read"]
