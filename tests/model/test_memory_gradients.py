"""Gradients that the language-model loss alone must deliver: to the router (every routing mode, token
routing included) and to every bank of a per-layer or grouped model, each bank being read by its layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import moc
from memory_helpers import make_memory_matter

from .reference import reference_forward


def _model(*overrides: str) -> moc.model.MoCModel:
    cfg = moc.load_config(
        "tiny-moc",
        [
            "model.n_layers=3",
            "memory.layers=all",
            "memory.n_tokens=64",
            "memory.n_chapters=16",
            "memory.top_k=3",
            "memory.causal_chunk_size=4",
            *overrides,
        ],
    )
    return make_memory_matter(moc.build_model(cfg), std=0.3, router_std=0.5)


def _lm_grads(model: moc.model.MoCModel, ids: torch.Tensor, reference: bool) -> dict[str, torch.Tensor]:
    """Gradients of the mean next-token cross-entropy only (no aux loss)."""
    if reference:
        logits, _ = reference_forward(model, ids)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    else:
        model(ids, labels=ids).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.mark.parametrize("mode", ["token", "causal", "sequence"])
def test_router_gets_gradient_from_the_lm_loss_alone(mode: str) -> None:
    """The chapter weights scale K and V, so the LM loss reaches the router through them (no aux loss)."""
    model = _model(f"memory.routing={mode}")
    ids = torch.randint(0, 256, (2, 12))
    got, want = _lm_grads(model, ids, reference=False), _lm_grads(model, ids, reference=True)
    for i in range(3):
        for part in ("weight", "bias"):
            name = f"layers.{i}.memory.router.proj.{part}"
            assert want[name].abs().max() > 1e-4, name  # the reference says it is far from zero
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("sharing", "owners"), [("per_layer", [0, 1, 2]), ("grouped", [0, 0, 1])])
def test_every_bank_is_read_by_its_layers_and_gets_gradient(sharing: str, owners: list[int]) -> None:
    model = _model(f"memory.bank_sharing={sharing}", "memory.bank_group_size=2")
    assert len(model.banks) == max(owners) + 1
    assert [model.bank_of_layer[i] for i in range(3)] == owners
    ids = torch.randint(0, 256, (2, 12))
    got, want = _lm_grads(model, ids, reference=False), _lm_grads(model, ids, reference=True)
    base = model(ids).logits.detach()
    for b in range(len(model.banks)):
        name = f"banks.{b}.weight"
        assert want[name].abs().max() > 1e-4, name
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
        # Read: perturbing bank b's shared chapter (always selected) moves the logits.
        with torch.no_grad():
            model.banks[b].weight[:4] += 1.0
        assert (model(ids).logits - base).abs().max() > 1e-3, f"bank {b} is never read"
        with torch.no_grad():
            model.banks[b].weight[:4] -= 1.0
