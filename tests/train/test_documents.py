"""The training loop feeds per-document position ids, unless data.separate_documents=false."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.train import train


def _spy_positions(cfg: moc.RunConfig) -> tuple[torch.nn.Module, list[torch.Tensor | None]]:
    torch.manual_seed(cfg.train.seed)
    model = moc.build_model(cfg)
    seen: list[torch.Tensor | None] = []
    forward = model.forward

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("position_ids"))  # type: ignore[arg-type]
        return forward(*args, **kwargs)

    model.forward = spy
    return model, seen


@pytest.mark.parametrize("separate", [True, False])
def test_loop_passes_document_positions(tiny_cfg, separate: bool) -> None:
    cfg = tiny_cfg(
        "train.max_steps=2", "train.eval_every=0", "train.save_every=0", f"data.separate_documents={separate}"
    )
    model, seen = _spy_positions(cfg)
    train(cfg, model=model)
    assert seen
    if not separate:
        assert all(p is None for p in seen)
        return
    pos = torch.cat([p for p in seen if p is not None])
    assert pos.shape[1] == cfg.train.seq_len
    # The synthetic documents are 9-41 tokens long and windows 16: most windows hold a restart.
    restarts = (pos[:, 1:] <= pos[:, :-1]).any(1)
    assert restarts.float().mean() > 0.3
    assert int(pos.max()) < cfg.train.seq_len
