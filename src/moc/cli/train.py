"""``moc pretrain`` and ``moc ift``: run the training engine (:func:`moc.train.train`) from the shell.

Multi-GPU: ``torchrun --nproc_per_node N -m moc pretrain CONFIG`` (DDP; ``--set train.parallel=fsdp``
for FSDP2).
"""

from __future__ import annotations

import argparse
import os

from moc.cli import add_config_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain a model on prepared data (data.prepared_dir)",
        description="Pretrain on the prepared data in data.prepared_dir; checkpoints go to train.out_dir.",
    )
    add_config_args(p)
    _common(p)
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start from these weights (checkpoint dir, run dir or .safetensors) instead of random",
    )
    p.set_defaults(func=_run)

    q = subparsers.add_parser(
        "ift",
        help="instruction fine-tune a pretrained checkpoint on prepared chat data",
        description="Fine-tune the weights of CHECKPOINT on prepared chat data (loss on assistant tokens "
        "only). Use train.freeze_bank=true or a small train.bank_lr to protect the memory bank.",
    )
    add_config_args(q)
    _common(q)
    q.add_argument(
        "--init-from",
        required=True,
        metavar="CHECKPOINT",
        help="pretrained weights: a checkpoint dir, a pretraining run's out_dir, or a .safetensors file",
    )
    q.set_defaults(func=_run)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in train.out_dir (fresh start if none)",
    )
    p.add_argument("--out-dir", default=None, help="shortcut for --set train.out_dir=DIR")


def _run(args: argparse.Namespace) -> int:
    from moc.config import load_config
    from moc.train import train

    overrides = list(args.overrides)
    if args.out_dir:
        overrides.append(f"train.out_dir={args.out_dir}")
    cfg = load_config(args.config, overrides)
    if args.command == "ift":
        _check_ift_data(cfg.data.prepared_dir, args.init_from)
    result = train(cfg, init_from=args.init_from, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, only rank 0 reports
        return 0
    f = result.final
    parts = [f"step {result.step}", f"loss {f.get('loss', float('nan')):.4f}"]
    if "val_loss" in f:
        parts.append(f"val_loss {f['val_loss']:.4f} (ppl {f['val_ppl']:.2f})")
    if result.nan_skips:
        parts.append(f"{result.nan_skips} non-finite steps skipped")
    print(f"moc {args.command}: done, " + ", ".join(parts))
    if result.last_checkpoint:
        print(f"  last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint:
        print(f"  best checkpoint: {result.best_checkpoint}")
    return 0


def _check_ift_data(prepared_dir: str | None, init_from: str) -> None:
    """Refuse ``moc ift`` on data without a chat loss mask (``moc data prepare``, not ``prepare-chat``).

    ``moc ift`` promises a loss on assistant tokens only; on unmasked data every token, prompts
    included, would be a target and nothing would say so. Training on every token from pretrained
    weights is legitimate, but it is what ``moc pretrain --init-from`` does (the same engine), so the
    refusal names that command rather than adding a flag that only switches the check off.
    A folder that cannot be read is left to the training engine, whose errors name the fix.
    """
    from moc.data.errors import DataError
    from moc.data.prepared import read_meta

    if not prepared_dir:
        return
    try:
        meta = read_meta(prepared_dir)
    except DataError:
        return
    if meta["has_loss_mask"]:
        return
    raise DataError(
        f"data.prepared_dir={prepared_dir} has no chat loss mask (it was prepared with `moc data prepare`), "
        "so `moc ift` would train on every token, prompts included; prepare chat JSONL with "
        f"`moc data prepare-chat CHATS.jsonl --tokenizer TOK --out DIR`, or to fine-tune on every token use "
        f"`moc pretrain CONFIG --init-from {init_from}`"
    )
