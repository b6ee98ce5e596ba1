"""Router inspection: which chapters are read, and what removing one does to the loss.

    usage = chapter_usage(model, batches)                 # per memory layer: counts, entropy, coverage
    effect = ablate_chapters(model, batches, [17, 3])     # loss with those chapters removed, vs. without
    ranking = chapter_importance(model, batches, top=10)  # the most-used chapters, each removed alone

A removed *routed* chapter can no longer be picked (the router takes the next best); a removed
*shared* chapter is no longer read at all.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moc.model import MoCModel
from moc.model.layers import float32_or_wider


@dataclass
class LayerUsage:
    """Routing statistics of one memory layer over a set of batches."""

    layer: int
    counts: list[int]  # times each routed chapter was picked (index 0 = first routed chapter)
    decisions: int  # routing decisions made
    mean_entropy: float  # mean router entropy (nats) per decision
    coverage: float  # fraction of routed chapters picked at least once

    @property
    def usage_entropy(self) -> float:
        """Entropy (nats) of the pick distribution: log(C_routed) when every chapter is used equally."""
        total = sum(self.counts)
        probs = [c / total for c in self.counts if c]
        return -sum(p * math.log(p) for p in probs)


Batch = dict[str, torch.Tensor]  # input_ids (B, L), targets (B, L) already shifted, optional attention_mask


def _memory_routers(model: MoCModel) -> dict[int, torch.nn.Module]:
    routers = {b.layer_idx: b.memory.router for b in model.layers if b.memory is not None}
    if not routers:
        raise ValueError("this model has no memory layers (memory.enabled is false): nothing to inspect")
    return routers


def _batch_loss(model: MoCModel, batch: Batch) -> tuple[float, int]:
    """Summed next-token loss and target count; ``targets`` (B, L) are already shifted (-100 = ignored)."""
    out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    targets = batch["targets"]
    loss = F.cross_entropy(
        float32_or_wider(out.logits.flatten(0, 1)), targets.flatten(), ignore_index=-100, reduction="sum"
    )
    return float(loss), int((targets != -100).sum())


@torch.no_grad()
def chapter_usage(model: MoCModel, batches: Iterable[Batch]) -> list[LayerUsage]:
    """Count how often each routed chapter is picked, per memory layer."""
    routers = _memory_routers(model)
    counts: dict[int, torch.Tensor] = {}
    decisions = dict.fromkeys(routers, 0)
    entropy = dict.fromkeys(routers, 0.0)
    model.eval()
    for batch in batches:
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
        for info in out.routing:
            n = int(info.valid.sum())
            counts[info.layer] = counts.get(info.layer, 0) + info.chapter_counts.cpu()
            decisions[info.layer] += n
            entropy[info.layer] += info.entropy * n
    return [
        LayerUsage(
            layer=layer,
            counts=[int(c) for c in counts[layer].round().long()],
            decisions=decisions[layer],
            mean_entropy=entropy[layer] / max(decisions[layer], 1),
            coverage=float((counts[layer] > 0).float().mean()),
        )
        for layer in sorted(counts)
    ]


@contextlib.contextmanager
def chapters_removed(
    model: MoCModel, chapters: Iterable[int], layers: Iterable[int] | None = None
) -> Iterator[None]:
    """Temporarily remove chapters (global chapter ids) from the given memory layers (default: all)."""
    routers = _memory_routers(model)
    chosen = list(routers) if layers is None else list(layers)
    chapters = list(chapters)
    mem = model.config.memory
    for layer in chosen:
        if layer not in routers:
            raise ValueError(f"layer {layer} has no memory; memory layers are {sorted(routers)}")
    for c in chapters:
        if not 0 <= c < mem.n_chapters:
            raise ValueError(f"chapter {c} does not exist; chapters are 0..{mem.n_chapters - 1}")
    n_routed_removed = len({c for c in chapters if c >= mem.n_shared_chapters})
    if mem.n_chapters - mem.n_shared_chapters - n_routed_removed < mem.top_k:
        raise ValueError(
            f"removing {n_routed_removed} routed chapters leaves fewer than top_k={mem.top_k} to choose from"
        )
    saved = {layer: routers[layer].disabled.clone() for layer in chosen}
    try:
        for layer in chosen:
            routers[layer].disabled[chapters] = True
        yield
    finally:
        for layer, mask in saved.items():
            routers[layer].disabled.copy_(mask)


@torch.no_grad()
def mean_loss(model: MoCModel, batches: Iterable[Batch]) -> float:
    """Token-weighted mean next-token loss over the batches."""
    model.eval()
    total, n = 0.0, 0
    for batch in batches:
        s, c = _batch_loss(model, batch)
        total, n = total + s, n + c
    if n == 0:
        raise ValueError("no target tokens in the given batches")
    return total / n


def ablate_chapters(
    model: MoCModel, batches: list[Batch], chapters: Iterable[int], layers: Iterable[int] | None = None
) -> dict[str, float]:
    """Loss with and without the given chapters: {"base_loss", "ablated_loss", "delta"}."""
    base = mean_loss(model, batches)
    with chapters_removed(model, chapters, layers):
        ablated = mean_loss(model, batches)
    return {"base_loss": base, "ablated_loss": ablated, "delta": ablated - base}


def chapter_importance(model: MoCModel, batches: list[Batch], top: int = 10) -> list[dict[str, float]]:
    """Remove each shared chapter and each of the ``top`` most-picked routed chapters, one at a time.

    Returns rows {"chapter", "picks", "delta"} sorted by loss increase (largest first).
    """
    usage = chapter_usage(model, batches)
    n_shared = model.config.memory.n_shared_chapters
    picks = torch.stack([torch.tensor(u.counts) for u in usage]).sum(0)
    candidates = list(range(n_shared)) + [n_shared + int(i) for i in picks.argsort(descending=True)[:top]]
    base = mean_loss(model, batches)
    rows = []
    for chapter in candidates:
        with chapters_removed(model, [chapter]):
            loss = mean_loss(model, batches)
        count = -1 if chapter < n_shared else int(picks[chapter - n_shared])
        rows.append({"chapter": chapter, "picks": count, "delta": loss - base})
    return sorted(rows, key=lambda r: -r["delta"])
