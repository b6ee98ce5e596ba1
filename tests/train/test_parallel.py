"""moc.train.parallel.compile_blocks: each compiled model raises dynamo's recompile limit for its blocks."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.config as dynamo_config

from moc.config import load_config
from moc.model import MoCModel
from moc.train.parallel import compile_blocks


def test_each_compiled_model_raises_the_recompile_limit_for_its_blocks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A worker that trains, evaluates and ablates several models compiles Block.forward into many graphs
    # (memory and plain blocks, train and eval, the probes' shapes): at torch's default limit of 8 the
    # demo's later blocks fell back to eager with a dynamo warning. Each call adds 4 graphs per block.
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: None)  # the limit is the subject here
    monkeypatch.setattr(dynamo_config, "recompile_limit", 8)  # torch's default, restored after the test
    monkeypatch.setattr(dynamo_config, "accumulated_recompile_limit", 256)
    for n_layers, limit in ((6, 8 + 24), (4, 8 + 24 + 16)):  # two models in one process, as a worker
        model = MoCModel(load_config("tiny-moc", [f"model.n_layers={n_layers}", "memory.layers=[1]"]))
        compile_blocks(model)
        assert dynamo_config.recompile_limit == limit
        assert dynamo_config.accumulated_recompile_limit >= 4 * limit
