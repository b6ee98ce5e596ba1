"""Training-step throughput: tokens/s, MFU and peak memory of MoC vs. its dense baselines.

One step = forward + backward + AdamW on random tokens, the setting of SPEC section 4. By default it
compares a MoC preset with the dense model of the same backbone and the iso-FLOP dense model.

    python bench/train_step.py                                   # tiny presets on the CPU
    python bench/train_step.py --preset paper-moc --set memory.routing=causal \
        --device cuda --dtype bfloat16 --batch 16 --seq-len 1024 # the paper's models on one GPU

MFU uses the FLOP counter's paper rules (3 x forward per sequence) against --peak-tflops (989, the
H100's dense bf16 peak). MoC projects each distinct selected chapter once per batch, so it can do
less memory work than the count assumes: its MFU is an upper bound on the true utilisation.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

import moc
from moc.flops import count_flops, isoflop_config, mfu


def bench_one(cfg: moc.MoCConfig, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = moc.build_model(cfg).to(device)
    model.gradient_checkpointing = args.checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), y.flatten())
            loss = loss + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    tokens_per_s = args.batch * args.seq_len / seconds
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:  # process-wide high-water mark (Linux reports KiB)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    on_gpu = device.type == "cuda"
    return {
        "name": cfg.name,
        "layers": cfg.model.n_layers,
        "memory": cfg.memory.enabled,
        "routing": cfg.memory.routing if cfg.memory.enabled else None,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_flops_per_seq": count_flops(cfg, args.seq_len)["forward"],
        "step_seconds": seconds,
        "tokens_per_s": tokens_per_s,
        # MFU is only meaningful against an accelerator's peak.
        "mfu": mfu(tokens_per_s, cfg, args.seq_len, args.peak_tflops * 1e12) if on_gpu else None,
        "peak_memory_gb": peak_gb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-moc")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--only", choices=["moc", "dense", "iso"], action="append", help="run a subset")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    cfg = moc.load_config(args.preset, args.overrides + [f"model.max_seq_len={max(args.seq_len, 1)}"])
    models = {"moc": cfg}
    if cfg.memory.enabled:
        dense = cfg.replace(["memory.enabled=false", "memory.layers=[]", f"name={cfg.name}-dense"])
        iso = isoflop_config(cfg, args.seq_len).replace([f"name={cfg.name}-isoflop"])
        models.update(dense=dense, iso=iso)
    rows = [bench_one(c, args) for key, c in models.items() if not args.only or key in args.only]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"device {args.device}, dtype {args.dtype}, batch {args.batch} x {args.seq_len} tokens")
    print(f"{'model':28s} {'layers':>6s} {'params':>12s} {'tokens/s':>10s} {'MFU':>7s} {'peak GB':>8s}")
    for r in rows:
        util = "-" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"
        print(
            f"{r['name']:28s} {r['layers']:6d} {r['params']:12,d} {r['tokens_per_s']:10,.0f} "
            f"{util:>7s} {r['peak_memory_gb']:8.2f}"
        )


if __name__ == "__main__":
    main()
