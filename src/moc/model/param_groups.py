"""Which parameters are backbone, memory layers, or bank: the split used by accounting and optimizers.

Parameter names follow Hugging Face's Llama naming, with memory parts under ``layers.{i}.memory``
(attention, norm, router), ``layers.{i}.mem_mlp*`` (block variant B's second MLP) and ``banks.{j}``.
"""

from __future__ import annotations

from typing import Literal

Category = Literal["backbone", "memory", "bank"]


def param_category(name: str) -> Category:
    """Classify a parameter by its qualified name (as from ``model.named_parameters()``)."""
    parts = name.split(".")
    if "banks" in parts:
        return "bank"
    if "memory" in parts or any(p.startswith("mem_mlp") for p in parts):
        return "memory"
    return "backbone"
