"""Shared helpers of the experiment tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from moc.config import load_config
from moc.model import MoCModel


def build_tiny_moc(
    vocab_size: int = 50, n_kv_heads: int = 2, n_chapters: int = 8, n_tokens: int = 64
) -> MoCModel:
    """A seeded two-layer token-routed MoC (memory at layer 1) small enough for any test."""
    cfg = load_config(
        {
            "model": {"vocab_size": vocab_size, "d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
                      "d_ff": 32, "max_seq_len": 64},
            "memory": {"enabled": True, "layers": [1], "n_tokens": n_tokens, "n_chapters": n_chapters,
                       "top_k": 2, "n_heads": 2, "n_kv_heads": n_kv_heads, "routing": "token"},
        }
    )  # fmt: skip
    torch.manual_seed(0)
    return MoCModel(cfg)


@pytest.fixture
def tiny_moc() -> Callable[..., MoCModel]:
    return build_tiny_moc
