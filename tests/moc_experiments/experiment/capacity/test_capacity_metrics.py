"""Knowledge in bits, against hand-computed cases."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from moc_experiments.corpus.compositional import CompositionalWorld
from moc_experiments.experiment.capacity.metrics import (
    bits_from_cross_entropy,
    knowledge_bits,
    recall_and_type,
)


class Scripted(torch.nn.Module):
    """Logit ``sure[a]`` on the true value of attribute ``a`` (identified by the prompt's last token), 0 on
    every other token; ``wrong`` attributes put that logit on another value of the attribute instead."""

    def __init__(self, world: CompositionalWorld, sure: list[float], wrong: set[int] = frozenset()) -> None:
        super().__init__()
        self.world, self.sure, self.wrong = world, sure, wrong
        self.person = {
            (world.index[world.name(p)[0]], world.index[world.name(p)[1]]): p for p in range(world.n_people)
        }
        self.attr = {world.index[noun]: a for a, (_, _, noun) in enumerate(world.attributes)}

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        w = self.world
        logits = torch.zeros(x.shape[0], x.shape[1], len(w.vocab))
        for i, row in enumerate(x.tolist()):
            p, a = self.person[(row[1], row[2])], self.attr[row[-1]]
            v = (w.facts[p, a] + (1 if a in self.wrong else 0)) % w.n_values
            logits[i, -1, w.index[w.values[a][v]]] = self.sure[a]
        return SimpleNamespace(logits=logits)


def test_bits_match_a_hand_computed_case() -> None:
    w = CompositionalWorld(n_people=40, n_attributes=3, n_values=8, first_names=8, last_names=8)
    vocab = len(w.vocab)
    model = Scripted(w, sure=[40.0, 2.0, 0.0])
    got = knowledge_bits(model, w)
    # attribute 0: certain -> log2 8 = 3 bits per person; 1: p = e^2 / (e^2 + vocab - 1); 2: uniform over the
    # whole vocabulary (worse than uniform over the 8 values) -> floored at 0
    p1 = math.exp(2.0) / (math.exp(2.0) + vocab - 1)
    want = [40 * 3.0, 40 * max(0.0, 3.0 + math.log2(p1)), 0.0]
    assert got["per_attribute"] == pytest.approx(want, abs=1e-3)
    assert got["total"] == pytest.approx(sum(want), abs=1e-3) and got["of"] == 40 * 3 * 3.0
    assert got["cross_entropy"][2] == pytest.approx(math.log(vocab), rel=1e-5)


def test_confident_wrong_answers_score_zero_not_negative() -> None:
    w = CompositionalWorld(n_people=40, n_attributes=2, n_values=8, first_names=8, last_names=8)
    got = knowledge_bits(Scripted(w, sure=[40.0, 40.0], wrong={1}), w)
    assert got["per_attribute"] == pytest.approx([120.0, 0.0], abs=1e-3)
    exact, typed = recall_and_type(Scripted(w, sure=[40.0, 40.0], wrong={1}), w, "bio")
    assert exact == 0.5 and typed == 1.0  # the wrong answers are still values of the asked attribute


def test_bits_formula() -> None:
    # ce = ln 2 nats = 1 bit of a 2-bit attribute (V = 4): 1 bit per person
    assert bits_from_cross_entropy([math.log(2), 0.0, 10.0], 5, 4) == pytest.approx([5.0, 10.0, 0.0])


def test_routing_spread_sees_a_collapsed_and_a_spread_router(tiny_moc) -> None:
    from moc_experiments.experiment.capacity.metrics import routing_spread

    w = CompositionalWorld(n_people=40, n_attributes=2, n_values=8, first_names=8, last_names=8)
    model = tiny_moc(vocab_size=len(w.vocab), n_kv_heads=1, n_chapters=16, n_tokens=128)
    router = model.layers[1].memory.router
    (spread,) = routing_spread(model, w)
    assert spread["distinct_sets"] > 2 / 80  # a random router sends different prompts to different chapters
    with torch.no_grad():  # a router that ignores its input and always prefers chapters 3 and 5
        for p in router.parameters():
            p.zero_()
        router.proj.bias[[3, 5]] = 10.0  # the router scores chapter ids (shared ones first)
    (collapsed,) = routing_spread(model, w)
    assert collapsed["distinct_sets"] == 1 / (40 * 2) and collapsed["busiest_share"] == 1.0
    assert collapsed["usage_entropy_bits"] == pytest.approx(1.0)  # two chapters, used equally


def test_routing_consistency_compares_the_same_fact_inside_a_biography() -> None:
    """A router that sees only the current token (memory at layer 0, routing on the block input: the token
    embedding) routes the attribute token of a biography exactly as the bio prompt: consistency 1. A router
    that reads the context (memory at layer 1, after self-attention) is not bound to."""
    from moc.config import load_config
    from moc.model import MoCModel
    from moc_experiments.experiment.capacity.metrics import routing_consistency

    w = CompositionalWorld(n_people=40, n_attributes=3, n_values=8, first_names=8, last_names=8)

    def moc(layer: int, router_input: str) -> MoCModel:
        cfg = load_config(
            {
                "model": {"vocab_size": len(w.vocab), "d_model": 16, "n_layers": 2, "n_heads": 2,
                          "n_kv_heads": 1, "d_ff": 32, "max_seq_len": 32},
                "memory": {"enabled": True, "layers": [layer], "n_tokens": 256, "n_chapters": 32, "top_k": 2,
                           "n_heads": 2, "n_kv_heads": 1, "routing": "token", "router_input": router_input},
            }
        )  # fmt: skip
        torch.manual_seed(0)
        model = MoCModel(cfg)
        for p in model.parameters():  # a trained-looking model: every weight matters
            torch.nn.init.normal_(p, std=0.5)
        return model

    assert routing_consistency(moc(0, "block_input"), w) == [1.0]
    (mixed_,) = routing_consistency(moc(1, "memory_norm"), w)
    assert 0.0 <= mixed_ < 1.0
    assert (
        routing_consistency(
            moc(0, "block_input"),
            CompositionalWorld(n_people=40, first_names=8, last_names=8, doc_form="sentence"),
        )
        is None
    )
