"""PyTorch's CPU attention (SDPA) forward and backward against the head dim, as is and zero-padded.

For each head dim, one ``F.scaled_dot_product_attention`` forward and backward (grouped-query: H query
heads, H / 2 key/value heads) on the head dim itself and, where it is not a multiple of 16, on the head
dim zero-padded to the next multiple of 16 (the padding and the slice included). Both run interleaved
in one process on one thread, timed in CPU seconds of the process, median of the rounds. It is what
``moc.model.layers.CPU_SDPA_MIN_HEAD_DIM`` rests on: below 16 padded is faster, above it slower.
Defaults: the capacity presets' attention (16 packed rows of 68 tokens, a document mask, 2 query heads)::

    python bench/attention_head_dim.py
    python bench/attention_head_dim.py --batch 4 --seq 256 --heads 4 --causal
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from interleave import time_interleaved


def make_run(batch: int, seq: int, heads: int, hd: int, padded: int, causal: bool) -> Callable[[], None]:
    g = torch.Generator().manual_seed(hd)
    kv_heads = max(heads // 2, 1)
    q = torch.randn(batch, heads, seq, hd, generator=g, requires_grad=True)
    k, v = (torch.randn(batch, kv_heads, seq, hd, generator=g, requires_grad=True) for _ in range(2))
    grad = torch.randn(batch, heads, seq, hd, generator=g)
    causal_mask = torch.ones(seq, seq, dtype=torch.bool).tril().expand(batch, 1, seq, seq).clone()
    mask = None if causal else causal_mask
    pad = (0, padded - hd)

    def run() -> None:
        qq, kk, vv = (F.pad(x, pad) if padded != hd else x for x in (q, k, v))
        out = F.scaled_dot_product_attention(
            qq, kk, vv, attn_mask=mask, is_causal=causal, enable_gqa=kv_heads != heads, scale=hd**-0.5
        )
        out[..., :hd].backward(grad)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=68)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--causal", action="store_true", help="is_causal instead of a (B, 1, L, L) mask")
    ap.add_argument("--dims", default="4,8,10,12,16,20,24,32,40,48,64")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs: dict[tuple[int, int], Callable[[], None]] = {}
    for hd in (int(d) for d in args.dims.split(",")):
        for padded in sorted({hd, -(-hd // 16) * 16}):
            runs[hd, padded] = make_run(args.batch, args.seq, args.heads, hd, padded, args.causal)
            runs[hd, padded]()  # warm up
    times = time_interleaved(runs, args.rounds, args.steps)
    mask = "is_causal" if args.causal else "a document mask"
    print(f"SDPA forward + backward, {args.batch} x {args.seq} tokens, {args.heads} heads, {mask}, 1 thread")
    print(f"{'head dim':>8}  {'ms':>7}  {'padded to':>9}  {'ms':>7}  padded / as is")
    for hd in sorted({hd for hd, _ in runs}):
        own = statistics.median(times[hd, hd])
        row = f"{hd:>8}  {own:7.3f}"
        padded = -(-hd // 16) * 16
        if padded != hd:
            other = statistics.median(times[hd, padded])
            row += f"  {padded:>9}  {other:7.3f}  {other / own:.2f}x"
        print(row)


if __name__ == "__main__":
    main()
