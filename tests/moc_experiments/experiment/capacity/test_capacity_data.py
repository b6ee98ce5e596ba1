"""Batches of the capacity experiment: packed rows equal separate rows, exposures set the run length."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memory_helpers import make_memory_matter
from moc.config import load_config
from moc.model import MoCModel
from moc_experiments.experiment.capacity import load_capacity
from moc_experiments.experiment.capacity.data import make_world, mixed, packed_rows, rows, steps_for


def test_packed_rows_layout() -> None:
    docs = [[1, 5, 6], [1, 7, 8, 9], [1, 4], [1, 2, 3, 4, 5]]
    x, m, y, pos = packed_rows(docs, pad_id=0, pack_len=7)
    assert x.tolist() == [[1, 5, 6, 1, 7, 8, 9], [1, 4, 1, 2, 3, 4, 5]]
    assert m.all()  # these documents fill both rows: no padding
    assert pos.tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]
    # a document's first token is never the target of the previous document's last token
    assert y.tolist() == [[1, 5, 6, -100, 7, 8, 9], [1, 4, -100, 2, 3, 4, 5]]
    x, m, _, _ = packed_rows([[1, 2], [1, 2, 3]], pad_id=0, pack_len=4)
    assert x.tolist() == [[1, 2], [1, 2]] or m.sum() == 5
    with pytest.raises(ValueError, match="pack_len"):
        packed_rows([[1] * 9], pad_id=0, pack_len=8)


@pytest.mark.parametrize("memory", [False, True])
def test_packed_training_loss_equals_one_document_per_row(memory: bool) -> None:
    """Packing changes no number: the summed loss (and its gradient) over packed rows equals the loss
    over one right-padded document per row, for a dense model and a token-routed MoC."""
    cfg = load_config(
        {
            "name": "t",
            "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "d_ff": 32,
                      "vocab_size": 40, "max_seq_len": 32},
            "memory": {"enabled": memory, "layers": [1], "n_tokens": 64, "n_chapters": 8, "top_k": 2,
                       "n_heads": 2, "n_kv_heads": 1, "routing": "token"},
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = make_memory_matter(MoCModel(cfg).double(), std=0.3)
    rng = np.random.default_rng(0)
    docs = [[1, *rng.integers(2, 40, size=int(n)).tolist()] for n in rng.integers(3, 9, size=7)]
    losses = []
    for x, m, y, pos in (rows(docs, 0, 10), packed_rows(docs, 0, 24)):
        model.zero_grad()
        out = model(x, attention_mask=m, labels=y, position_ids=pos, loss_reduction="sum")
        out.loss.backward()
        losses.append((out.loss.detach(), model.embed_tokens.weight.grad.clone()))
    # (the loss is accumulated in fp32 whatever the model's dtype)
    assert float(losses[0][0]) == pytest.approx(float(losses[1][0]), rel=1e-6)
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-5, atol=1e-6)


def test_exposures_set_the_steps() -> None:
    cfg = load_capacity("capacity-smoke", ["train.exposures=10"])
    world = make_world(cfg)
    assert steps_for(cfg, world, 20.0) == -(-10 * world.n_people // cfg.train.batch_size)
    cfg = load_capacity("capacity-smoke")
    assert steps_for(cfg, world, 20.0) == -(-cfg.train.tokens // (cfg.train.batch_size * 20))


def test_mixed_replaces_rows_with_the_given_share() -> None:
    a = rows([[1, 2, 3]] * 200, 0, 4)
    b = rows([[1, 5]] * 200, 0, 4)
    x, m, y, _ = mixed(lambda: a, lambda: b, 0.0, np.random.default_rng(0))
    assert torch.equal(x, a[0])
    x, m, y, _ = mixed(lambda: a, lambda: b, 0.5, np.random.default_rng(0))
    share = float((x[:, 1] == 5).float().mean())
    assert 0.35 < share < 0.65 and torch.equal(m[x[:, 1] == 5], b[1][x[:, 1] == 5])
