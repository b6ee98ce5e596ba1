"""``moc tokenizer train`` and ``moc data prepare | prepare-chat | info``."""

from __future__ import annotations

import argparse
import json

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
    tok = subparsers.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
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

    p = data_sub.add_parser("info", help="print the meta.json summary of a prepared directory")
    p.add_argument("dir")
    p.set_defaults(func=_info)


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
