"""A roofline PREDICTION of the training step's MFU at the paper's shapes, from the exact FLOP count
(moc.accounting) and the read's counted bytes (moc.kernels.traffic). Nothing here is measured on a GPU.

Model (H100 SXM, bf16): every FLOP outside the memory read runs at ``--backbone-eff`` of the peak
(989 TFLOP/s); each memory layer's read takes, forward and backward separately, the longer of its
FLOPs at ``--read-compute-eff`` of the peak and its counted bytes at ``--read-bw-eff`` of the
bandwidth (3.35 TB/s); the read's backward does 2.5x its forward's matmul FLOPs (five matmuls to two).
MFU = the step's FLOPs by the batch-aware count / (predicted step time x peak).

    python bench/roofline.py                   # token, causal, sequence at 16 x 1,024 tokens
"""

from __future__ import annotations

import argparse

import moc
from moc.accounting import count_flops
from moc.kernels import traffic

TARGETS = {"sequence": 0.45, "causal": 0.45, "token": 0.40}


def predict(mode: str, args: argparse.Namespace) -> dict[str, float]:
    """The predicted step time and MFU of ``paper-moc`` with ``mode`` routing (see the docstring)."""
    B, L = traffic.PAPER["batch"], traffic.PAPER["seq_len"]
    cfg = moc.load_config("paper-moc", [f"memory.routing={mode}", f"model.max_seq_len={L}"])
    report = count_flops(cfg, L, batch_size=B)
    mem = report["breakdown"]["memory_layer"]
    read_fwd = B * (mem["terms"]["memory_attention.matmul"] + mem["terms"]["memory_attention.softmax"])
    n_mem = mem["count"]
    step_flops = B * report["total"]
    peak, bw = args.peak_tflops * 1e12, args.bandwidth_tbs * 1e12
    backbone = (step_flops - n_mem * 3 * read_fwd) / (args.backbone_eff * peak)
    fwd, bwd = traffic.count(mode, "forward"), traffic.count(mode, "backward")
    t_fwd = max(read_fwd / (args.read_compute_eff * peak), fwd.moved / (args.read_bw_eff * bw))
    t_bwd = max(2.5 * read_fwd / (args.read_compute_eff * peak), bwd.moved / (args.read_bw_eff * bw))
    step = backbone + n_mem * (t_fwd + t_bwd)
    return {
        "step_ms": 1e3 * step,
        "backbone_ms": 1e3 * backbone,
        "read_ms_per_layer": 1e3 * (t_fwd + t_bwd),
        "read_gb_per_layer": (fwd.moved + bwd.moved) / 1e9,
        "mfu": step_flops / (step * peak),
        "mfu_read_at_roofline": step_flops / ((backbone + n_mem * (fwd.moved + bwd.moved) / bw) * peak),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--bandwidth-tbs", type=float, default=3.35)
    p.add_argument("--backbone-eff", type=float, default=0.60)
    p.add_argument("--read-compute-eff", type=float, default=0.60)
    p.add_argument("--read-bw-eff", type=float, default=0.70)
    p.add_argument("--modes", default="sequence,causal,token")
    p.add_argument("--strict", action="store_true", help="exit 1 when a predicted MFU misses its target")
    p.add_argument("--counted", action="store_true", help="print the counted targets first; exit 1 if missed")
    args = p.parse_args(argv)
    missed_counts: list[str] = []
    if args.counted:
        text, missed_counts = traffic.report()
        print(text)
        print("counted targets (temporaries <= 1 GB, bytes moved <= 1.5x the bound):",
              "MISSED: " + "; ".join(missed_counts) if missed_counts else "all met")  # fmt: skip
        print()
    print(
        f"PREDICTION (roofline model, not a measurement): paper-moc, 16 x 1,024 tokens, bf16, H100 "
        f"({args.peak_tflops:g} TFLOP/s, {args.bandwidth_tbs:g} TB/s), backbone at {args.backbone_eff:.0%} "
        f"of peak, read at {args.read_bw_eff:.0%} of bandwidth"
    )
    print("| routing | step ms | backbone ms | read ms / layer | read GB / layer | MFU (predicted) | "
          "MFU, read at the roofline | target |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    missed = []
    for mode in args.modes.split(","):
        r = predict(mode, args)
        print(
            f"| {mode} | {r['step_ms']:.1f} | {r['backbone_ms']:.1f} | {r['read_ms_per_layer']:.2f} | "
            f"{r['read_gb_per_layer']:.1f} | {r['mfu']:.1%} | {r['mfu_read_at_roofline']:.1%} | "
            f">= {TARGETS[mode]:.0%} |"
        )
        if r["mfu"] < TARGETS[mode]:
            missed.append(f"{mode} {r['mfu']:.1%} < {TARGETS[mode]:.0%}")
    print("predicted MFU targets:", "MISSED: " + "; ".join(missed) if missed else "all met")
    return 1 if (missed and args.strict) or missed_counts else 0


if __name__ == "__main__":
    raise SystemExit(main())
