"""The held-out documents of the corpus by kind: fact sentences and prose, scored apart.

The pretraining validation split mixes both, and fact documents are a few percent of it, so its loss
says little about what a model learned of the facts. ``moc.data.prepare`` holds out the documents with
the smallest keyed hashes; :func:`heldout_documents` chooses the same ones with the same helpers (a test
checks that their tokens add up to the prepared validation split), then splits them by the corpus's
``source`` field: ``facts`` or any real-text source.

:func:`write_heldout` tokenizes them once per experiment (``heldout.npz``); :func:`heldout_loss` scores a
model on one kind: every document alone (no packing), cut into windows of ``seq_len`` predicted tokens,
token-weighted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("facts", "prose")


def heldout_documents(text_jsonl: Path, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """{"facts": [...], "prose": [...]}: the documents ``prepare_pretraining_data(val_fraction, seed)``
    puts in the validation split, in file order."""
    from moc.data.prepare import choose_validation, document_key  # the split's own rule, not a copy

    rows = []
    with open(text_jsonl, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r.get("text"):  # empty documents are dropped before the split
                rows.append(r)
    keys = np.asarray([document_key(seed, r["text"]) for r in rows], dtype=np.uint64)
    is_val = choose_validation(keys, val_fraction)
    out: dict[str, list[str]] = {k: [] for k in KINDS}
    for r, v in zip(rows, is_val):
        if v:
            out["facts" if r.get("source") == "facts" else "prose"].append(r["text"])
    return out


def write_heldout(text_jsonl: Path, tokenizer_dir: Path, val_fraction: float, seed: int, out: Path) -> Path:
    """Tokenize the held-out documents (each followed by eos, as in training) into ``out`` (npz: for each
    kind its concatenated ids and document lengths)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    arrays: dict[str, np.ndarray] = {}
    for kind, docs in heldout_documents(text_jsonl, val_fraction, seed).items():
        ids = [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in docs]
        ids = [x for x in ids if len(x) > 1]
        arrays[f"{kind}_ids"] = np.asarray([t for x in ids for t in x], dtype=np.int64)
        arrays[f"{kind}_lens"] = np.asarray([len(x) for x in ids], dtype=np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def _windows(ids: np.ndarray, lens: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Each document cut into pieces of at most ``seq_len + 1`` tokens (input + shifted target) that
    overlap by one token, so every token but a document's first is predicted exactly once."""
    out, start = [], 0
    for n in lens.tolist():
        doc = ids[start : start + n]
        start += n
        for s in range(0, n - 1, seq_len):
            out.append(doc[s : s + seq_len + 1])
    return out


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module, path: str | Path, kind: str, seq_len: int, batch_size: int
) -> dict[str, Any] | None:
    """{"loss", "tokens", "documents"}: token-weighted mean next-token loss over the held-out documents
    of ``kind`` (None when there are none)."""
    data = np.load(path)
    ids, lens = data[f"{kind}_ids"], data[f"{kind}_lens"]
    if len(lens) == 0:
        return None
    pieces = _windows(ids, lens, seq_len)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for b in range(0, len(pieces), batch_size):
        batch = pieces[b : b + batch_size]
        width = max(len(p) for p in batch) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), -100, dtype=torch.long)
        for i, p in enumerate(batch):  # right padding: causal attention keeps it out of every real token
            t = torch.from_numpy(p.astype(np.int64))
            x[i, : len(p) - 1] = t[:-1]
            y[i, : len(p) - 1] = t[1:]
        logits = model(x.to(device)).logits.float()
        ce = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="sum")
        total += float(ce)
        count += int((y != -100).sum())
    model.train(was_training)
    return {"loss": total / max(count, 1), "tokens": count, "documents": int(len(lens))}
