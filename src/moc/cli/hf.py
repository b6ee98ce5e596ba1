"""``moc export``, ``moc generate``, ``moc chat`` and ``moc eval``: moc models through Hugging Face tools.

Each takes a training checkpoint directory, a run's out_dir (its newest checkpoint), or an exported
Hugging Face folder. The tokenizer is found next to the weights, in the prepared data, or at the
config's ``data.tokenizer``; ``--tokenizer DIR`` overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moc.errors import UsageError, utf8_text

_MODEL_HELP = "training checkpoint dir, run out_dir (newest checkpoint) or exported Hugging Face folder"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a self-contained Hugging Face folder (trust_remote_code=True) for a checkpoint",
        description="Convert a training checkpoint into a Hugging Face model folder: config.json, "
        "model.safetensors, generation_config.json, tokenizer files and the model code.",
    )
    p.add_argument("checkpoint", help="training checkpoint dir or run out_dir")
    p.add_argument("out_dir", help="folder to write (must not exist or be empty, unless --force)")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer folder to include")
    tok.add_argument("--no-tokenizer", action="store_true", help="export the model without a tokenizer")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="weights dtype")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(func=_export)

    g = subparsers.add_parser("generate", help="continue a prompt with a model", description="Generate text.")
    _model_args(g)
    g.add_argument("--prompt", action="append", required=True, help="text to continue (repeat for a batch)")
    _sampling_args(g, max_new_tokens=64)
    g.add_argument("--no-bos", action="store_true", help="do not start the prompt with the bos token")
    g.set_defaults(func=_generate)

    c = subparsers.add_parser(
        "chat",
        help="chat with an instruction-tuned model",
        description="Chat using the tokenizer's chat template. Interactive (stdin) unless --message is "
        "given; type /reset to start over, /exit (or end of input) to quit.",
    )
    _model_args(c)
    c.add_argument("--message", action="append", default=None, help="send this user message, print the reply")
    c.add_argument("--system", default=None, help="system prompt")
    _sampling_args(c, max_new_tokens=256)
    c.set_defaults(func=_chat)

    e = subparsers.add_parser(
        "eval",
        help="run lm-evaluation-harness tasks on a model",
        description="Evaluate with lm-evaluation-harness (loglikelihood / generation tasks). Results go "
        "to the run folder as eval_results.step_N.json (pruning never deletes it), into an exported "
        "folder as eval_results.json, or to --output.",
    )
    _model_args(e)
    e.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    e.add_argument("--include-path", default=None, metavar="DIR", help="folder of local task YAML files")
    e.add_argument("--batch-size", type=int, default=1)
    e.add_argument("--limit", type=float, default=None, help="documents per task (fraction if < 1)")
    e.add_argument("--num-fewshot", type=int, default=None)
    e.add_argument(
        "--output",
        default=None,
        help="results JSON path (default: RUN/eval_results.step_N.json for a training checkpoint, "
        "FOLDER/eval_results.json for an export)",
    )
    e.set_defaults(func=_eval)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="CHECKPOINT_OR_DIR", help=_MODEL_HELP)
    p.add_argument(
        "--tokenizer", default=None, metavar="DIR", help="tokenizer folder (default: found with it)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="compute dtype (auto: bfloat16 on a GPU that supports it, else float32)",
    )


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")


def check_device(device: str) -> str:
    """``device`` if this machine can run on it; else a UsageError naming ``--device`` and what works
    (torch would raise a bare RuntimeError or AssertionError deep inside loading)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {device} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: no CUDA GPU is available to this torch; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise UsageError(f"--device {device}: this machine has {n} GPU(s), cuda:0..cuda:{n - 1}")
    elif dev.type not in ("cpu", "mps"):
        raise UsageError(f"--device {device}: moc runs on cpu or cuda; use one of those")
    return device


def _device_dtype(args: argparse.Namespace) -> tuple[str, Any]:
    import torch

    device = check_device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dtype != "auto":
        return device, getattr(torch, args.dtype)
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return device, torch.bfloat16
    return device, torch.float32


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from moc.hf import load_model, resolve_tokenizer

    device, dtype = _device_dtype(args)
    model, source = load_model(args.model, device=device, dtype=dtype)
    tok = resolve_tokenizer(source, args.tokenizer)
    return model, tok, source


def _export(args: argparse.Namespace) -> int:
    import torch

    from moc.hf import export

    out = export(
        args.checkpoint,
        args.out_dir,
        tokenizer=args.tokenizer,
        no_tokenizer=args.no_tokenizer,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        overwrite=args.force,
    )
    files = ", ".join(sorted(f.name for f in out.iterdir()))
    print(f"moc export: wrote {out} ({files})")
    print(f"  load with AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from moc.hf import generate_text

    model, tok, _ = _load(args)
    texts = generate_text(
        model,
        tok,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        add_bos=not args.no_bos,
    )
    for prompt, text in zip(args.prompt, texts):
        print(prompt + text)
        if len(texts) > 1:
            print("-" * 40)
    return 0


def _chat(args: argparse.Namespace) -> int:
    from moc.hf import chat_reply

    def reply(messages: list[dict[str, str]], stream: bool) -> str:
        return chat_reply(
            model,
            tok,
            messages,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            stream=stream,
        )

    model, tok, _ = _load(args)
    start = [{"role": "system", "content": utf8_text(args.system, "--system")}] if args.system else []
    messages = list(start)
    if args.message:  # scripted: one reply per message, the conversation carried along
        for text in args.message:
            messages.append({"role": "user", "content": utf8_text(text, "--message")})
            answer = reply(messages, stream=False)
            messages.append({"role": "assistant", "content": answer})
            print(answer)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("moc chat: type a message; /reset starts over, /exit quits", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            messages = list(start)
            continue
        messages.append({"role": "user", "content": utf8_text(text, "the message")})
        if interactive:
            print("assistant> ", end="", flush=True)
        answer = reply(messages, stream=interactive)
        if not interactive:
            print(answer, flush=True)
        messages.append({"role": "assistant", "content": answer})


def default_eval_output(model_dir: Path) -> Path:
    """Where ``moc eval`` writes its results by default: beside a training checkpoint, in its run's
    folder as ``eval_results.step_N.json`` (pruning deletes old checkpoint folders, and the results with
    them); into an exported folder as ``eval_results.json``."""
    from moc.hf.evaluation import RESULTS_FILE

    if model_dir.parent.name == "checkpoints":
        stem, suffix = RESULTS_FILE.rsplit(".", 1)
        return model_dir.parent.parent / f"{stem}.{model_dir.name}.{suffix}"
    return model_dir / RESULTS_FILE


def _eval(args: argparse.Namespace) -> int:
    from moc.hf.evaluation import evaluate, results_table

    if args.limit is not None and not args.limit > 0:  # lm-eval would fail deep inside on -1 or nan
        raise UsageError(f"--limit must be > 0 (documents per task, or a fraction if < 1), got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    model, tok, source = _load(args)
    output = Path(args.output) if args.output else default_eval_output(source.path)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    summary = evaluate(
        model,
        args.tasks,
        include_path=args.include_path,
        tokenizer=tok,
        batch_size=args.batch_size,
        limit=limit,
        num_fewshot=args.num_fewshot,
    )
    summary["config"]["model"] = str(source.path)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print(results_table(summary))
    print(f"moc eval: wrote {output}")
    return 0
