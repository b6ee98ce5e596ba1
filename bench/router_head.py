"""The router's training work on the CPU alone: scores, softmax, top-k and losses, forward and backward.

One ``ChapterRouter.decide`` of N token decisions (d-dimensional router inputs, C chapters, 1 shared, top-2),
its weights and aux loss backpropagated to the router input and the linear layer, eager and compiled,
with ``memory.kernel: auto`` (eager: the C kernels of ``moc.kernels.cpu_router``; compiled: the PyTorch
head, which the compiler fuses) and ``torch`` (PyTorch ops); the row ``c op`` calls the C kernels' op
in both modes (what ``auto`` would cost compiled, had it kept the C kernels).
The paths run interleaved in one process on one thread, timed in CPU seconds of the process, median of
the rounds. Defaults: the 8k bank's router in the capacity bank series (1,088 decisions, d = 16, 512
chapters)::

    python bench/router_head.py
    python bench/router_head.py --chapters 128        # the 2k bank's
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from interleave import time_interleaved

KERNELS = ("auto", "torch", "c op")

def make_run(chapters: int, d: int, decisions: int, kernel: str, compiled: bool) -> Callable[[], None]:
    from moc.config import MemoryConfig
    from moc.model.router import ChapterRouter

    torch.manual_seed(0)
    cfg = MemoryConfig(
        enabled=True, n_tokens=16 * chapters, n_chapters=chapters, n_shared_chapters=1, top_k=2
    )
    router = ChapterRouter(d, cfg)
    x = torch.randn(1, decisions, d, requires_grad=True)
    valid = torch.ones(1, decisions, dtype=torch.bool)
    mix = torch.arange(1.0, 4.0)  # an upstream gradient on the three chapter weights

    def loss(x: torch.Tensor) -> torch.Tensor:
        if kernel == "c op":
            from moc.kernels.router_op import router_head

            p = router.proj
            top_p, top_i, lb, z, _, _ = router_head(x[0], p.weight, p.bias, valid[0].float(), 1, 2)
            weights = router._weights(top_p, top_i, torch.arange(1))[1]
            return (weights * mix).sum() + router.lb_coef * lb + router.z_coef * z
        decisions = router.decide(x, valid, 1, kernel)
        return (decisions.weights * mix).sum() + decisions.aux

    step = torch.compile(loss) if compiled else loss

    def run() -> None:
        router.zero_grad(set_to_none=True)
        step(x).backward()

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chapters", type=int, default=512)
    ap.add_argument("--dim", type=int, default=16, help="the router input's size (d_model)")
    ap.add_argument("--decisions", type=int, default=1088)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from moc.train.allocator import retain_freed_memory_once

    retain_freed_memory_once()
    runs = {
        (kernel, compiled): make_run(args.chapters, args.dim, args.decisions, kernel, compiled)
        for compiled in (False, True)
        for kernel in KERNELS
    }
    for run in runs.values():
        for _ in range(3):  # warm up (and compile)
            run()
    times = time_interleaved(runs, args.rounds, args.steps)
    shape = f"{args.decisions} decisions, d = {args.dim}, {args.chapters} chapters (1 shared, top-2)"
    print(f"router: {shape}, 1 thread")
    print(f"{'memory.kernel':14s} {'eager ms':>9s} {'compiled ms':>12s}  (forward + backward, median)")
    for kernel in KERNELS:
        eager, compiled = (statistics.median(times[(kernel, c)]) for c in (False, True))
        print(f"{kernel:14s} {eager:9.3f} {compiled:12.3f}")


if __name__ == "__main__":
    main()
