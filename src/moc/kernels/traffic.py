"""Counted memory traffic and temporaries of the Triton read, and a lower bound to hold them against.

Nothing here runs a kernel. The launchers of ``triton_read`` run on **meta tensors** (shapes only) with
the real routing indices, so the work list is the one a GPU would build; kernel launches are logged
instead of run (``triton_read.record_launches``). Then:

- **temporaries**: every tensor the launchers allocate (a ``TorchDispatchMode`` sees each op's new
  outputs), minus the outputs they return: an upper bound on the peak, since nothing is freed;
- **bytes moved**: each PyTorch op reads its inputs and writes its outputs; each kernel's global loads
  and stores are counted per program from its arguments and the work list (``_kernel_bytes``, written
  from the kernels' code; no cache is assumed, every load goes to memory);
- **lower bound** (:func:`lower_bound`), per routing mode, from the shapes alone.

The lower bound, for a read of D tiles of Qt queries, each pair (tile, chapter) of the P = D x n:
a pair's scores need the tile's queries and the chapter's keys together. Either the pair is computed
tile-side (a program holding the tile's running softmax loads the chapter's K and V for it:
Hkv T hd x 2 elements per pair) or chapter-side (a program holding the chapter loads the tile's Qt
query rows, and its partial output, normalised in the output's precision, plus a log-sum-exp, must be
written and read once to be merged: Qt H (hd + 2 (hd + 4 B / e))). Per pair the cheaper side is
counted, plus what any read moves once: q, the output and its log-sum-exp; K/V of each distinct
chapter once where the chapter side is cheaper. Backward: dK/dV are computed chapter-side (tile-side
they would need a per-pair dK/dV written and read: 4 Hkv T hd elements, more than any Qt <= 64 rows'
q and do); dq tile-side (K/V per pair) or chapter-side (a per-pair share of dq written and read); plus
reading out and do once (the softmax's row term), the distinct chapters' K/V once, writing dq, dK, dV.

Token routing (Qt = 1) is chapter-side in both directions; causal and sequence chunks (Qt = 64) are
tile-side in the forward and tied for dq in the backward. The bound takes sequence routing's tiles
(document pieces sharing a decision) as independent tiles, as the kernels see them.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from moc.kernels import triton_read as tr

PAPER = {
    "batch": 16,
    "seq_len": 1024,
    "n_chapters": 4097,
    "n_shared": 1,
    "top_k": 64,
    "chapter": 64,
    "heads": 12,
    "kv_heads": 12,
    "head_dim": 64,
    "chunk": 64,
}


class _Counter(TorchDispatchMode):
    """Bytes each op reads and writes, and the bytes of every new (non-view) output."""

    def __init__(self) -> None:
        super().__init__()
        self.allocated = 0
        self.moved = 0
        self.allocations: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._schema.name.split("::")[-1]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        aliases = [r.alias_info is not None for r in func._schema.returns]
        aliases += [False] * (len(outs) - len(aliases))
        for t, alias in zip(outs, aliases):
            if not alias:
                self.allocated += _nbytes(t)
                self.allocations.append((name, _nbytes(t)))
        pure_view = all(aliases) and not name.endswith("_")  # view, slice, transpose: no data moves
        if not (name.startswith("empty") or pure_view):  # an op reads its inputs, writes its outputs
            ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
            self.moved += sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs)
        return out


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _es(t: Any) -> int:
    return t.element_size() if isinstance(t, torch.Tensor) else 4


def _kernel_bytes(name: str, grid: tuple[int, ...], a: dict[str, Any]) -> int:
    """Global-memory bytes one launch loads and stores, from its arguments and the work list."""
    if name == "_tiles_fwd":
        D, H, n_qb = grid
        Qt, n, T, hd = a["n_queries"], a["n_sel"], a["T"], a["HEAD_DIM"]
        e = _es(a["Q"])
        per_program = n * (T * hd * 2 * e + 16)  # each chapter's K, V; its index and a, b, c
        return D * H * (n_qb * per_program + Qt * hd * e * 2 + Qt * 4)  # + q in, out and lse out
    if name == "_merge":
        D, _ = grid
        rows = a["n_queries"] * a["n_group_heads"]
        hd, n = a["HEAD_DIM"], a["n_sel"]
        return D * rows * (n * (hd * _es(a["OP"]) + 4) + hd * _es(a["O"]) + 4)
    if name == "_finish_kv":
        U, _ = grid
        items = (a["WORK_START"][1:] - a["WORK_START"][:-1]).long()
        gk, e = a["n_group_kv"], _es(a["DK"])
        width = a["T"] * gk * a["HEAD_DIM"]
        summed = items[items != 1]
        return U * 8 + int(summed.sum()) * width * 4 * 2 + summed.numel() * width * e * 2
    work_chapter = a["WORK_CH"]
    live = work_chapter >= 0
    n_items = int(live.sum())
    idle = (work_chapter.numel() - n_items) * 4  # the tail's items read their chapter id and return
    seg = a["SEG"].long()
    rows = int((seg[-1] - seg[0]) * a["n_queries"]) if seg.numel() else 0
    T, hd = a["T"], a["HEAD_DIM"]
    if name == "_grouped_fwd":
        hg = grid[1]
        e, pe = _es(a["Q"]), _es(a["OP"])
        kv = T * hd * 2 * e
        per_row = hd * e + 4 + 12 + hd * pe + 4  # q, pair id, a/b/c; partial out and lse
        return hg * (idle + n_items * (kv + 12) + rows * per_row)
    if name == "_grouped_bwd":
        _, gk, n_tb = grid
        group = a["group"]
        e, pe = _es(a["Q"]), _es(a["DQP"])
        kv = min(T, a["BLOCK_T"] * n_tb) * hd * 2 * e  # over the T blocks: the chapter's K, V once
        slot = a["WORK_SLOT"]
        split = int((slot >= 0).sum())
        dkv_out = (n_items - split) * T * hd * 2 * e + split * T * hd * 2 * 4
        per_row_head = 2 * hd * e + 8 + hd * pe  # q, do, lse, delta; its dq share
        per_row = 16 + 4 * n_tb + group * per_row_head * n_tb  # pair id, a/b/c, dw share
        return gk * (idle * n_tb + n_items * (kv + 16) + dkv_out + rows * per_row)
    raise ValueError(f"no byte count for kernel {name!r}")


@dataclass
class Count:
    """One direction of one read: temporaries (bytes), bytes moved, and per kernel / torch."""

    temporaries: int
    moved: int
    kernel_bytes: dict[str, int]
    torch_bytes: int
    lower_bound: int

    @property
    def ratio(self) -> float:
        return self.moved / self.lower_bound


def paper_problem(mode: str, shapes: dict[str, int] | None = None, seed: int = 0) -> dict[str, Any]:
    """The read's tensors at the paper's shapes for ``mode``: q/k/v/do as meta tensors, idx/w real
    (random picks: chapter 0 shared, top-k of the rest uniformly, weights a peaked softmax)."""
    s = {**PAPER, **(shapes or {})}
    B, L, c = s["batch"], s["seq_len"], s["chunk"]
    n = s["n_shared"] + s["top_k"]
    D, Qt, share = {
        "token": (B * L, 1, 1),
        "causal": (B * math.ceil(L / c), c, 1),
        "sequence": (B * math.ceil(L / c), c, math.ceil(L / c)),  # a document's pieces share a decision
    }[mode]
    g = torch.Generator().manual_seed(seed)
    decisions = D // share
    picks = torch.rand(decisions, s["n_chapters"] - s["n_shared"], generator=g).topk(s["top_k"]).indices
    idx = torch.cat([torch.arange(s["n_shared"]).expand(decisions, -1), picks + s["n_shared"]], 1)
    w = (4 * torch.randn(decisions, n, generator=g)).softmax(-1)
    meta = {"device": "meta", "dtype": torch.bfloat16}
    U, T, kvh, hd, H = s["n_chapters"], s["chapter"], s["kv_heads"], s["head_dim"], s["heads"]
    return {
        "q": torch.empty(D, Qt, H, hd, **meta),
        "k": torch.empty(U, T, kvh, hd, **meta),
        "v": torch.empty(U, T, kvh, hd, **meta),
        "do": torch.empty(D, Qt, H, hd, **meta),
        "idx": idx.repeat_interleave(share, 0),
        "w": w.repeat_interleave(share, 0),
    }


def lower_bound(p: dict[str, Any], direction: str) -> int:
    """The lower bound of the module docstring, in bytes, for the problem ``p`` (see paper_problem)."""
    q, k = p["q"], p["k"]
    D, Qt, H, hd = q.shape
    U, T, kvh, _ = k.shape
    n = p["idx"].shape[1]
    e = q.element_size()
    P = D * n
    distinct = int(torch.unique(p["idx"]).numel())
    kv_pair = kvh * T * hd * 2 * e  # a chapter's K and V, all KV heads
    q_bytes = D * Qt * H * hd * e
    lse_bytes = D * H * Qt * 4
    if direction == "forward":
        chapter_side = Qt * H * (hd * e + 2 * (hd * e + 4))
        once = q_bytes + q_bytes + lse_bytes  # q in, out and lse out
        if chapter_side < kv_pair:
            return once + P * chapter_side + distinct * kv_pair
        return once + P * kv_pair
    rows_in = Qt * H * (2 * hd * e + 8)  # q, do, lse, delta per pair, chapter-side
    dq_side = min(kv_pair, 2 * Qt * H * hd * e)
    once = 2 * q_bytes + lse_bytes + distinct * kv_pair + q_bytes + U * kv_pair  # out, do; K, V; dq; dK, dV
    return once + P * (rows_in + dq_side)


def count(mode: str, direction: str, shapes: dict[str, int] | None = None, weighting: str = "kv") -> Count:
    """Temporaries and bytes moved by one ``direction`` ("forward" / "backward") of the Triton read at
    the paper's shapes for ``mode`` (or ``shapes``), planned on meta tensors (remembered per call)."""
    return _count(mode, direction, tuple(sorted((shapes or {}).items())), weighting)


@functools.cache
def _count(mode: str, direction: str, shapes: tuple[tuple[str, int], ...], weighting: str) -> Count:
    interpret = os.environ.pop("TRITON_INTERPRET", None)  # plan the GPU's work list, not the interpreter's
    try:
        return _plan(mode, direction, dict(shapes), weighting)
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret


def _plan(mode: str, direction: str, shapes: dict[str, int], weighting: str) -> Count:
    p = paper_problem(mode, shapes)
    q, k, v, do, idx, w = (p[x] for x in ("q", "k", "v", "do", "idx", "w"))
    scale = q.shape[-1] ** -0.5
    D, Qt, H, hd = q.shape
    counter = _Counter()
    with tr.record_launches() as launches:
        if direction == "forward":
            with counter:
                outs = tr.forward(q, k, v, idx, w, weighting, scale)
        else:
            out = torch.empty_like(q)
            lse = torch.empty(D, H, Qt, dtype=torch.float32, device="meta")
            with counter:
                outs = tr.backward(do, q, out, lse, k, v, idx, w, weighting, scale)
    out_bytes = sum(_nbytes(t) for t in outs)
    kernel_bytes: dict[str, int] = {}
    for name, grid, args in launches:
        kernel_bytes[name] = kernel_bytes.get(name, 0) + _kernel_bytes(name, grid, args)
    moved = counter.moved + sum(kernel_bytes.values())
    return Count(counter.allocated - out_bytes, moved, kernel_bytes, counter.moved, lower_bound(p, direction))


TARGET_TEMPORARIES = 10**9  # bytes per layer, forward and backward
TARGET_RATIO = 1.5  # bytes moved / lower bound


def report(modes: tuple[str, ...] = ("token", "causal", "sequence")) -> tuple[str, list[str]]:
    """The counted targets at the paper's shapes as text, and the targets missed."""
    lines = [
        "counted at the paper's token shapes (16 x 1,024 tokens, 1 shared + top-64 of 4,097 chapters of "
        "64, 12 heads of 64, bf16), per memory layer:",
        "| routing | direction | layout | temporaries | bytes moved | lower bound | moved / bound |",
        "|---|---|---|---|---|---|---|",
    ]
    missed = []
    for mode in modes:
        for direction in ("forward", "backward"):
            c = count(mode, direction)
            layout = (
                tr.pick_layout(1 if mode == "token" else PAPER["chunk"])
                if direction == "forward"
                else "grouped"
            )
            lines.append(
                f"| {mode} | {direction} | {layout} | {c.temporaries / 1e9:.3f} GB | "
                f"{c.moved / 1e9:.2f} GB | {c.lower_bound / 1e9:.2f} GB | {c.ratio:.2f} |"
            )
            if c.temporaries > TARGET_TEMPORARIES:
                missed.append(f"{mode} {direction}: temporaries {c.temporaries / 1e9:.2f} GB > 1 GB")
            if c.ratio > TARGET_RATIO:
                missed.append(f"{mode} {direction}: bytes moved {c.ratio:.2f}x the lower bound > 1.5x")
    return "\n".join(lines), missed


if __name__ == "__main__":
    text, missed = report()
    print(text)
    print(
        "targets (temporaries <= 1 GB, bytes moved <= 1.5x the bound):",
        "MISSED: " + "; ".join(missed) if missed else "all met",
    )
    raise SystemExit(1 if missed else 0)
