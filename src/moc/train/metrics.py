"""A training step's metrics row: loss, learning rates, throughput, chapters projected and MFU.

:class:`StepMetrics` makes the ``train`` row that :class:`moc.train.logger.RunLogger` writes (see its
docstring for the keys) and the progress bar's postfix. MFU (model FLOPs utilisation) comes from the
exact FLOP count (:func:`moc.accounting.mfu`) at the run's micro-batch: ``mfu`` with the distinct
chapters expected under uniform routing, ``mfu_measured`` with those the step actually projected.
"""

from __future__ import annotations

from typing import Any

import torch

from moc.config import RunConfig


class StepMetrics:
    """The metrics of one run's steps, for ``world_size`` processes on ``device``."""

    def __init__(self, cfg: RunConfig, device: torch.device, world_size: int) -> None:
        self.cfg, self.device, self.world_size = cfg, device, world_size
        self.mfu_per_token_s = mfu_per_token_per_s(cfg, device)

    def row(
        self,
        step: int,
        loss: float,
        aux: float,
        gnorm: float,
        lrs: dict[str, float],
        tok_s: float,
        tokens_seen: int,
        chapters: float,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """(the ``train`` row, the progress bar's postfix). ``tok_s``: tokens/s over all processes since
        the last logged row; ``chapters``: distinct chapters one micro-batch projected (0: dense)."""
        row = {"kind": "train", "step": step, "loss": loss, "aux_loss": aux, "grad_norm": gnorm}
        row.update({f"lr_{k}": v for k, v in lrs.items()})
        row.update(tokens_per_s=tok_s, tokens_seen=tokens_seen)
        postfix = {"loss": f"{loss:.4f}", "lr": f"{next(iter(lrs.values())):.2e}", "tok/s": f"{tok_s:,.0f}"}
        if chapters > 0:  # measured: distinct chapters one micro-batch projected (mean over memory layers)
            row["distinct_chapters"] = chapters
        if self.mfu_per_token_s is not None:  # MFU per device against the peak in train.mfu_peak_flops
            # "mfu": the batch-aware count (expected distinct chapters under uniform routing);
            # "mfu_measured": the same count with the distinct chapters this step actually projected.
            row["mfu"] = tok_s / self.world_size * self.mfu_per_token_s
            postfix["mfu"] = f"{100 * row['mfu']:.1f}%"
            if chapters > 0:
                per_token_s = mfu_per_token_per_s(self.cfg, self.device, chapters)
                if per_token_s is not None:
                    row["mfu_measured"] = tok_s / self.world_size * per_token_s
        return row, postfix


def distinct_chapters(routing: list[Any], n_chapters: int, like: torch.Tensor) -> torch.Tensor:
    """Distinct chapters a forward projected, mean over memory layers (0 for a dense model); no sync.

    ``routing``: the forward's ``RoutingInfo`` per memory layer; ``like``: a tensor whose dtype and
    device the scalar result takes. The memory layer projects the union of ``info.indices`` over the
    micro-batch once, so this is the measured counterpart of
    :func:`moc.accounting.expected_distinct_chapters`.
    """
    if not routing:
        return like.new_zeros(())
    total = like.new_zeros(())
    for info in routing:
        hit = torch.zeros(n_chapters, dtype=torch.bool, device=info.indices.device)
        total = total + hit.index_fill_(0, info.indices.flatten(), True).sum().to(like)
    return total / len(routing)


def mfu_per_token_per_s(
    cfg: RunConfig, device: torch.device, projected_chapters: float | None = None
) -> float | None:
    """MFU of one device at 1 token/s (MFU is linear in throughput) at the run's micro-batch; None
    off-GPU or when the accounting does not cover the config. ``projected_chapters``: measured distinct
    chapters per micro-batch."""
    if device.type != "cuda":
        return None
    try:
        from moc.accounting import mfu

        t = cfg.train
        return float(mfu(1.0, cfg, t.seq_len, t.mfu_peak_flops, t.micro_batch_size, projected_chapters))
    except Exception:  # accounting may not cover every config; never fail a run over a metric
        return None
