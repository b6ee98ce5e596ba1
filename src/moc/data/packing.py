"""Turn a prepared split into fixed-length training examples.

:class:`PackedSequences` (pretraining and packed chat): the split's token stream is cut into
non-overlapping windows with stride ``seq_len``; window ``i`` reads tokens ``[i*L, i*L + L + 1)``, so
``input_ids = t[i*L : i*L+L]`` and ``targets = t[i*L+1 : i*L+L+1]`` (already shifted: ``targets[j]`` is
the token after ``input_ids[j]``). Every token except the first is a target exactly once; fewer than ``L``
tokens at the end of the stream are dropped. Documents run across window borders, separated by eos.
Where the loss mask of a target token is 0, its target is -100. With ``document_positions`` (the default)
each window also carries ``position_ids`` that restart at 0 where a document starts (the eos that ends a
document belongs to it); the first, partial document of a window counts from the window's start. The
model reads a restart as a document boundary, so packed documents do not see each other.

:class:`ChatSequences` (optional, unpacked): one conversation per item, truncated to ``seq_len``, padded
with the pad id, with an ``attention_mask``.

Both return ``dict(input_ids=LongTensor[L], targets=LongTensor[L])`` (+ ``position_ids`` for packed
windows with document positions, + ``attention_mask`` for chat), to be fed as
``loss = cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)`` with no further shift,
or as ``model(input_ids, labels=targets, shift_labels=False)``. The key is ``targets``, not ``labels``,
because Hugging Face-style ``labels`` are aligned with ``input_ids`` and shifted by the model: a batch
passed as ``model(**batch)`` fails on the unknown key instead of training on the token after next.
"""

from __future__ import annotations

import numpy as np
import torch

from moc.data.errors import DataError
from moc.data.prepared import TokenData

IGNORE_INDEX = -100


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise DataError(f"seq_len must be a positive integer, got {seq_len!r}")


def _index(i: int, n: int, message: str) -> int:
    """``i`` as an index into ``n`` items, a negative one counting from the end; out of range raises
    IndexError with ``message`` formatted with that index (after the wrap) as ``{i}`` and ``{n}``."""
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(message.format(i=i, n=n))
    return i


def _tokens_and_targets(data: TokenData, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens ``[lo, hi)`` of ``data`` as int64 (hi - lo,) and their next-token targets (hi - lo - 1,):
    tokens ``[lo + 1, hi)``, -100 where the split's loss mask (if any) is off."""
    ids = torch.from_numpy(np.asarray(data.tokens[lo:hi], dtype=np.int64))
    targets = ids[1:].clone()
    if data.loss_mask is not None:
        keep = torch.from_numpy(np.asarray(data.loss_mask[lo + 1 : hi], dtype=bool))
        targets[~keep] = IGNORE_INDEX
    return ids, targets


class PackedSequences:
    """Non-overlapping windows of ``seq_len`` inputs over a prepared split (see the module docstring)."""

    def __init__(self, data: TokenData, seq_len: int, document_positions: bool = True) -> None:
        _check_seq_len(seq_len)
        if data.n_tokens < seq_len + 1:
            raise DataError(
                f"split {data.split!r} of {data.path} has {data.n_tokens} tokens, fewer than one window of "
                f"seq_len + 1 = {seq_len + 1}; lower train.seq_len (e.g. --set train.seq_len="
                f"{max(data.n_tokens - 1, 1)}) or add data"
            )
        self.data = data
        self.seq_len = seq_len
        self.document_positions = document_positions
        self._starts = np.asarray(data.doc_starts, dtype=np.int64)

    def __len__(self) -> int:
        return (self.data.n_tokens - 1) // self.seq_len

    def position_ids(self, lo: int) -> torch.Tensor:
        """Per-document positions of the window starting at token ``lo``: (seq_len,) int64."""
        idx = np.arange(lo, lo + self.seq_len, dtype=np.int64)
        owner = np.searchsorted(self._starts, idx, side="right") - 1  # the document holding each token
        start = np.maximum(self._starts[np.maximum(owner, 0)], lo)
        return torch.from_numpy(idx - start)

    @property
    def n_target_tokens(self) -> int:
        """Targets per epoch before masking: ``len(self) * seq_len``."""
        return len(self) * self.seq_len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        lo = _index(i, len(self), "window {i} out of range for {n} windows") * self.seq_len
        window, targets = _tokens_and_targets(self.data, lo, lo + self.seq_len + 1)
        out = {"input_ids": window[:-1], "targets": targets}
        if self.document_positions:
            out["position_ids"] = self.position_ids(lo)
        return out


class ChatSequences:
    """One conversation per item, truncated to ``seq_len`` and right-padded (unpacked chat training).

    ``input_ids``/``targets``/``attention_mask``: LongTensor[L]. Padding has attention 0 and target -100.
    ``n_truncated`` counts conversations longer than ``seq_len + 1`` tokens (their tail is dropped).
    """

    def __init__(self, data: TokenData, seq_len: int, pad_id: int | None = None) -> None:
        _check_seq_len(seq_len)
        self.data = data
        self.seq_len = seq_len
        self.pad_id = int(data.meta.get("pad_id", data.eos_id)) if pad_id is None else pad_id
        self._ends = np.append(data.doc_starts[1:], data.n_tokens)

    def __len__(self) -> int:
        return self.data.n_documents

    @property
    def n_truncated(self) -> int:
        # Each conversation is followed by eos, which is not part of the example.
        return int(np.sum(self._ends - self.data.doc_starts - 1 > self.seq_len + 1))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        i = _index(i, len(self), "conversation {i} out of range for {n}")
        lo, hi = int(self.data.doc_starts[i]), int(self._ends[i]) - 1  # drop the separating eos
        hi = min(hi, lo + self.seq_len + 1)
        ids, targets = _tokens_and_targets(self.data, lo, hi)
        m = len(ids) - 1
        out = {
            "input_ids": torch.full((self.seq_len,), self.pad_id, dtype=torch.long),
            "targets": torch.full((self.seq_len,), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros(self.seq_len, dtype=torch.long),
        }
        out["input_ids"][:m] = ids[:-1]
        out["targets"][:m] = targets
        out["attention_mask"][:m] = 1
        return out
