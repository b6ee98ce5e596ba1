"""What a trained model knows: exact recall, knowledge in bits, and the ablations that say where it lives.

- **recall**: the fraction of (person, attribute) prompts whose argmax next token is the value;
- **answer type**: the fraction whose argmax is *some* value of the asked attribute (the control of every
  ablation: if it stays high while recall falls, the model lost facts, not the format);
- **bits** (the bit-complexity measure of Allen-Zhu & Li, "Physics of Language Models 3.3"): for each
  attribute with V equally likely values over N people,
  ``bits = N * max(0, log2 V - mean cross-entropy of the value in bits)``, teacher-forced on the bio prompt
  and summed over attributes. A model that knows nothing scores 0; one sure of every value N log2 V;
- **memory off**: the memory layers' output projections zeroed (does the model use what it reads?);
- **chapters shuffled**: the routed chapters' contents permuted (same router choices, other content):
  bits lost there are bits held in the bank's routed chapters.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def _prompt_logits(model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None):
    """Yield (attribute, last-position logits (n, V) fp32, answers (n,)) over the prompts of ``form``."""
    for a, (prompts, answers) in enumerate(world.recall_prompts(form, people)):
        for s in range(0, len(prompts), 512):
            x = torch.from_numpy(prompts[s : s + 512])
            yield a, model(x).logits[:, -1].float(), torch.from_numpy(answers[s : s + 512])


def _eval_mode(model: torch.nn.Module):
    class _Ctx:
        def __enter__(self) -> None:
            self.was = model.training
            model.eval()

        def __exit__(self, *exc: object) -> None:
            model.train(self.was)

    return _Ctx()


def recall_and_type(
    model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None
) -> tuple[float, float]:
    """(exact recall, answer-type accuracy) over the (person, attribute) prompts of ``form``: the
    fraction whose argmax next token is the value, and the fraction whose argmax is *some* value of the
    asked attribute (any person's city for a city prompt)."""
    if people is not None and len(people) == 0:
        return float("nan"), float("nan")
    hits = typed = total = 0
    values = [torch.tensor([world.index[v] for v in vals]) for vals in world.values]
    with _eval_mode(model):
        for a, logits, answers in _prompt_logits(model, world, form, people):
            pred = logits.argmax(-1)
            hits += int((pred == answers).sum())
            typed += int(torch.isin(pred, values[a]).sum())
            total += len(answers)
    return hits / total, typed / total


def recall(model: torch.nn.Module, world: Any, form: str, people: np.ndarray | None = None) -> float:
    """Exact recall: fraction of (person, attribute) prompts whose argmax next token is the value."""
    return recall_and_type(model, world, form, people)[0]


def recalls(model: torch.nn.Module, world: Any) -> dict[str, float]:
    return {
        "bio": recall(model, world, "bio"),
        "question_heldout": recall(model, world, "question", world.heldout_people),
        "question_trained": recall(model, world, "question", world.qa_people),
        "chat_heldout": recall(model, world, "chat", world.heldout_people),
    }


def bits_from_cross_entropy(ce_nats: list[float], n_people: int, n_values: int) -> list[float]:
    """Per attribute: ``n_people * max(0, log2 n_values - ce / ln 2)`` (``ce_nats``: mean cross-entropy of
    the value, in nats, per attribute)."""
    return [n_people * max(0.0, math.log2(n_values) - ce / math.log(2)) for ce in ce_nats]


def knowledge_bits(model: torch.nn.Module, world: Any, form: str = "bio") -> dict[str, Any]:
    """Knowledge in bits over every person (teacher-forced on the ``form`` prompts): {"total": bits,
    "per_attribute": [bits...], "cross_entropy": [mean nats...], "of": the world's N * A * log2 V}."""
    sums = [0.0] * world.n_attributes
    with _eval_mode(model):
        for a, logits, answers in _prompt_logits(model, world, form):
            sums[a] += float(F.cross_entropy(logits, answers, reduction="sum"))
    ce = [s / world.n_people for s in sums]
    per = bits_from_cross_entropy(ce, world.n_people, world.n_values)
    return {
        "total": sum(per),
        "per_attribute": per,
        "cross_entropy": ce,
        "of": world.n_people * world.n_attributes * math.log2(world.n_values),
    }


def memory_off(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose memory layers add nothing (output projections zeroed)."""
    off = copy.deepcopy(model)
    for block in getattr(off, "layers", []):
        if getattr(block, "memory", None) is not None:
            torch.nn.init.zeros_(block.memory.o_proj.weight)
    return off


@torch.no_grad()
def chapters_shuffled(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` whose routed chapters hold each other's content: every bank's routed chapters
    are permuted (a seeded cycle, so none keeps its own), the shared chapters stay. The router still
    picks the same chapter ids and the memory still reads vectors of the trained bank (same norms, same
    generic content), but what a chapter stored about a person is now somewhere else: recall that
    survives zeroing the memory but not this lived outside the bank; a drop here is knowledge that
    lived in the routed chapters."""
    shuffled = copy.deepcopy(model)
    for bank in getattr(shuffled, "banks", []):
        n_shared = next(b.memory.router.n_shared for b in shuffled.layers if getattr(b, "memory", None))
        C = bank.n_chapters
        order = torch.randperm(C - n_shared, generator=torch.Generator().manual_seed(seed)) + n_shared
        perm = torch.arange(C)
        perm[order] = order.roll(1)  # chapter order[i] takes the content of order[i - 1]
        store = bank.params[0]  # (N_m, dim) weight, or (N_m, rank) A of a factorized bank
        store.copy_(store.view(C, bank.chapter_size, -1)[perm].reshape(store.shape))
    return shuffled


@torch.no_grad()
def routing_spread(model: torch.nn.Module, world: Any) -> list[dict[str, float]]:
    """How the router spreads the bio prompts over chapters, per memory layer, at the position that
    predicts the value (the decision serving a prompt's last token): the share of prompts with a distinct
    set of routed chapters, the entropy of routed-chapter use (bits; log2 of the routed chapter count if
    every chapter were used equally) and the busiest chapter's share of the prompts. A memory can only
    hold person-specific facts where different people are routed to different chapters."""
    sets: list[list[tuple[int, ...]]] = []
    counts: list[torch.Tensor] = []
    n_shared = [b.memory.router.n_shared for b in model.layers if getattr(b, "memory", None) is not None]
    with _eval_mode(model):
        for prompts, _ in world.recall_prompts("bio"):
            for s in range(0, len(prompts), 512):
                out = model(torch.from_numpy(prompts[s : s + 512]))
                for i, info in enumerate(out.routing):
                    routed = info.indices[:, -1, n_shared[i] :]  # (n, top_k) chapter ids
                    if len(sets) <= i:
                        sets.append([])
                        counts.append(torch.zeros(0, dtype=torch.long))
                    sets[i] += [tuple(sorted(r)) for r in routed.tolist()]
                    c = torch.bincount(routed.reshape(-1))
                    counts[i] = torch.nn.functional.pad(counts[i], (0, max(0, len(c) - len(counts[i]))))
                    counts[i][: len(c)] += c
    out_: list[dict[str, float]] = []
    for layer_sets, c in zip(sets, counts):
        p = c[c > 0].double() / c.sum()
        out_.append(
            {
                "distinct_sets": len(set(layer_sets)) / len(layer_sets),
                "usage_entropy_bits": float(-(p * p.log2()).sum()),
                "busiest_share": float(c.max()) / len(layer_sets),
            }
        )
    return out_


def _routed_sets(model: torch.nn.Module, rows: np.ndarray) -> list[list[tuple[int, ...]]]:
    """Per memory layer, the routed chapter set of the decision serving each row's last token."""
    n_shared = [b.memory.router.n_shared for b in model.layers if getattr(b, "memory", None) is not None]
    out: list[list[tuple[int, ...]]] = [[] for _ in n_shared]
    for s in range(0, len(rows), 512):
        routing = model(torch.from_numpy(rows[s : s + 512])).routing
        for i, info in enumerate(routing):
            out[i] += [tuple(sorted(r)) for r in info.indices[:, -1, n_shared[i] :].tolist()]
    return out


@torch.no_grad()
def routing_consistency(model: torch.nn.Module, world: Any, seed: int = 0) -> list[float] | None:
    """Per memory layer: the share of facts whose routed chapters inside a biography (at the attribute
    token that predicts the value, attributes after the first) are the ones the bio prompt for the same
    person and attribute routes to. A memory can serve a fact it stored only if the reading position is
    routed where the writing positions were: routing that drifts with the rest of the document (a causal
    chunk's running mean) spreads one fact over many chapters. Compact biographies only (None else)."""
    if getattr(world, "doc_form", None) != "compact":
        return None
    rng = np.random.default_rng(seed)
    docs = np.array([world.biography(p, rng) for p in range(world.n_people)])  # (N, 2A + 5)
    A = world.n_attributes
    nouns = {world.index[noun]: a for a, (_, _, noun) in enumerate(world.attributes)}
    with _eval_mode(model):
        prompt_sets = [
            _routed_sets(model, prompts) for prompts, _ in world.recall_prompts("bio")
        ]  # [a][layer]
        same = [0] * len(prompt_sets[0])
        for j in range(1, A):
            pos = 4 + 2 * j  # the j-th attribute token: <bos> F L : (a v) x j, then a
            attrs = [nouns[int(t)] for t in docs[:, pos]]
            for layer, sets in enumerate(_routed_sets(model, docs[:, : pos + 1])):
                same[layer] += sum(sets[p] == prompt_sets[a][layer][p] for p, a in enumerate(attrs))
    return [n / (world.n_people * (A - 1)) for n in same]


def measure(model: torch.nn.Module, world: Any, has_memory: bool, bits: bool) -> dict[str, Any]:
    """Recall (every form), answer type and, with ``bits``, knowledge in bits; for a model with memory the
    same with the memory off and with its routed chapters shuffled."""

    def one(m: torch.nn.Module, forms: bool) -> dict[str, Any]:
        rec: dict[str, Any] = {"recall": recalls(m, world) if forms else {"bio": recall(m, world, "bio")}}
        rec["type_accuracy"] = {"bio": recall_and_type(m, world, "bio")[1]}
        if bits:
            rec["bits"] = knowledge_bits(m, world)
        return rec

    rec = one(model, True)
    if has_memory:
        rec["routing_spread"] = routing_spread(model, world)
        consistency = routing_consistency(model, world)
        if consistency is not None:
            rec["routing_consistency"] = consistency
        for name, variant in (("memory_off", memory_off(model)), ("shuffled", chapters_shuffled(model))):
            r = one(variant, name == "memory_off")
            rec[f"recall_{name}"] = r["recall"]
            rec[f"type_accuracy_{name}"] = r["type_accuracy"]
            if bits:
                rec[f"bits_{name}"] = r["bits"]
    return rec
