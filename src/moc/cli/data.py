"""``moc tokenizer train`` and ``moc data prepare | prepare-chat | info``."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from moc.data.errors import DataError
from moc.data.sources import TXT_MODES


def _add_source_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE", help=what)
    p.add_argument(
        "--text-field", default="text", help="JSONL field / Parquet or dataset column with the text"
    )
    p.add_argument(
        "--txt-mode",
        choices=TXT_MODES,
        default="file",
        help=".txt documents: one per file (default), per non-blank line, or per blank-line-separated "
        "paragraph",
    )


_SOURCES_HELP = ".txt/.jsonl/.parquet files, folders of them, or hf:NAME[:CONFIG][@SPLIT]"


def register(subparsers: argparse._SubParsersAction) -> None:
    tok = subparsers.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer",
        description="Tokenizers for moc: `moc tokenizer train SOURCES --vocab-size N --out DIR` trains a "
        "byte-level BPE with moc's special tokens and chat template.",
    )
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    p = tok_sub.add_parser(
        "train", help="train a byte-level BPE on your corpus (writes a Hugging Face tokenizer dir)"
    )
    _add_source_args(p, _SOURCES_HELP)
    p.add_argument("--vocab-size", type=int, required=True, help="total tokens incl. 256 bytes and specials")
    p.add_argument(
        "--out", required=True, help="output directory (AutoTokenizer.from_pretrained(OUT) loads it)"
    )
    p.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_tokenizer_train)

    data = subparsers.add_parser("data", help="tokenize data once into memory-mapped token files")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("prepare", help="tokenize text for pretraining (train/val split, meta.json)")
    _add_source_args(p, _SOURCES_HELP)
    _add_prepare_args(p)
    p.set_defaults(func=_prepare)

    p = data_sub.add_parser(
        "prepare-chat", help="tokenize chat JSONL for instruction tuning (assistant-only loss)"
    )
    p.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help='JSONL files of {"messages": [{"role", "content"}, ...]} (or .parquet, folders, hf:NAME)',
    )
    p.add_argument("--chat-template", default=None, help="Jinja chat template file replacing the tokenizer's")
    _add_prepare_args(p)
    p.set_defaults(func=_prepare)

    p = data_sub.add_parser(
        "info",
        help="print the meta.json summary of a prepared directory",
        description="Print what a prepared data folder holds: tokens and documents per split, the token "
        "dtype, the vocabulary size and every source with its size and sha256.",
    )
    p.add_argument("dir", help="a folder written by `moc data prepare` or `moc data prepare-chat`")
    p.set_defaults(func=_info)

    p = data_sub.add_parser(
        "sample",
        help="write a tiny sample corpus/, more.jsonl and chats.jsonl to try the data and IFT commands",
        description="Copy the small sample shipped with moc (corpus/ of 8 .txt documents, more.jsonl, "
        "chats.jsonl of 240 conversations) into --out, so the documented `moc tokenizer train corpus/`, "
        "`moc data prepare corpus/ more.jsonl` and `moc data prepare-chat chats.jsonl` run as written. "
        "Existing files are kept, never overwritten.",
    )
    p.add_argument("--out", default=".", help="folder to write into (default: the current folder)")
    p.set_defaults(func=_sample)


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokenizer",
        required=True,
        help="Hugging Face tokenizer directory (e.g. from `moc tokenizer train`)",
    )
    p.add_argument("--out", required=True, help="output directory for the prepared data")
    p.add_argument(
        "--val-fraction", type=float, default=0.01, help="fraction of documents held out (default 0.01)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--force", action="store_true", help="prepare again even if OUT already matches")
    p.add_argument("--no-progress", action="store_true")


def _tokenizer_train(args: argparse.Namespace) -> int:
    from moc.data.tokenizer import load_tokenizer, train_tokenizer

    out = train_tokenizer(
        args.sources,
        args.vocab_size,
        args.out,
        text_field=args.text_field,
        txt_mode=args.txt_mode,
        min_frequency=args.min_frequency,
        progress=not args.no_progress,
    )
    n = len(load_tokenizer(out))
    print(f"wrote tokenizer with {n} tokens to {out}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    """``moc data prepare`` and ``prepare-chat``: the same split/output arguments, a different reader."""
    from moc.data.prepare import prepare_chat_data, prepare_pretraining_data

    common = {"val_fraction": args.val_fraction, "seed": args.seed, "progress": not args.no_progress}
    common["force"] = args.force
    if args.data_command == "prepare-chat":
        prepare_chat_data(args.sources, args.tokenizer, args.out, chat_template=args.chat_template, **common)
    else:
        text = {"text_field": args.text_field, "txt_mode": args.txt_mode}
        prepare_pretraining_data(args.sources, args.tokenizer, args.out, **text, **common)
    return 0


def _info(args: argparse.Namespace) -> int:
    from moc.data.prepared import read_meta

    meta = read_meta(args.dir)
    summary = {
        k: meta[k]
        for k in (
            "kind",
            "dtype",
            "vocab_size",
            "eos_id",
            "n_tokens",
            "n_documents",
            "tokenizer",
            "val_fraction",
            "seed",
        )
        if k in meta
    }
    summary["n_sources"] = len(meta.get("sources", []))
    print(json.dumps(summary, indent=2))
    return 0


SAMPLE_DIR = Path(__file__).resolve().parent.parent / "samples"


def _sample(args: argparse.Namespace) -> int:
    """Copy the shipped sample files into ``--out``; a file that exists there is kept (nothing a user
    made is overwritten) and named."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; choose a folder")
    wrote, kept = [], []
    for src in sorted(SAMPLE_DIR.rglob("*")):
        if not src.is_file():
            continue
        dst = out / src.relative_to(SAMPLE_DIR)
        if dst.exists():
            kept.append(str(dst))
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        wrote.append(str(dst))
    print(f"moc data sample: wrote {len(wrote)} file(s) into {out} (corpus/, more.jsonl, chats.jsonl)")
    if kept:
        print(f"  kept {len(kept)} existing file(s) as they were: {', '.join(kept)}")
    return 0
