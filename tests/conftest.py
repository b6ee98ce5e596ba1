"""Shared fixtures: tiny, seeded models."""

from __future__ import annotations

import pytest
import torch

import moc
from memory_helpers import make_memory_matter


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_model(*overrides: str, live_memory: bool = True) -> moc.model.MoCModel:
    """A tiny MoC model. With ``live_memory`` the memory output projections get random weights, so
    memory reads change the logits from the first step (they start at zero, as in the paper)."""
    # Pinned to causal routing (tiny-moc routes per token): these tests exercise the
    # chunked read; a test that wants another mode overrides it.
    model = moc.build_model(moc.load_config("tiny-moc", ["memory.routing=causal", *overrides]))
    return make_memory_matter(model) if live_memory else model


@pytest.fixture
def make_model():
    """Factory fixture: ``make_model("memory.routing=token", live_memory=True)``."""
    return tiny_model
