"""Training-step throughput of MoC (causal, token, sequence routing) against its dense baselines.

One step = forward + backward + AdamW on random tokens (the setting of the authors' published H100
measurements). In one process it runs the MoC preset with each routing mode, the dense model of the
same backbone, and the iso-FLOP dense model (depth from the batch-aware count at this micro-batch),
and prints tokens/s, step time, peak memory, MFU by the paper's count (micro-batch 1) and by the
batch-aware count, and the ratios the targets are stated in (causal / sequence, token / sequence,
MoC / iso-FLOP dense).

    python bench/train_step.py                                   # tiny presets on the CPU
    python bench/train_step.py --preset paper-moc --device cuda --dtype bfloat16 \\
        --batch 16 --seq-len 1024 --check-kernel --out bench/RESULTS.md  # the paper's models on one GPU

``--saved-bytes`` measures instead what one forward saves for backward (unique storages seen by
``torch.autograd.graph.saved_tensors_hooks``, parameters excluded) per routing mode at two batch sizes,
and the growth ratios of the issue's CPU target:

    python bench/train_step.py --saved-bytes --preset paper-moc --seq-len 512 \\
        --set model.n_layers=4 --set 'memory.layers=[1,3]'

``--check-kernel`` compares the Triton forward of the memory read with the PyTorch path at the config's
shapes and times both (CUDA; on the CPU only as a smoke test with TRITON_INTERPRET=1 and a tiny preset).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import sys
import time
from typing import Any

import torch

import moc
from moc.accounting import count_flops, isoflop_config, mfu
from moc.kernels.dispatch import paths_used

ROUTINGS = ("causal", "token", "sequence")


def _model(cfg: moc.RunConfig, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return moc.build_model(cfg).to(device)


def _step_fn(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pos: torch.Tensor | None,
    opt: Any,
    autocast: Any,
) -> Any:
    def step() -> None:
        with autocast:
            out = model(x, labels=y, shift_labels=False, return_logits=False, position_ids=pos)
            loss = out.loss + out.aux_loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_one(cfg: moc.RunConfig, args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps of ``cfg`` after ``args.warmup`` ones."""
    device = torch.device(args.device)
    model = _model(cfg, device)
    model.gradient_checkpointing = args.checkpointing
    if args.compile:
        for block in model.layers:
            block.compile()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len + 1), device=device)
    x, y = ids[:, :-1], ids[:, 1:]
    pos = _packed_positions(args.batch, args.seq_len, args.packed, device) if args.packed else None
    dtype = getattr(torch, args.dtype)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    step = _step_fn(model, x, y, pos, opt, autocast)
    paths_used(reset=True)
    for _ in range(args.warmup):
        step()
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if on_gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.steps
    read_path = ", ".join(paths_used(reset=True)) or ("torch" if cfg.memory.enabled else "-")
    tokens_per_s = args.batch * args.seq_len / seconds
    distinct = projected = None
    if cfg.memory.enabled:  # outside the timed steps: reading the routing syncs
        with torch.no_grad(), autocast:
            routing = model(x, labels=y, shift_labels=False, return_logits=False).routing
        # distinct chapters per memory layer (mean over layers), and the rows the read projects: the
        # static bound min(C, decisions x n_sel) (moc.model.memory.MemoryLayer.distinct_chapters)
        distinct = sum(len(torch.unique(r.indices[r.valid])) for r in routing) / len(routing)
        projected = sum(min(cfg.memory.n_chapters, r.indices.numel()) for r in routing) / len(routing)
    if on_gpu:
        peak_gb = torch.cuda.max_memory_allocated() / 1e9
    else:  # process-wide high-water mark (Linux reports KiB)
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    peak = args.peak_tflops * 1e12
    row = {
        "name": cfg.name,
        "read_path": read_path,
        "layers": cfg.model.n_layers,
        "routing": cfg.memory.routing if cfg.memory.enabled else None,
        "params": sum(p.numel() for p in model.parameters()),
        "forward_flops_per_seq_paper": count_flops(cfg, args.seq_len)["forward"],
        "forward_flops_per_seq_batch": count_flops(cfg, args.seq_len, batch_size=args.batch)["forward"],
        "step_seconds": seconds,
        "tokens_per_s": tokens_per_s,
        # MFU is only meaningful against an accelerator's peak.
        "mfu_paper": mfu(tokens_per_s, cfg, args.seq_len, peak) if on_gpu else None,
        "mfu_batch": mfu(tokens_per_s, cfg, args.seq_len, peak, batch_size=args.batch) if on_gpu else None,
        "peak_memory_gb": peak_gb,
        "distinct_chapters": distinct,
        "projected_chapters": projected,
        "mfu_measured": mfu(
            tokens_per_s, cfg, args.seq_len, peak, batch_size=args.batch, projected_chapters=distinct
        )
        if on_gpu and distinct
        else None,
    }
    del model, opt
    if on_gpu:
        torch.cuda.empty_cache()
    return row


def _packed_positions(batch: int, seq_len: int, doc_len: int, device: torch.device) -> torch.Tensor:
    """Position ids of rows packed with documents of ``doc_len`` tokens (restarting at each), as the
    training loop passes them for packed data."""
    return (torch.arange(seq_len, device=device) % doc_len).expand(batch, seq_len)


def saved_bytes(cfg: moc.RunConfig, batch: int, seq_len: int, device: torch.device, logits: bool) -> int:
    """Bytes one training forward saves for backward: unique storages, parameters excluded.

    ``logits``: the loss from full (B, L, V) logits (as before the chunked loss), else the chunked loss.
    """
    model = _model(cfg, device)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, cfg.model.vocab_size, (batch, seq_len + 1), device=device)
    seen: dict[int, int] = {}
    held: list[torch.Tensor] = []  # so that no counted storage is freed and its address reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
            held.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        # (the graph is kept alive until counted: a freed storage's address could be reused)
        if logits:
            out = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        else:
            out = model(ids[:, :-1], labels=ids[:, 1:], shift_labels=False, return_logits=False)
            loss = out.loss
    held.clear()
    del out, loss, model
    return sum(seen.values())


def run_saved_bytes(base: moc.RunConfig, args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    lo, hi = args.saved_batches
    rows = []
    for mode in args.routings_saved.split(","):
        cfg = base.replace([f"memory.routing={mode}"])
        t0 = time.perf_counter()
        a = saved_bytes(cfg, lo, args.seq_len, device, args.full_logits)
        b = saved_bytes(cfg, hi, args.seq_len, device, args.full_logits)
        rows.append(
            {
                "routing": mode,
                f"bytes_b{lo}": a,
                f"bytes_b{hi}": b,
                "growth": b - a,
                "seconds": time.perf_counter() - t0,
            }
        )
        print(
            f"{mode:9s} batch {lo}: {a / 2**20:9.1f} MiB  batch {hi}: {b / 2**20:9.1f} MiB  "
            f"growth {(b - a) / 2**20:9.1f} MiB",
            flush=True,
        )
    seq = next((r for r in rows if r["routing"] == "sequence"), {"growth": float("nan")})["growth"]
    for r in rows:
        r["growth_vs_sequence"] = r["growth"] / seq
    print("growth / sequence's: " + ", ".join(f"{r['routing']} {r['growth_vs_sequence']:.3f}" for r in rows))
    print("targets: causal <= 1.15, token <= 1.5")
    return rows


TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 3e-2}  # max error / max |reference|, unclamped


def check_kernel(cfg: moc.RunConfig, args: argparse.Namespace) -> dict:
    """The Triton read against the PyTorch loops at this config's memory shapes, for the tiles of each
    routing mode (token: one query per tile; causal: chunks; sequence: chunks sharing their document's
    decision): errors against an fp32 reference with a pass/fail tolerance, times of both forward layouts
    and of the backward, whether two backward runs are bit-identical, and the K/V bytes each forward
    layout loads. CUDA (on the CPU with TRITON_INTERPRET=1 and a tiny preset)."""
    from moc.kernels import triton_read
    from moc.kernels.routed_read import routed_read_backward_torch, routed_read_forward_torch

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    mem = cfg.memory
    hd = (mem.bank_dim if mem.bank_type == "reduced" else cfg.model.d_model) // mem.n_heads
    T, n, scale, c = mem.chapter_size, mem.n_selected_chapters, hd**-0.5, mem.causal_chunk_size
    tol = TOLERANCE[args.dtype]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn: Any, *fn_args: Any) -> float:
        if args.timing_repeats <= 0:
            return float("nan")
        fn(*fn_args)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.timing_repeats):
            fn(*fn_args)
        sync()
        return 1e3 * (time.perf_counter() - t0) / args.timing_repeats

    def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
        # relative to the reference's own scale (no clamp: a gradient of size 1e-5 is checked at 1e-5)
        finite = torch.isfinite(want)
        err = (got.float() - want.float()).abs()
        err = torch.where(finite, err, (got.float() != want.float()).float() * float("inf"))  # -inf lse
        scale = want.float()[finite].abs().max() if finite.any() else want.new_zeros(())
        if float(scale) == 0.0:
            return 0.0 if float(err.max()) == 0.0 else float("inf")
        return float(err.max() / scale)

    def corrupt(name: str, t: torch.Tensor) -> torch.Tensor:
        # the negative control: a zeroed output or gradient must fail the check
        return torch.zeros_like(t) if name in args.corrupt else t

    result: dict[str, Any] = {"tolerance": tol, "failed": []}
    tiles_per_seq = -(-args.seq_len // c)
    shapes = {
        "token": (args.batch * args.seq_len, 1, 1),
        "causal": (args.batch * tiles_per_seq, c, 1),
        "sequence": (args.batch * tiles_per_seq, c, tiles_per_seq),  # a document's tiles share a decision
    }
    for mode, (D, Qt, share) in shapes.items():
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(D, Qt, mem.n_heads, hd, device=device, dtype=dtype, generator=g)
        k = torch.randn(mem.n_chapters, T, mem.n_kv_heads, hd, device=device, dtype=dtype, generator=g)
        v = torch.randn_like(k)
        picks = torch.rand(D // share, mem.n_chapters - 1, device=device, generator=g).topk(n - 1).indices + 1
        idx = torch.cat([torch.zeros_like(picks[:, :1]), picks], 1).repeat_interleave(
            share, 0
        )  # shared chapter 0
        # router-like weights: a peaked softmax over every chapter, the picks' weights renormalised
        probs = (3 * torch.randn(D // share, mem.n_chapters, device=device, generator=g)).softmax(-1)
        w = probs.gather(1, idx[::share]).div(probs.gather(1, idx[::share]).sum(-1, keepdim=True))
        w = w.repeat_interleave(share, 0)
        kv_bytes = T * hd * 2 * k.element_size() * mem.n_heads
        r: dict[str, Any] = {"tiles": D, "queries_per_tile": Qt, "keys_per_tile": n * T}
        ref, ref_lse = routed_read_forward_torch(q.float(), k.float(), v.float(), idx, w, "kv", scale)
        errors = {}
        for layout in ("grouped", "tiles"):
            out, lse = triton_read.forward(q, k, v, idx, w, "kv", scale, layout)
            errors[f"{layout}_out"] = rel_err(corrupt("out", out), ref)
            errors[f"{layout}_lse"] = rel_err(corrupt("lse", lse), ref_lse)
            r[f"{layout}_forward_ms"] = timed(triton_read.forward, q, k, v, idx, w, "kv", scale, layout)
            r[f"{layout}_kv_gb_loaded"] = (
                triton_read.chapter_loads(idx, mem.n_chapters, Qt, layout) * kv_bytes / 1e9
            )
        r["tiles_over_grouped_kv_bytes"] = r["tiles_kv_gb_loaded"] / r["grouped_kv_gb_loaded"]
        r["torch_forward_ms"] = timed(routed_read_forward_torch, q, k, v, idx, w, "kv", scale)
        bwd_args = (torch.randn_like(q), q, ref.to(dtype), ref_lse, k, v, idx, w, "kv", scale)
        fp32 = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in bwd_args]
        want = routed_read_backward_torch(*fp32)
        got = triton_read.backward(*bwd_args)
        again = triton_read.backward(*bwd_args)
        r["backward_bit_identical"] = all(torch.equal(a, b) for a, b in zip(got, again))
        for name, a, b in zip(("dq", "dk", "dv", "dw"), got, want, strict=True):
            errors[name] = rel_err(corrupt(name, a), b)
        r["triton_backward_ms"] = timed(triton_read.backward, *bwd_args)
        r["torch_backward_ms"] = timed(routed_read_backward_torch, *bwd_args)
        r["relative_errors"] = errors
        bad = [f"{mode} {name} error {e:.2e} > {tol:g}" for name, e in errors.items() if not e <= tol]
        # the negative control inside: each output and gradient, zeroed alone, must fail this tolerance
        zeroed = {"out": (ref, ref), "lse": (ref_lse, ref_lse)} | dict(
            zip(("dq", "dk", "dv", "dw"), zip(want, want))
        )
        r["zeroed_errors"] = {name: rel_err(torch.zeros_like(a), b) for name, (a, b) in zeroed.items()}
        bad += [
            f"{mode} a zeroed {name} would pass ({e:.2e})"
            for name, e in r["zeroed_errors"].items()
            if e <= tol
        ]
        if not r["backward_bit_identical"]:
            bad.append(f"{mode} backward not bit-identical across two runs")
        result["failed"] += bad
        result[mode] = r
        print(
            f"kernel check {mode}: max relative error {max(errors.values()):.2e} (tolerance {tol:g}); K/V "
            f"loaded per forward: per tile {r['tiles_kv_gb_loaded']:.3f} GB, grouped "
            f"{r['grouped_kv_gb_loaded']:.3f} GB ({r['tiles_over_grouped_kv_bytes']:.1f}x fewer); "
            f"backward bit-identical: {r['backward_bit_identical']}",
            flush=True,
        )
    print(json.dumps(result, indent=2), flush=True)
    return result


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def _table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"device {args.device}, dtype {args.dtype}, batch {args.batch} x {args.seq_len} tokens",
        "",
        "| model | routing | read path | layers | params | step ms | tokens/s | MFU paper | MFU batch-aware "
        "| MFU measured chapters | distinct / projected chapters | peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def chapters(r: dict) -> str:
        if r["distinct_chapters"] is None:
            return "-"
        return f"{r['distinct_chapters']:.0f} / {r['projected_chapters']:.0f}"

    for r in rows:
        lines.append(
            f"| {r['name']} | {r['routing'] or '-'} | {r['read_path']} | {r['layers']} | {r['params']:,} | "
            f"{1e3 * r['step_seconds']:.1f} | {r['tokens_per_s']:,.0f} | {pct(r['mfu_paper'])} | "
            f"{pct(r['mfu_batch'])} | {pct(r['mfu_measured'])} | {chapters(r)} | {r['peak_memory_gb']:.2f} |"
        )
    by = {r["key"]: r for r in rows}
    ratios = []
    for a, b, target in (
        ("moc-causal", "moc-sequence", "<= 1.1"),
        ("moc-token", "moc-sequence", "<= 1.3"),
        ("moc-causal", "iso", "<= 1.0"),
        ("moc-sequence", "iso", "<= 1.0"),
    ):
        if a in by and b in by:
            ratio = by[a]["step_seconds"] / by[b]["step_seconds"]
            ratios.append(f"{a} / {b} step time: {ratio:.3f} (target {target})")
    return "\n".join(lines + [""] + ratios)


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
    p.add_argument(
        "--packed", type=int, default=0, metavar="DOC_LEN",
        help="pass position ids of rows packed with DOC_LEN-token documents, as training on packed data does",
    )  # fmt: skip
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--compile", action="store_true", help="torch.compile each block")
    p.add_argument("--routings", default=",".join(ROUTINGS), help="MoC routing modes to run, comma-separated")
    p.add_argument("--only", choices=["moc", "dense", "iso"], action="append", help="run a subset")
    p.add_argument("--saved-bytes", action="store_true", help="measure saved-for-backward bytes instead")
    p.add_argument("--saved-batches", type=int, nargs=2, default=[2, 4], metavar=("B1", "B2"))
    p.add_argument("--full-logits", action="store_true", help="--saved-bytes: full logits + cross-entropy")
    p.add_argument("--routings-saved", default=",".join(ROUTINGS), help="modes for --saved-bytes")
    p.add_argument("--check-kernel", action="store_true", help="Triton vs PyTorch memory read (CUDA)")
    p.add_argument("--timing-repeats", type=int, default=3, help="--check-kernel: timed calls (0: no timing)")
    p.add_argument("--check-only", action="store_true", help="--check-kernel, then stop (no benchmark)")
    p.add_argument(
        "--corrupt", action="append", default=[], choices=["out", "lse", "dq", "dk", "dv", "dw"],
        help="negative control: zero this Triton output or gradient before checking (the check must fail)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="append the table (markdown) to this file")
    args = p.parse_args()

    cfg = moc.load_config(args.preset, args.overrides + [f"model.max_seq_len={max(args.seq_len, 1)}"])
    if args.saved_bytes:
        if not cfg.memory.enabled:
            raise SystemExit("--saved-bytes needs a MoC preset (memory.enabled=true)")
        rows = run_saved_bytes(cfg, args)
        if args.json:
            print(json.dumps(rows, indent=2))
        return
    kernel = check_kernel(cfg, args) if args.check_kernel and cfg.memory.enabled else None
    if args.check_only:
        if kernel and kernel["failed"]:
            raise SystemExit("kernel check FAILED: " + "; ".join(kernel["failed"]))
        return
    models: dict[str, moc.RunConfig] = {}
    if cfg.memory.enabled:
        for mode in [m for m in args.routings.split(",") if m]:
            models[f"moc-{mode}"] = cfg.replace([f"memory.routing={mode}", f"name={cfg.name}-{mode}"])
        dense = cfg.replace(["memory.enabled=false", "memory.layers=[]", f"name={cfg.name}-dense"])
        iso = isoflop_config(cfg, args.seq_len, batch_size=args.batch)
        models.update(dense=dense, iso=iso.replace([f"name={cfg.name}-isoflop"]))
    else:
        models["dense"] = cfg
    rows = []
    for key, c in models.items():
        if args.only and key.split("-")[0] not in args.only:
            continue
        row = bench_one(c, args) | {"key": key}
        rows.append(row)
        print(json.dumps(row) if args.json else f"{key}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
    table = _table(rows, args)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(
                f"\n## {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {args.preset}\n\n"
                f"card: {torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor()}"
                f", torch {torch.__version__}, triton {_triton_version()}\n\n"
                f"command: `python bench/train_step.py "
                f"{' '.join(sys.argv[1:])}`\n\n{table}\n"
                + (f"\nTriton kernel check: `{json.dumps(kernel)}`\n" if kernel else "")
            )
    if kernel and kernel["failed"]:
        raise SystemExit("kernel check FAILED: " + "; ".join(kernel["failed"]))


if __name__ == "__main__":
    main()
