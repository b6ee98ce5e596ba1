"""Where one CPU training step of a capacity model spends its time, op by op (torch.profiler).

The model, batches and step of ``bench/capacity_step.py`` (1 thread, fused AdamW, freed memory kept),
compiled unless ``--eager``; under torch.compile each of inductor's fused kernels is listed by name. Prints
the ``--top`` ops by self CPU time, in ms per step over ``--steps`` profiled steps::

    python bench/step_profile.py moc_8k
    python bench/step_profile.py dense_d24 --eager
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="a model key of the preset, e.g. moc_8k")
    ap.add_argument("--preset", default="capacity-bank-series")
    ap.add_argument("--eager", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--shapes", action="store_true", help="one row per op and input shapes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import torch._inductor.config as inductor_config
    from torch.profiler import ProfilerActivity, profile

    inductor_config.cpp.enable_kernel_profile = True  # inductor's kernels by name, not one graph call
    sys.path.insert(0, str(Path(__file__).parent))
    from capacity_step import capacity_models, make_step

    from moc.model import MoCModel
    from moc.train.allocator import retain_freed_memory_once

    retain_freed_memory_once()
    configs, _, batches = capacity_models(args.preset)
    if args.model not in configs:
        ap.error(f"no model {args.model!r} in {args.preset}; it has {sorted(configs)}")
    torch.manual_seed(0)
    step = make_step(MoCModel(configs[args.model]).train(), not args.eager)
    for b in batches[:3]:  # warm up (and compile)
        step(b)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for i in range(args.steps):
            step(batches[3 + i % (len(batches) - 3)])
    averages = prof.key_averages(group_by_input_shape=args.shapes)
    rows = sorted(averages, key=lambda e: -e.self_cpu_time_total)
    mode = "eager" if args.eager else "compiled"
    print(f"{args.model} ({args.preset}, {mode}, 1 thread): self CPU ms per step, {args.steps} steps")
    for e in rows[: args.top]:
        shapes = f"  {e.input_shapes}" if args.shapes else ""
        ms, calls = e.self_cpu_time_total / args.steps / 1e3, e.count // args.steps
        print(f"{ms:8.3f}  x{calls:<4d} {e.key[:100]}{shapes}")


if __name__ == "__main__":
    main()
