"""Where routing decisions are made and which queries read them: documents, chunks and query tiles.

A row may pack several documents (a new one starts at a valid position whose id is 0 or not greater than
the previous valid position's). A *tile* is the positions of one document inside one chunk
``[g * chunk, (g + 1) * chunk)`` of positions (or, with ``split_first``, one position of the document's
first chunk); a query's *slot* in its tile is its position mod ``chunk`` (positions rise inside a
document, so no two tokens share a slot). Causal routing makes one decision per
tile, sequence routing one per document; the memory read runs over tiles (see ``moc.model.memory``).

This module only does the bookkeeping: the layout, one forward's :class:`RoutingContext` (built once,
read by every memory layer), pooling router inputs per tile or per document, and moving queries into
tiles and back. It imports nothing from ``moc`` (it is exported with the model code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import MemoryConfig
    except ImportError:
        pass


@dataclass
class TileLayout:
    """Where every position sits among the query tiles. All (B, L) unless noted; G = the most tiles any
    row needs, Gd = the most documents any row holds."""

    G: int
    Gd: int
    slot: torch.Tensor  # flat slot in the (B * G * chunk) tile slots; padding -> B * G * chunk (a bin)
    doc: torch.Tensor  # document number within the row (0, 1, ...) of each valid position
    n_tiles: torch.Tensor  # (B,)
    tile_valid: torch.Tensor  # (B, G) tile exists
    tile_first_row: torch.Tensor  # (B, G) row index of the tile's first position
    tile_doc_row: torch.Tensor  # (B, G) row index where the tile's document starts
    tile_doc: torch.Tensor  # (B, G) the tile's document number
    doc_valid: torch.Tensor  # (B, Gd) document exists
    last_doc_row: torch.Tensor  # (B,) where the row's last document starts
    last_chunk: torch.Tensor  # (B,) routing group (``chunk_group``) of the row's last valid position

    def tile_document_decision(self) -> torch.Tensor:
        """(B * G,) the flat (row, document) decision each tile reads under sequence routing."""
        B = self.tile_doc.shape[0]
        return (torch.arange(B, device=self.tile_doc.device)[:, None] * self.Gd + self.tile_doc).reshape(-1)


def chunk_group(pos: torch.Tensor, chunk: int, split_first: bool) -> torch.Tensor:
    """The routing group of each position id: its chunk ``pos // chunk``; with ``split_first`` every
    position of the first chunk is a group of its own (numbered ``pos - chunk``, below every chunk id)."""
    g = torch.div(pos, chunk, rounding_mode="floor")
    return torch.where(pos < chunk, pos - chunk, g) if split_first else g


def max_tiles(L: int, chunk: int, split_first: bool) -> int:
    """The most tiles a row of L positions holding one document can need."""
    if not split_first:
        return -(-L // chunk)
    return min(L, chunk) + max(0, -(-(L - chunk) // chunk))


def decisions_per_document(routing: str, L: int, chunk: int, split_first: bool) -> int:
    """Routing decisions for one document of L positions: 1 (sequence), its tiles (causal: one per chunk,
    or per position of the first chunk with ``split_first``), L (token). The FLOP count uses it too."""
    if routing == "sequence":
        return 1
    if routing == "causal":
        return max_tiles(L, chunk, split_first)
    return L


def tile_layout(
    position_ids: torch.Tensor,
    valid: torch.Tensor,
    chunk: int,
    G: int | None = None,
    split_first: bool = False,
) -> TileLayout:
    """Documents and tiles of each row from position_ids, valid: (B, L). ``G``: a known bound on the
    tiles per row (one document per row), else counted (a host sync). ``split_first``: each position of
    a document's first chunk is a tile of its own (``causal_first_chunk: per_token``)."""
    B, L = valid.shape
    dev = valid.device
    ar = torch.arange(L, device=dev).expand(B, L)
    last_valid = torch.where(valid, ar, -1).cummax(1).values
    prev = torch.cat([last_valid.new_full((B, 1), -1), last_valid[:, :-1]], 1)  # last valid index < t
    pos = position_ids
    prev_pos = pos.gather(1, prev.clamp(min=0))
    doc_start = valid & ((prev < 0) | (pos == 0) | (pos <= prev_pos))
    chunk_id = chunk_group(pos, chunk, split_first)
    tile_start = valid & (doc_start | (chunk_id != chunk_id.gather(1, prev.clamp(min=0))))
    tile = tile_start.long().cumsum(1) - 1
    doc = doc_start.long().cumsum(1) - 1
    n_tiles, n_docs = tile_start.sum(1), doc_start.sum(1)
    if G is None:
        # The one host sync of the read: how many tiles and documents the busiest row has (packed rows
        # can need more than ceil(L / chunk) tiles, one extra per document boundary inside a chunk).
        G, Gd = (max(1, int(n)) for n in torch.stack([n_tiles.max(), n_docs.max()]).tolist())
    else:  # the caller's bound, checked on the device (no sync): a wrong one must not mix rows
        Gd = 1
        torch._assert_async((n_tiles.max() <= G) & (n_docs.max() <= 1), "memory read: one_document was wrong")
    row_base = (torch.arange(B, device=dev) * G)[:, None].expand(B, L)
    slot = torch.where(valid, (row_base + tile) * chunk + pos % chunk, B * G * chunk)
    doc_row = torch.where(doc_start, ar, -1).cummax(1).values  # where each position's document starts
    # Per tile: scatter from its first position (other positions go to a bin column G).
    col = torch.where(tile_start, tile, G)

    def per_tile(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(B, G + 1, dtype=torch.long, device=dev).scatter(1, col, values)[:, :G]

    last_pos = torch.where(valid, pos, -1).max(1).values.clamp(min=0)
    return TileLayout(
        G=G,
        Gd=Gd,
        slot=slot,
        doc=doc.clamp(min=0),
        n_tiles=n_tiles,
        tile_valid=torch.arange(G, device=dev)[None] < n_tiles[:, None],
        tile_first_row=per_tile(ar),
        tile_doc_row=per_tile(doc_row.clamp(min=0)),
        tile_doc=per_tile(doc.clamp(min=0)),
        doc_valid=torch.arange(Gd, device=dev)[None] < n_docs[:, None],
        last_doc_row=doc_row[:, -1].clamp(min=0),
        last_chunk=chunk_group(last_pos, chunk, split_first),
    )


def routing_plan(
    routing: str,
    position_ids: torch.Tensor,
    valid: torch.Tensor,
    chunk: int,
    split_first: bool,
    one_document: bool,
) -> TileLayout | None:
    """The tiles every memory layer of one forward reads (None for token routing, whose tiles are its
    positions). ``one_document``: every row is one document with positions 0, 1, ... (from an attention
    mask), so the tile count has a bound known from L and needs no host sync."""
    if routing == "token":
        return None
    bound = max_tiles(valid.shape[1], chunk, split_first) if one_document else None
    return tile_layout(position_ids, valid, chunk, bound, split_first)


def splits_first_chunk(cfg: MemoryConfig) -> bool:
    """Whether causal routing decides each position of a document's first chunk on its own
    (``causal_first_chunk: per_token``)."""
    return cfg.routing == "causal" and cfg.causal_first_chunk == "per_token"


@dataclass
class RoutingContext:
    """Where one forward's routing decisions fall, shared by every memory layer of it: built once per
    forward next to the attention mask (:meth:`build`), so no layer derives it again.

    All (B, L) tensors are the forward's new positions (not a cache's past ones)."""

    position_ids: torch.Tensor  # (B, L) position within the row's document; chunks count these
    valid: torch.Tensor  # (B, L) a real token (False: padding, which no decision pools or serves)
    plan: TileLayout | None  # documents and query tiles; None for token routing and while decoding
    one_document: bool = False  # every row is one document at positions 0, 1, ... (the plan's bound)
    sequence_route_len: int | torch.Tensor | None = None  # sequence routing pools positions below it

    @classmethod
    def build(
        cls,
        cfg: MemoryConfig,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        *,
        one_document: bool = False,
        sequence_route_len: int | torch.Tensor | None = None,
        tiles: bool = True,
    ) -> RoutingContext:
        """The context for positions and validity (B, L) under the MemoryConfig ``cfg``.

        ``one_document``: the caller knows every row is one document with positions 0, 1, ...
        (positions from an attention mask), so the tiles per row have a bound known from L
        (:func:`max_tiles`) and no host sync counts them (checked on the device). ``sequence_route_len``
        (sequence routing only): pool just the positions below it, e.g. the prompt; an int or (B, 1).
        ``tiles=False``: no layer will read tiles (decoding after a prompt, a model without memory).
        """
        plan = None
        if tiles:
            chunk, split = cfg.causal_chunk_size, splits_first_chunk(cfg)
            plan = routing_plan(cfg.routing, position_ids, valid, chunk, split, one_document)
        return cls(position_ids, valid, plan, one_document, sequence_route_len)

    def sequence_pool(self) -> torch.Tensor:
        """(B, L) the positions sequence routing pools: the valid ones, below ``sequence_route_len``."""
        if self.sequence_route_len is None:
            return self.valid
        return self.valid & (self.position_ids < self.sequence_route_len)


# -- pooling the router input -----------------------------------------------------------------------


def prefix_sums(r: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r: (B, L, d); valid: (B, L) -> exclusive prefix sums (B, L + 1, d) and counts (B, L + 1) of the
    valid positions, in float64 so that differences across long rows (a document's pooled sum) keep full
    float32 precision."""
    rv = r.to(torch.float64) * valid[..., None]
    zero = rv.new_zeros(r.shape[0], 1, rv.shape[-1])
    csum = torch.cat([zero, rv.cumsum(1)], 1)
    ccount = torch.cat([zero[..., 0], valid.to(torch.float64).cumsum(1)], 1)
    return csum, ccount


def causal_tile_sums(
    csum: torch.Tensor, ccount: torch.Tensor, lay: TileLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (B, G, d) and count (B, G) of each tile's document's positions *before* the tile (from
    ``prefix_sums``): what causal routing pools. A document's first tile pools nothing."""
    first, doc0 = lay.tile_first_row, lay.tile_doc_row  # (B, G)
    d = csum.shape[-1]
    sums = csum.gather(1, first[..., None].expand(-1, -1, d)) - csum.gather(
        1, doc0[..., None].expand(-1, -1, d)
    )
    return sums, ccount.gather(1, first) - ccount.gather(1, doc0)


def document_sums(
    r: torch.Tensor, valid: torch.Tensor, pool: torch.Tensor, lay: TileLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (B, Gd, d) and count (B, Gd) of the ``pool`` positions of each document (float64): what
    sequence routing pools. r: (B, L, d); valid, pool: (B, L), pool a subset of valid."""
    B, L = valid.shape
    base = torch.arange(B, device=r.device)[:, None] * lay.Gd
    key = torch.where(valid, base + lay.doc, B * lay.Gd).reshape(-1)  # padding -> a bin row at the end
    rp = (r.to(torch.float64) * pool[..., None]).reshape(B * L, -1)
    sums = rp.new_zeros(B * lay.Gd + 1, rp.shape[-1]).index_add(0, key, rp)[:-1].view(B, lay.Gd, -1)
    counts = rp.new_zeros(B * lay.Gd + 1).index_add(0, key, pool.reshape(-1).to(rp.dtype))
    return sums, counts[:-1].view(B, lay.Gd)


# -- queries into tiles and back ---------------------------------------------------------------------


def to_tiles(x: torch.Tensor, lay: TileLayout, chunk: int) -> torch.Tensor:
    """x: (B, L, *rest) -> (B * G, chunk, *rest): each position at its tile slot, empty slots zero."""
    B, L, *rest = x.shape
    tiles = x.new_zeros(B * lay.G * chunk + 1, *rest).index_copy(
        0, lay.slot.reshape(-1), x.reshape(B * L, *rest)
    )
    return tiles[:-1].view(B * lay.G, chunk, *rest)


def from_tiles(tiles: torch.Tensor, lay: TileLayout) -> torch.Tensor:
    """tiles: (B * G, chunk, *rest) -> (B, L, *rest); padding positions get zeros."""
    rest = tiles.shape[2:]
    flat = torch.cat([tiles.reshape(-1, *rest), tiles.new_zeros(1, *rest)])
    return flat.index_select(0, lay.slot.reshape(-1)).view(*lay.slot.shape, *rest)
