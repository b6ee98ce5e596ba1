"""routing_layout: query tiles and per-tile / per-document pooling, checked against loops over positions."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.model.routing_layout import (
    RoutingContext,
    causal_tile_sums,
    document_sums,
    from_tiles,
    prefix_sums,
    tile_layout,
    to_tiles,
)

# Row 0: two packed documents (positions restart at 0) after one padding position; row 1: two documents,
# the second starting at position 4 (an id not greater than the previous one also starts a document).
POS = torch.tensor([[0, 0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 4, 4, 5, 6, 7]])
VALID = torch.tensor([[False] + [True] * 8, [True] * 9])
CHUNK = 3


def _documents(row: int) -> list[list[int]]:
    """Valid positions of a row grouped into documents (a new one where the position id restarts)."""
    docs: list[list[int]] = []
    for t in range(POS.shape[1]):
        if VALID[row, t]:
            if not docs or POS[row, t] <= POS[row, docs[-1][-1]]:
                docs.append([])
            docs[-1].append(t)
    return docs


def test_tiles_round_trip_and_hold_one_document_chunk_each() -> None:
    lay = tile_layout(POS, VALID, CHUNK)
    x = torch.arange(1.0, 19.0).view(2, 9, 1)
    tiles = to_tiles(x, lay, CHUNK)  # (B * G, chunk, 1)
    assert torch.equal(from_tiles(tiles, lay), x * VALID[..., None])  # padding comes back as zeros
    for b in range(2):
        want = [[t for t in doc if POS[b, t] // CHUNK == g] for doc in _documents(b) for g in range(3)]
        want = [tile for tile in want if tile]
        assert int(lay.n_tiles[b]) == len(want)
        for g, tile in enumerate(want):
            got = tiles[b * lay.G + g, :, 0]
            assert sorted(got[got != 0].tolist()) == [float(x[b, t]) for t in tile]


def test_pooling_per_tile_is_the_documents_earlier_positions_and_per_document_all_of_it() -> None:
    lay = tile_layout(POS, VALID, CHUNK)
    r = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(0))
    sums, counts = causal_tile_sums(*prefix_sums(r, VALID), lay)
    doc_sums, doc_counts = document_sums(r, VALID, VALID, lay)
    for b in range(2):
        g = 0
        for d, doc in enumerate(_documents(b)):
            assert torch.allclose(doc_sums[b, d].float(), r[b, doc].sum(0)) and doc_counts[b, d] == len(doc)
            for chunk_id in sorted({int(POS[b, t]) // CHUNK for t in doc}):
                before = [t for t in doc if POS[b, t] < chunk_id * CHUNK]
                assert counts[b, g] == len(before)
                assert torch.allclose(sums[b, g].float(), r[b, before].sum(0) if before else torch.zeros(4))
                g += 1


def test_the_routing_context_lays_out_tiles_by_mode_and_pools_below_the_route_length() -> None:
    cfg = moc.load_config("tiny-moc", ["memory.routing=causal", f"memory.causal_chunk_size={CHUNK}"]).memory
    ctx = RoutingContext.build(cfg, POS, VALID)
    want = tile_layout(POS, VALID, CHUNK)
    assert ctx.plan is not None and ctx.plan.G == want.G and torch.equal(ctx.plan.slot, want.slot)
    token = moc.load_config("tiny-moc", ["memory.routing=token"]).memory
    assert RoutingContext.build(token, POS, VALID).plan is None  # token routing: its tiles are positions
    assert RoutingContext.build(cfg, POS, VALID, tiles=False).plan is None  # decoding reads no tiles
    assert torch.equal(ctx.sequence_pool(), VALID)
    short = RoutingContext.build(cfg, POS, VALID, sequence_route_len=2)
    assert torch.equal(short.sequence_pool(), VALID & (POS < 2))


def test_a_memory_layer_reads_no_tiles_it_was_not_given() -> None:
    """The context's owner lays out the tiles; a layer never builds its own."""
    model = moc.build_model(moc.load_config("tiny-moc", ["memory.routing=causal"]))
    layer = next(b.memory for b in model.layers if b.memory is not None)
    h = torch.randn(2, 9, model.config.model.d_model)
    ctx = RoutingContext.build(layer.cfg, POS, VALID, tiles=False)
    with pytest.raises(ValueError, match="needs a RoutingContext with its tiles"):
        layer(h, model.banks[0], ctx)
