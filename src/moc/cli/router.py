"""``moc router``: which chapters a trained model reads, and what removing them does to the loss."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from moc.errors import UsageError


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
    p.add_argument(
        "--plot",
        default=None,
        help="write a chapter-usage histogram PNG here (a folder: FOLDER/chapter_usage.png)",
    )
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


def _check_options(args: argparse.Namespace) -> list[int]:
    """The counts must be positive (0 batches would read nothing and fail deep in torch); the chapters
    to ablate must be integers. Returns those chapters (empty without ``--ablate``)."""
    for option, value, low in (("--batches", args.batches, 1), ("--batch-size", args.batch_size, 1),
                               ("--top", args.top, 0), ("--seq-len", args.seq_len, 1)):  # fmt: skip
        if value is not None and value < low:
            raise UsageError(f"{option} must be at least {low}, got {value}")
    try:
        return [int(c) for c in (args.ablate or "").split(",") if c.strip()]
    except ValueError:
        raise UsageError(
            f"--ablate {args.ablate!r}: give chapter ids as comma-separated integers, e.g. --ablate 3,7"
        ) from None


def _check_model(model: object, name: str, chapters: list[int], seq_len: int) -> None:
    cfg = model.config  # type: ignore[attr-defined]
    if not cfg.memory_layers:
        raise UsageError(f"{name} is a dense model (no memory layers): moc router inspects MoC models only")
    n = cfg.memory.n_chapters
    bad = [c for c in chapters if not 0 <= c < n]
    if bad:
        raise UsageError(f"--ablate: chapter(s) {bad} do not exist; this model's chapters are 0..{n - 1}")
    if seq_len > cfg.model.max_seq_len:
        raise UsageError(f"--seq-len {seq_len} is longer than the model's context ({cfg.model.max_seq_len})")


def _plot_path(path: str) -> str:
    """``--plot DIR`` writes DIR/chapter_usage.png (matplotlib would write DIR.png beside it)."""
    return str(Path(path) / "chapter_usage.png") if Path(path).is_dir() else path


def run(args: argparse.Namespace) -> int:
    from moc.analysis import ablate_chapters, chapter_importance, chapter_usage
    from moc.data import check_compatible, read_meta
    from moc.hf import load_model

    chapters = _check_options(args)
    hf_model, _ = load_model(args.model)
    model = hf_model.model
    seq_len = args.seq_len or model.config.model.max_seq_len
    _check_model(model, args.model, chapters, seq_len)
    meta = read_meta(args.data)
    check_compatible(meta, model.config.model.vocab_size)
    n_tokens = (meta.get("n_tokens") or {}).get(args.split, 0)
    if n_tokens <= seq_len:  # the data library's advice names train.seq_len, which router does not have
        raise UsageError(
            f"split {args.split!r} of {args.data} has {n_tokens} tokens, fewer than one window of "
            f"--seq-len + 1 = {seq_len + 1}; pass a smaller --seq-len (at most {max(n_tokens - 1, 1)}) or "
            "more data"
        )
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
    if chapters:
        report["ablation"] = {"chapters": chapters, **ablate_chapters(model, batches, chapters)}
    if args.plot:
        args.plot = _plot_path(args.plot)
        _plot(usage, args.plot)
        print(f"moc router: wrote {args.plot}", file=sys.stderr)
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
