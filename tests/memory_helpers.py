"""Test helper: make the memory matter.

Memory output projections start at zero (the paper's init: a new memory layer is the identity), so a
freshly built model's logits do not depend on the read at all and a test of the read would pass with
any read. ``make_memory_matter`` gives them random weights; with ``router_std`` the router's projection
too (decisive top-k: no near-ties between fp32 and fp64 scores).

Importable from any test as ``from memory_helpers import make_memory_matter`` (``pythonpath`` in
pyproject.toml puts tests/ on the path).
"""

from __future__ import annotations

from torch import nn

from moc.model.memory import MemoryLayer


def make_memory_matter(model: nn.Module, std: float = 0.2, router_std: float | None = None) -> nn.Module:
    """Re-draw every memory layer's output projection from N(0, std²) (and its router's, with
    ``router_std``), in place, in a MoC model, a Hugging Face MoC model or a memory adapter; returns
    ``model`` (a dense model, which tests often build beside a MoC one, is returned unchanged)."""
    for layer in (m for m in model.modules() if isinstance(m, MemoryLayer)):
        for name, p in layer.named_parameters():  # in registration order: the same draws every run
            if name == "o_proj.weight":
                nn.init.normal_(p, std=std)
            elif name.startswith("router.proj.") and router_std is not None:
                nn.init.normal_(p, std=router_std)
    return model
