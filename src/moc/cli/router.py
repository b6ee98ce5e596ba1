"""``moc router``: which chapters a trained model reads, and what removing them does to the loss."""

from __future__ import annotations

import argparse
import json
import math

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "router",
        help="inspect a trained model's router: chapter usage, and the loss without given chapters",
        description="Chapter usage per memory layer on prepared data, and chapter ablations.",
    )
    p.add_argument("model", help="training checkpoint, run out_dir or exported Hugging Face folder")
    p.add_argument("--data", required=True, help="prepared data folder (moc data prepare)")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--seq-len", type=int, default=None, help="default: the model's max_seq_len")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=4, help="number of batches to read")
    p.add_argument("--top", type=int, default=5, help="rank this many most-used chapters by ablation")
    p.add_argument("--ablate", default=None, help="comma-separated chapter ids to remove together")
    p.add_argument("--plot", default=None, help="write a chapter-usage histogram PNG here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def _batches(
    data_dir: str, split: str, seq_len: int, batch_size: int, n: int
) -> list[dict[str, torch.Tensor]]:
    from moc.data import PackedSequences, load_prepared

    windows = PackedSequences(load_prepared(data_dir, split), seq_len)
    count = min(len(windows), batch_size * n)
    items = [windows[i] for i in range(count)]
    return [
        {k: torch.stack([it[k] for it in items[i : i + batch_size]]) for k in ("input_ids", "targets")}
        for i in range(0, count, batch_size)
    ]


def run(args: argparse.Namespace) -> int:
    from moc.analysis import ablate_chapters, chapter_importance, chapter_usage
    from moc.data import check_compatible, read_meta
    from moc.hf import load_model

    hf_model, _ = load_model(args.model)
    model = hf_model.model
    check_compatible(read_meta(args.data), model.config.model.vocab_size)
    seq_len = args.seq_len or model.config.model.max_seq_len
    batches = _batches(args.data, args.split, seq_len, args.batch_size, args.batches)
    usage = chapter_usage(model, batches)
    report: dict = {
        "layers": [
            {
                "layer": u.layer,
                "decisions": u.decisions,
                "coverage": u.coverage,
                "mean_router_entropy": u.mean_entropy,
                "usage_entropy": u.usage_entropy,
                "counts": u.counts,
            }
            for u in usage
        ],
        "importance": chapter_importance(model, batches, top=args.top),
    }
    if args.ablate:
        chapters = [int(c) for c in args.ablate.split(",") if c.strip()]
        report["ablation"] = {"chapters": chapters, **ablate_chapters(model, batches, chapters)}
    if args.plot:
        _plot(usage, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    n_routed = len(usage[0].counts)
    print(f"{sum(b['input_ids'].numel() for b in batches):,} tokens from {args.data} ({args.split})")
    header = f"{'layer':>5s} {'decisions':>9s} {'coverage':>8s} {'router H':>8s} {'usage H':>8s}"
    print(f"{header}  (entropies in nats; uniform use = {math.log(n_routed):.2f})")
    for u in usage:
        print(f"{u.layer:5d} {u.decisions:9d} {u.coverage:8.1%} {u.mean_entropy:8.3f} {u.usage_entropy:8.3f}")
    print("\nloss change when one chapter is removed (shared chapters have picks -1):")
    print(f"{'chapter':>7s} {'picks':>7s} {'delta loss':>10s}")
    for row in report["importance"]:
        print(f"{row['chapter']:7d} {row['picks']:7d} {row['delta']:+10.4f}")
    if "ablation" in report:
        a = report["ablation"]
        change = f"{a['base_loss']:.4f} -> {a['ablated_loss']:.4f} ({a['delta']:+.4f})"
        print(f"\nwithout chapters {a['chapters']}: loss {change}")
    return 0


def _plot(usage: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(usage), 1, figsize=(8, 2.2 * len(usage)), squeeze=False)
    for ax, u in zip(axes[:, 0], usage, strict=True):
        ax.bar(range(len(u.counts)), u.counts, width=1.0)
        ax.set_title(
            f"memory layer {u.layer}: picks per routed chapter (coverage {u.coverage:.0%})", fontsize=9
        )
        ax.set_xlabel("routed chapter")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
