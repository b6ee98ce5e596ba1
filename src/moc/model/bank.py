"""The memory bank: ``N_m = C * T`` learnable latent tokens, viewed as C chapters of T tokens.

    kind "full":        M = weight                 (N_m, d)
    kind "factorized":  M = A B^T                  A: (N_m, rank), B: (d, rank) — a low-rank bank
    kind "reduced":     M = weight                 (N_m, bank_dim), bank_dim < d: attention runs there

Entries start with std ``bank_init_std`` (0.02, the paper's). Memory layers share one bank, own one
each, or share one per group of layers (``memory.bank_sharing``). A chapter is read by index
(:meth:`MemoryBank.chapters`), never expanded per batch element, so the bank's gradient is one
N_m x d tensor, non-zero only on the chapters read.

This file imports nothing from ``moc`` (it is exported with the model code).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import MemoryConfig
    except ImportError:
        pass


class MemoryBank(nn.Module):
    """``n_tokens`` latent memory tokens viewed as ``n_chapters`` chapters of equal size.

    kind "full":        weight (N_m, dim)
    kind "factorized":  A (N_m, rank) @ B^T with B (dim, rank) — a low-rank bank
    kind "reduced":     weight (N_m, dim) with dim = bank_dim < d_model; attention runs in that dim
    """

    def __init__(self, n_tokens: int, n_chapters: int, dim: int, kind: str, rank: int, init_std: float):
        super().__init__()
        self.n_chapters, self.chapter_size, self.dim, self.kind = (
            n_chapters,
            n_tokens // n_chapters,
            dim,
            kind,
        )
        if kind == "factorized":
            # Entries of A @ B^T then have std ~= init_std.
            factor_std = math.sqrt(init_std / math.sqrt(rank))
            self.A = nn.Parameter(torch.randn(n_tokens, rank) * factor_std)
            self.B = nn.Parameter(torch.randn(dim, rank) * factor_std)
        else:
            self.weight = nn.Parameter(torch.randn(n_tokens, dim) * init_std)

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        """The tensors the bank is made of: (A, B) for a factorized bank, else (weight,)."""
        return (self.A, self.B) if self.kind == "factorized" else (self.weight,)

    def chapters(self, idx: torch.Tensor | None, *params: torch.Tensor) -> torch.Tensor:
        """idx: (U,) chapter ids -> (U, T, dim); None: every chapter in order, (C, T, dim), as a view (no
        copy forward, no scatter into the gradient backward). Indexes the bank directly (no batch
        expansion). ``params`` (default: :attr:`params`) lets a read that recomputes in backward pass them in.
        """
        params = params or self.params
        rows = params[0].view(self.n_chapters, self.chapter_size, -1)
        rows = rows if idx is None else rows[idx]
        return rows @ params[1].t() if self.kind == "factorized" else rows


def bank_owners(cfg: MemoryConfig, n_memory_layers: int) -> list[int]:
    """Which bank each memory layer reads (in layer order): one shared, one each, or one per group."""
    if cfg.bank_sharing == "shared":
        return [0] * n_memory_layers
    if cfg.bank_sharing == "per_layer":
        return list(range(n_memory_layers))
    return [j // cfg.bank_group_size for j in range(n_memory_layers)]


def build_banks(cfg: MemoryConfig, d_model: int, n_banks: int) -> nn.ModuleList:
    """``n_banks`` memory banks as the config describes (a reduced bank lives in ``bank_dim`` dims)."""
    dim = cfg.bank_dim if cfg.bank_type == "reduced" else d_model
    return nn.ModuleList(
        MemoryBank(cfg.n_tokens, cfg.n_chapters, dim, cfg.bank_type, cfg.bank_rank, cfg.bank_init_std)
        for _ in range(n_banks)
    )
