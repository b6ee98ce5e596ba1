"""Generation throughput: generated tokens/s of a MoC model vs. its iso-FLOP dense baseline.

Both models decode the same random prompts (same batch, prompt length and number of new tokens) with
the KV cache, greedily, never stopping early. Three numbers per model:

- prefill ms: one forward over the prompts, filling the cache;
- decode tok/s: new tokens per second of the one-token steps after the prefill (a plain loop over
  ``MoCForCausalLM.forward`` with the cache: the model's own cost);
- generate tok/s: new tokens per second of ``model.generate()`` end to end (prefill + decode +
  Hugging Face's per-step overhead).

    python bench/decode.py                                       # tiny presets on the CPU
    python bench/decode.py --preset paper-moc --device cuda --dtype bfloat16 --batch 16 \
        --prompt-len 512 --new-tokens 256                        # the paper's models on one GPU

The dense model is ``moc.accounting.isoflop_config(cfg)``: same width, the depth whose training forward
FLOPs (at train.seq_len) match the MoC model's. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import moc
from moc.accounting import isoflop_config
from moc.hf import MoCDynamicCache, from_moc_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def bench_one(cfg: moc.RunConfig, args: argparse.Namespace) -> dict:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model = from_moc_model(moc.build_model(cfg)).to(device=device, dtype=dtype).eval()
    B, P, N = args.batch, args.prompt_len, args.new_tokens
    if cfg.model.max_seq_len < P + N:  # (ruff reads the upper-case names as constants)
        raise SystemExit(
            f"--prompt-len + --new-tokens = {P + N} exceeds model.max_seq_len {cfg.model.max_seq_len}"
        )
    ids = torch.randint(0, cfg.model.vocab_size, (B, P), device=device)
    mask = torch.ones(B, P + N, dtype=torch.long, device=device)

    def decode_loop() -> tuple[float, float]:
        cache = MoCDynamicCache()
        _sync(device)
        t0 = time.perf_counter()
        out = model(ids, attention_mask=mask[:, :P], cache=cache)
        nxt = out.logits[:, -1:].argmax(-1)
        _sync(device)
        t1 = time.perf_counter()
        for t in range(1, N):
            out = model(nxt, attention_mask=mask[:, : P + t], cache=cache)
            nxt = out.logits[:, -1:].argmax(-1)
        _sync(device)
        return t1 - t0, time.perf_counter() - t1

    def generate() -> float:
        _sync(device)
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask[:, :P],
            max_new_tokens=N,
            min_new_tokens=N,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        decode_loop()
        generate()
    prefill, decode, gen = [], [], []
    for _ in range(args.repeats):
        p, d = decode_loop()
        prefill.append(p)
        decode.append(d)
        gen.append(generate())
    best_p, best_d, best_g = min(prefill), min(decode), min(gen)  # least disturbed by other processes
    return {
        "name": cfg.name,
        "layers": cfg.model.n_layers,
        "memory_layers": len(cfg.memory_layers),
        "routing": cfg.memory.routing if cfg.memory_layers else "none",
        "params": sum(p.numel() for p in model.parameters()),
        "prefill_ms": 1000 * best_p,
        "decode_tokens_per_s": B * (N - 1) / best_d,
        "generate_tokens_per_s": B * N / best_g,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny-moc", help="MoC preset or YAML (default tiny-moc)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = moc.load_config(args.preset, args.overrides)
    if not cfg.memory_layers:
        raise SystemExit(f"{args.preset} has no memory layers; pass a MoC preset (e.g. tiny-moc, paper-moc)")
    dense = isoflop_config(cfg, cfg.train.seq_len)
    rows = [bench_one(cfg, args), bench_one(dense, args)]
    ratio = rows[0]["decode_tokens_per_s"] / rows[1]["decode_tokens_per_s"]

    print(
        f"decode benchmark: batch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}"
    )
    header = ("model", "layers", "params", "prefill ms", "decode tok/s", "generate tok/s")
    print("{:<24} {:>6} {:>12} {:>11} {:>13} {:>15}".format(*header))
    for r in rows:
        print(
            f"{r['name']:<24} {r['layers']:>6} {r['params']:>12,} {r['prefill_ms']:>11.1f} "
            f"{r['decode_tokens_per_s']:>13.1f} {r['generate_tokens_per_s']:>15.1f}"
        )
    print(f"MoC / iso-FLOP dense decode speed: {ratio:.2f}")
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "threads": torch.get_num_threads(),
        "moc": rows[0],
        "dense_isoflop": rows[1],
        "moc_over_dense_decode": ratio,
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
