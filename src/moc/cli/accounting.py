"""``moc params | flops | isoflop | info``: parameter and FLOP accounting from a config (no model built)."""

from __future__ import annotations

import argparse
import json

from moc.accounting import count_flops, count_params, isoflop, training_flops_per_token
from moc.cli import add_config_args
from moc.config import RunConfig, load_config

_PARAM_LABELS = {"backbone": "backbone", "memory_layers": "memory layers", "bank": "bank"}
_COMPONENT_LABELS = {"layer": "standard layer", "memory_layer": "memory layer extra", "head": "head"}


def _positive_int(text: str, what: str = "tokens") -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number of {what}, got {text!r}")
    return value


def _batch_size(text: str) -> int:
    return _positive_int(text, "sequences per micro-batch")


def _table(rows: list[list[str]], header: list[str]) -> str:
    """Left-align the first column, right-align the others."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "  " + "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _short(n: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {prefix}{unit}"
    return f"{n:.3g} {unit}"


def format_params(cfg: RunConfig, params: dict[str, int]) -> str:
    rows = [[label, f"{params[k]:,}", _pct(params[k], params["total"])] for k, label in _PARAM_LABELS.items()]
    rows.append(["total", f"{params['total']:,}", _pct(params["total"], params["total"])])
    title = f"{cfg.name}: parameters ({_short(params['total'], 'params')})"
    return title + "\n" + _table(rows, ["part", "parameters", "share"])


def format_flops(cfg: RunConfig, report: dict) -> str:
    fwd = report["forward"]
    rows = []
    for key, comp in report["breakdown"].items():
        label = _COMPONENT_LABELS[key]
        rows.append(
            [label, str(comp["count"]), f"{comp['each']:,}", f"{comp['total']:,}", _pct(comp["total"], fwd)]
        )
        for part, flops in comp["parts"].items():
            rows.append([f"  {part}", "", f"{flops:,}", "", ""])
    rows += [
        ["forward", "", "", f"{fwd:,}", _short(fwd, "FLOP")],
        ["backward (2x forward)", "", "", f"{report['backward']:,}", _short(report["backward"], "FLOP")],
        ["training step (3x)", "", "", f"{report['total']:,}", _short(report["total"], "FLOP")],
    ]
    B = report["batch_size"]
    title = f"{cfg.name}: FLOPs per sequence (seq_len {report['seq_len']}, micro-batch {B})"
    if "routing" in report:
        r = report["routing"]
        title += (
            f"\n  routing {r['mode']}: {r['decisions']:,} decision(s) per sequence, {r['batch_decisions']:,} "
            f"per micro-batch; per memory layer {r['selected_tokens']:,} memory tokens read by each query,\n"
            f"  {r['projected_chapters']:,.1f} distinct chapters per micro-batch ({r['chapters_source']}"
            f"{', uniform routing' if r['chapters_source'] == 'expected' else ''}) = "
            f"{r['projected_tokens']:,} memory tokens normalised and K/V-projected per sequence"
        )
    per_token = training_flops_per_token(cfg, report["seq_len"], B)
    footer = f"\n  training FLOPs per token: {per_token:,.0f}"
    return title + "\n" + _table(rows, ["component", "count", "each", "total", "share"]) + footer


def format_isoflop(cfg: RunConfig, iso: dict) -> str:
    rows = [
        [f"{cfg.name} forward", f"{iso['moc_forward']:,}"],
        [f"dense forward ({iso['dense_layers']} layers)", f"{iso['dense_forward']:,}"],
        ["mismatch (dense - moc) / moc", f"{iso['mismatch']:+.2%}"],
    ]
    title = (
        f"{cfg.name}: iso-FLOP dense model (same width, seq_len {iso['seq_len']}, MoC micro-batch "
        f"{iso['batch_size']}): {iso['dense_layers']} layers"
    )
    return title + "\n" + _table(rows, ["", "forward FLOPs"])


def _load(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config, args.overrides)


def _emit(args: argparse.Namespace, data: dict, text: str) -> int:
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    cfg = _load(args)
    params = count_params(cfg)
    return _emit(args, params, format_params(cfg, params))


def cmd_flops(args: argparse.Namespace) -> int:
    cfg = _load(args)
    report = count_flops(cfg, args.seq_len, args.batch_size)
    return _emit(args, report, format_flops(cfg, report))


def cmd_isoflop(args: argparse.Namespace) -> int:
    cfg = _load(args)
    iso = isoflop(cfg, args.seq_len, args.batch_size)
    return _emit(args, iso, format_isoflop(cfg, iso))


def cmd_info(args: argparse.Namespace) -> int:
    cfg = _load(args)
    params, report = count_params(cfg), count_flops(cfg, args.seq_len, args.batch_size)
    iso = isoflop(cfg, args.seq_len, args.batch_size)
    text = "\n\n".join([format_params(cfg, params), format_flops(cfg, report), format_isoflop(cfg, iso)])
    return _emit(args, {"params": params, "flops": report, "isoflop": iso}, text)


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = [
        ("params", cmd_params, "count parameters by part (backbone, bank, memory layers)", False),
        ("flops", cmd_flops, "count forward/backward/training FLOPs per sequence, by component", True),
        ("isoflop", cmd_isoflop, "find the dense depth with the same forward FLOPs", True),
        ("info", cmd_info, "parameters, FLOPs and iso-FLOP dense depth in one readable report", True),
    ]
    for name, func, help_text, takes_seq_len in commands:
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        add_config_args(p)
        if takes_seq_len:
            p.add_argument(
                "--seq-len",
                type=_positive_int,
                default=None,
                metavar="L",
                help="tokens per sequence (default: model.max_seq_len)",
            )
            p.add_argument(
                "--batch-size",
                type=_batch_size,
                default=1,
                metavar="B",
                help="sequences per micro-batch (default 1: the paper's counts). MoC projects each "
                "distinct selected chapter once per micro-batch, so memory FLOPs per sequence fall with B",
            )
        p.add_argument("--json", action="store_true", help="print machine-readable JSON")
        p.set_defaults(func=func)
