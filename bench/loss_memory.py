"""Peak memory of the LM loss: full logits vs. chunked linear + cross-entropy.

Each method runs in a fresh subprocess: hidden states (N x d) and the output embedding (V x d) are
made first, then the loss forward + backward; the reported figure is the growth of the process's peak
resident memory (``ru_maxrss``) during the loss, i.e. what the loss itself needed on top of its inputs.

    python bench/loss_memory.py                       # N=4096 tokens, V=49152, d=768, chunks of 1024
    python bench/loss_memory.py --tokens 4096 --vocab 49152 --chunk 512 --json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_one(method: str, tokens: int, vocab: int, d: int, chunk: int) -> dict:
    import torch
    import torch.nn.functional as F

    from moc.model.loss import chunked_linear_cross_entropy

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    h = (torch.randn(tokens, d, generator=g) * 0.02).requires_grad_()
    w = (torch.randn(vocab, d, generator=g) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), generator=g)
    w.grad, h.grad = torch.zeros_like(w), torch.zeros_like(h)  # gradient buffers count as inputs
    before = _peak_mib()
    t0 = time.perf_counter()
    if method == "full":
        loss = F.cross_entropy(F.linear(h, w).float(), y)
    else:
        loss = chunked_linear_cross_entropy(h, w, y, chunk)
    loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "method": method,
        "tokens": tokens,
        "vocab": vocab,
        "d_model": d,
        "chunk": chunk if method == "chunked" else None,
        "loss": float(loss),
        "peak_growth_mib": round(_peak_mib() - before, 1),
        "seconds": round(seconds, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", choices=["full", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.tokens, args.vocab, args.d_model, args.chunk)))
        return
    rows = []
    for method in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--child", method, "--tokens", str(args.tokens)]
        cmd += ["--vocab", str(args.vocab), "--d-model", str(args.d_model), "--chunk", str(args.chunk)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    fp32_logits = args.tokens * args.vocab * 4 / 2**20
    print(f"LM loss, {args.tokens} tokens x vocab {args.vocab} (fp32 logits alone: {fp32_logits:,.0f} MiB)")
    for r in rows:
        what = "full logits" if r["method"] == "full" else f"chunked ({r['chunk']} tokens)"
        peak, sec = r["peak_growth_mib"], r["seconds"]
        print(f"  {what:<22} peak +{peak:>8,.1f} MiB  {sec:>6.1f} s  loss {r['loss']:.6f}")


if __name__ == "__main__":
    main()
