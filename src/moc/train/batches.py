"""Training and validation batches from prepared token data, with the start-of-run data checks.

Each optimizer step consumes one *global batch* of ``micro_batch_size * grad_accum_steps * world_size``
windows from an :class:`~moc.train.sampler.EpochSampler`. Rank ``r`` takes the ``r``-th contiguous
slice and cuts it into ``grad_accum_steps`` micro-batches, so N processes with ``grad_accum_steps=a``
see exactly the micro-batches one process sees with ``grad_accum_steps=N*a``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moc.config import ConfigError, RunConfig
from moc.train.errors import TrainError
from moc.train.parallel import DistInfo
from moc.train.sampler import EpochSampler

# Above this many tokens the vocabulary check scans evenly spread chunks instead of every token.
_FULL_SCAN_TOKENS = 1 << 28
_SAMPLE_CHUNKS, _CHUNK = 256, 1 << 16


@dataclass
class Batch:
    """input_ids, targets: (B, L) int64; targets are already shifted next tokens (``targets[:, j]``
    follows ``input_ids[:, j]``), -100 where not trained on. ``n_targets`` (targets != -100) is counted
    on the CPU so reading it never waits for the GPU.
    ``position_ids``: (B, L) per-document positions (restarting at each packed document) or None."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    n_targets: int
    position_ids: torch.Tensor | None = None


def open_split(cfg: RunConfig, split: str, required: bool) -> Any | None:
    """Load one split of ``data.prepared_dir`` and check it against the model.

    Returns None for a missing optional split (validation); raises TrainError with the fix otherwise.
    """
    from moc.data import check_compatible, load_prepared

    where = cfg.data.prepared_dir
    if not where:
        raise TrainError(
            "data.prepared_dir is not set: prepare data with `moc data prepare ...` and point the config "
            "at it, e.g. --set data.prepared_dir=data/my-corpus"
        )
    if not Path(where).is_dir():
        raise TrainError(f"data.prepared_dir={where} does not exist; run `moc data prepare` to create it")
    try:
        data = load_prepared(where, split)
    except ConfigError as e:  # moc.data's DataError: the message names the file and the fix
        if required:
            raise TrainError(f"cannot load the {split} split of {where}: {e}") from e
        return None
    check_compatible(data.meta, cfg.model.vocab_size)
    n, need = len(data.tokens), cfg.train.seq_len + 1
    if n < need:
        if not required:
            return None
        raise TrainError(_too_short(data.meta, split, where, n, need))
    check_token_ids(data.tokens, cfg.model.vocab_size, f"the {split} split of {where}")
    return data


def open_val_split(cfg: RunConfig) -> tuple[Any | None, str | None]:
    """The validation split, or None and why there is none (evaluation is then skipped, not refused:
    data prepared with ``--val-fraction 0`` is legitimate). The reason names what is wrong, e.g. a split
    that exists but is shorter than one window, with its length and what to change."""
    try:
        return open_split(cfg, "val", required=True), None
    except TrainError as e:
        return None, str(e)


def _too_short(meta: dict[str, Any], split: str, where: str, n: int, need: int) -> str:
    if split == "train":
        fix = "add data or lower train.seq_len"
    else:  # held out by document count: a bigger fraction (or more documents) gives it more tokens
        frac = meta.get("val_fraction")
        now = f" (it was {frac})" if isinstance(frac, int | float) else ""
        command = "moc data prepare-chat" if meta.get("kind") == "chat" else "moc data prepare"
        seq = f"lower train.seq_len to at most {n - 1}" if n >= 2 else "lower train.seq_len"
        fix = f"{seq}, or run `{command}` again with a larger --val-fraction{now} or more data"
    return (
        f"the {split} split of {where} has {n} tokens, fewer than one window "
        f"(train.seq_len + 1 = {need}); {fix}"
    )


def check_token_ids(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    """Raise if a token id is >= ``vocab_size`` (scans everything for small data, spread chunks otherwise)."""
    n = len(tokens)
    if n <= _FULL_SCAN_TOKENS:
        top = int(np.max(tokens))
    else:
        starts = np.linspace(0, n - _CHUNK, _SAMPLE_CHUNKS).astype(np.int64)
        top = max(int(np.max(tokens[s : s + _CHUNK])) for s in starts)
    if top >= vocab_size:
        raise TrainError(
            f"{what} contains token id {top}, but model.vocab_size is {vocab_size}: the data was tokenized "
            f"with a bigger vocabulary; set model.vocab_size >= {top + 1} or re-tokenize"
        )


def windows(data: Any, seq_len: int, separate_documents: bool = True) -> Any:
    """The packed ``seq_len`` windows of a split (``moc.data.PackedSequences``); with
    ``separate_documents`` each carries per-document position ids (``data.separate_documents``)."""
    from moc.data import PackedSequences

    return PackedSequences(data, seq_len, document_positions=separate_documents)


def steps_for_epochs(n_windows: int, epochs: float, global_batch: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n_windows`` packed windows at ``global_batch`` windows
    a step: ``ceil(epochs * n_windows / global_batch)``, at least 1 (``train.epochs``)."""
    if epochs <= 0:
        raise ConfigError(f"train.epochs must be positive (or null to use train.max_steps), got {epochs}")
    return max(math.ceil(epochs * n_windows / global_batch), 1)


def collate(ds: Any, indices: np.ndarray | list[int], device: torch.device) -> Batch:
    items = [ds[int(i)] for i in indices]
    ids = torch.stack([it["input_ids"] for it in items]).long()
    targets = torch.stack([it["targets"] for it in items]).long()
    n_targets = int((targets != -100).sum())
    pos = torch.stack([it["position_ids"] for it in items]).long() if "position_ids" in items[0] else None
    if device.type == "cuda":
        ids, targets = ids.pin_memory(), targets.pin_memory()
        pos = pos.pin_memory() if pos is not None else None
    pos = pos.to(device, non_blocking=True) if pos is not None else None
    return Batch(ids.to(device, non_blocking=True), targets.to(device, non_blocking=True), n_targets, pos)


class TrainBatches:
    """This rank's micro-batches for each optimizer step; resumable through the sampler state."""

    def __init__(self, ds: Any, cfg: RunConfig, info: DistInfo) -> None:
        t = cfg.train
        self.ds, self.info = ds, info
        self.micro, self.accum = t.micro_batch_size, t.grad_accum_steps
        self.global_batch = self.micro * self.accum * info.world_size
        self.sampler = EpochSampler(len(ds), seed=t.seed)

    def next_step(self) -> list[Batch]:
        """``grad_accum_steps`` micro-batches of ``micro_batch_size`` windows for this rank."""
        idx = self.sampler.take(self.global_batch)
        per_rank = self.micro * self.accum
        mine = idx[self.info.rank * per_rank : (self.info.rank + 1) * per_rank]
        return [
            collate(self.ds, mine[j * self.micro : (j + 1) * self.micro], self.info.device)
            for j in range(self.accum)
        ]


def eval_batches(ds: Any, cfg: RunConfig, info: DistInfo) -> list[Batch]:
    """This rank's share of the fixed validation set: the first ``eval_batches * micro_batch_size``
    windows (the same set for any world size). Every rank gets the same number of batches, padded with
    fully masked ones, because sharded models run collectives inside forward."""
    t = cfg.train
    n = min(len(ds), t.eval_batches * t.micro_batch_size)
    mine = list(range(info.rank, n, info.world_size))
    per_rank = math.ceil(n / info.world_size)
    n_batches = math.ceil(per_rank / t.micro_batch_size)
    out = []
    for b in range(n_batches):
        chunk = mine[b * t.micro_batch_size : (b + 1) * t.micro_batch_size]
        if chunk:
            out.append(collate(ds, chunk, info.device))
        else:
            pad = collate(ds, [0], info.device)
            out.append(Batch(pad.input_ids, torch.full_like(pad.targets, -100), 0, pad.position_ids))
    return out
