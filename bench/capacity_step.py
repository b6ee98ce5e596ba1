"""One CPU training step of MoC (token routing) against the dense model of equal inference FLOPs.

The models run interleaved in one process on one thread (rounds of ``--steps`` steps each; the median
time per model, and for a pair the median of its rounds' ratios), timed in CPU seconds of this process
(``time.process_time``): on a shared machine another job's load barely moves them, where wall-clock times
can double; interleaving keeps the rest (caches, clock speed) alike for every model. Each MoC model is
paired with the dense model whose inference FLOPs per token are nearest to its own (the one named in the
pair column). Eager and compiled (``torch.compile``, dense models alike) are both timed unless
``--compile`` picks one.

    python bench/capacity_step.py                               # the bank series' models and batches
    python bench/capacity_step.py --preset capacity-bits        # another capacity preset
    python bench/capacity_step.py --text-demo                   # the real-text demo's model, token routing

A step is forward + backward + grad clip + AdamW on the experiment's own batches (packed biographies for
the capacity presets; random tokens of the demo's shape for ``--text-demo``). AdamW is moc's default, fused
(``train.fused_optimizer``); ``--unfused-adamw`` times PyTorch's per-tensor loop instead, which the
capacity sweeps' records were trained with. As moc's training does on the CPU, freed memory stays in the
process (``train.retain_freed_memory``); ``--default-malloc`` leaves glibc's defaults, under which the
steps also fault their pages in again. The memory read runs moc's default path (``memory.kernel: auto``:
the C kernels of ``moc.kernels.cpu_read``, and eager the router head's, ``moc.kernels.cpu_router``);
``--torch-read`` runs ``memory.kernel: torch`` instead (the PyTorch read and router head).

``--isolated`` times each MoC model and its dense pair in a fresh process of their own, as a sweep's
worker trains one model per process (``moc_experiments.experiment.pool``): in a process that built every
model of a preset first, the later ones run on a heap fragmented by the others' allocations.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from interleave import time_interleaved

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def capacity_models(preset: str) -> tuple[dict[str, Any], dict[str, float], list[Batch]]:
    """(model configs, inference FLOPs per token, 30 training batches) of a capacity preset."""
    from moc_experiments.experiment.capacity.config import load_capacity, model_config
    from moc_experiments.experiment.capacity.data import batch, flops_len, make_world, seq_len
    from moc_experiments.experiment.capacity.models import flops_per_token

    cfg = load_capacity(preset)
    world = make_world(cfg)
    t = cfg.train
    rng = np.random.default_rng(0)
    pack = t.pack_len if t.pack else 0
    batches = [
        batch(world, rng, t.batch_size, t.qa_doc_fraction, world.max_doc_len, None, 0.0, None, pack)
        for _ in range(30)
    ]
    configs, flops = {}, {}
    for key in cfg.models:
        configs[key] = model_config(cfg, key, len(world.vocab), seq_len(cfg, world))
        flops[key] = flops_per_token(configs[key], flops_len(cfg, world), t.batch_size)["inference"]
    return configs, flops, batches


def text_demo_models() -> tuple[dict[str, Any], dict[str, float], list[Batch]]:
    """The real-text demo's MoC with token routing, its dense backbone and the dense model deeper to its
    inference FLOPs (the batch-aware iso-FLOP depth), on random tokens of the demo's batch shape."""
    from moc.accounting import isoflop_config
    from moc.config import load_config
    from moc_experiments.experiment.capacity.models import flops_per_token
    from moc_experiments.experiment.protocol.config import load_experiment

    base = load_experiment("demo").moc_config
    moc = load_config(base.to_dict(), ["memory.routing=token"])
    L, B = moc.train.seq_len, moc.train.micro_batch_size
    configs = {
        "moc_token": moc,
        "dense_backbone": load_config(moc.to_dict(), ["memory.enabled=false"]),
        "dense_iso": isoflop_config(moc, L, B),
    }
    flops = {k: flops_per_token(c, L, B)["inference"] for k, c in configs.items()}
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(10):
        x = torch.randint(0, moc.model.vocab_size, (B, L), generator=g)
        batches.append((x, torch.ones_like(x), x, None))
    return configs, flops, batches


def make_step(model: torch.nn.Module, compiled: bool, fused_adamw: bool = True) -> Callable[[Batch], None]:
    from moc.config import TrainConfig
    from moc.train.optim import build_optimizer

    opt = build_optimizer(model, TrainConfig(lr=1e-3, max_steps=10**6, fused_optimizer=fused_adamw))
    forward = torch.compile(model) if compiled else model
    params = [p for p in model.parameters() if p.requires_grad]

    def step(b: Batch) -> None:
        x, m, y, pos = b
        out = forward(x, attention_mask=m, labels=y, position_ids=pos)
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def pairs(flops: dict[str, float], configs: dict[str, Any]) -> dict[str, str]:
    """Each MoC model -> the dense model with the nearest inference FLOPs per token."""
    dense = [k for k, c in configs.items() if not c.memory_layers]
    return {
        k: min(dense, key=lambda d: abs(flops[d] / flops[k] - 1))
        for k, c in configs.items()
        if c.memory_layers
    }


def time_models(
    configs: dict[str, Any], batches: list[Batch], compiled: bool, rounds: int, steps: int, fused_adamw: bool
) -> dict[str, list[float]]:
    """CPU milliseconds per step of every model in each round, the models interleaved round by round."""
    from moc.model import MoCModel

    # Every model is a fresh set of guards on the same forward code: keep dynamo compiling them all
    # rather than running the last ones eager past its recompile limit.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 8 * len(configs))
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 64 * len(configs)
    )
    runs = {}
    for key, cfg in configs.items():
        torch.manual_seed(0)
        model = MoCModel(cfg).train()
        step = make_step(model, compiled, fused_adamw)
        for b in batches[:3]:  # warm up (and compile) outside the timed rounds
            step(b)
        # every model takes the batches in the same order
        runs[key] = functools.partial(lambda step, batch: step(next(batch)), step, itertools.cycle(batches))
    return time_interleaved(runs, rounds, steps)


def _set_up_process(default_malloc: bool) -> None:
    """One thread, and freed memory kept (unless ``--default-malloc``)."""
    torch.set_num_threads(1)
    if not default_malloc:
        from moc.train.allocator import retain_freed_memory_once

        retain_freed_memory_once()


def _time_pair_alone(
    configs: dict[str, Any], batches: list[Batch], compiled: bool, rounds: int, steps: int, fused_adamw: bool
) -> tuple[dict[str, list[float]], list[str]]:
    """time_models in this (fresh) process, and the read paths that ran."""
    from moc.kernels.dispatch import paths_used

    paths_used(reset=True)
    times = time_models(configs, batches, compiled, rounds, steps, fused_adamw)
    return times, paths_used(reset=True)


def time_isolated(
    configs: dict[str, Any], matched: dict[str, str], batches: list[Batch], compiled: bool, rounds: int,
    steps: int, fused_adamw: bool, default_malloc: bool,
) -> tuple[dict[str, dict[str, list[float]]], list[str]]:  # fmt: skip
    """Each MoC model and its dense match timed in a fresh process: {moc key: rounds of both}, paths."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    spawn = mp.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=spawn, initializer=_set_up_process, initargs=(default_malloc,), max_tasks_per_child=1
    ) as pool:  # one pair after another, each in a new process
        jobs = {
            key: pool.submit(_time_pair_alone, {k: configs[k] for k in (dense, key)}, batches, compiled,
                             rounds, steps, fused_adamw)  # fmt: skip
            for key, dense in matched.items()
        }
        done = {key: job.result() for key, job in jobs.items()}
    paths = {p for _, ran in done.values() for p in ran}
    return {key: times for key, (times, _) in done.items()}, sorted(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="capacity-bank-series", help="a capacity preset: models and data")
    ap.add_argument("--text-demo", action="store_true", help="the real-text demo's shapes instead")
    ap.add_argument("--compile", choices=("both", "eager", "compiled"), default="both")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10, help="steps per model per round")
    ap.add_argument("--unfused-adamw", action="store_true", help="PyTorch's per-tensor AdamW loop")
    ap.add_argument("--models", help="comma-separated model keys to time (default: all of the preset's)")
    ap.add_argument("--default-malloc", action="store_true", help="glibc's malloc defaults (see above)")
    ap.add_argument("--torch-read", action="store_true", help="memory.kernel: torch for the MoC models")
    ap.add_argument("--isolated", action="store_true", help="each MoC model and its pair in a fresh process")
    args = ap.parse_args()
    _set_up_process(args.default_malloc)
    configs, flops, batches = text_demo_models() if args.text_demo else capacity_models(args.preset)
    if args.models:
        keep = args.models.split(",")
        if unknown := sorted(set(keep) - set(configs)):
            ap.error(f"--models: no model {unknown} in this preset; it has {sorted(configs)}")
        configs = {k: configs[k] for k in keep}
        kinds = {bool(c.memory_layers) for c in configs.values()}
        if kinds != {True, False}:
            ap.error("--models: name at least one MoC model and one dense model to compare it with")
    if args.torch_read:
        for cfg in configs.values():
            if cfg.memory_layers:
                cfg.memory.kernel = "torch"
    matched = pairs(flops, configs)
    modes = {"both": (False, True), "eager": (False,), "compiled": (True,)}[args.compile]
    shape = "text demo" if args.text_demo else args.preset
    adamw = "unfused" if args.unfused_adamw else "fused"
    rounds = f"{args.rounds} rounds x {args.steps} steps interleaved"
    rounds += ", each MoC model and its pair in a fresh process" if args.isolated else ""
    malloc = "glibc defaults" if args.default_malloc else "freed memory kept"
    read = "torch" if args.torch_read else "auto"
    print(f"{shape}: a training step ({adamw} AdamW, malloc: {malloc}, read: {read}), 1 thread, {rounds}")
    from moc.kernels.dispatch import paths_used

    for compiled in modes:
        if args.isolated:
            alone, ran_isolated = time_isolated(configs, matched, batches, compiled, args.rounds, args.steps,
                                                not args.unfused_adamw, args.default_malloc)  # fmt: skip
            print(f"\n{'compiled' if compiled else 'eager'} (memory read: {', '.join(ran_isolated)}):")
            header = f"{'model':<16} {'inference FLOPs/tok':>20} {'ms/step':>9}"
            print(f"{header}  vs equal-FLOP dense (its process)")
            for key, times in alone.items():
                d = matched[key]
                ratio = statistics.median(a / b for a, b in zip(times[key], times[d], strict=True))
                own, theirs = statistics.median(times[key]), statistics.median(times[d])
                print(f"{key:<16} {flops[key]:>20,.0f} {own:>9.2f}  {ratio:.2f}x {d} ({theirs:.2f} ms, "
                      f"{flops[d] / flops[key]:.2f}x its FLOPs)")
            continue
        paths_used(reset=True)
        rounds_ms = time_models(configs, batches, compiled, args.rounds, args.steps, not args.unfused_adamw)
        ms = {k: statistics.median(v) for k, v in rounds_ms.items()}
        ran = ", ".join(paths_used(reset=True)) or "the PyTorch path"
        print(f"\n{'compiled' if compiled else 'eager'} (memory read: {ran}):")
        print(f"{'model':<16} {'inference FLOPs/tok':>20} {'ms/step':>9}  vs equal-FLOP dense")
        for key in configs:
            line = f"{key:<16} {flops[key]:>20,.0f} {ms[key]:>9.2f}"
            if key in matched:
                # the median of each round's ratio: a model and its dense match run minutes apart at
                # most, so a slower spell of the machine slows both sides of a round's ratio
                d = matched[key]
                ratio = statistics.median(a / b for a, b in zip(rounds_ms[key], rounds_ms[d], strict=True))
                line += f"  {ratio:.2f}x {d} ({flops[d] / flops[key]:.2f}x its FLOPs)"
            print(line)


if __name__ == "__main__":
    main()
