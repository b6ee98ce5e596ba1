"""Iso-FLOP dense baselines and model FLOPs utilisation (MFU)."""

from __future__ import annotations

from moc.accounting.flops import _check_batch, _resolve, count_flops, training_flops_per_token
from moc.config import RunConfig

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM, the peak the paper reports MFU against


def _dense(cfg: RunConfig, n_layers: int) -> RunConfig:
    return cfg.replace(
        {
            "memory.enabled": False,
            "memory.layers": [],
            "model.n_layers": n_layers,
            "name": f"{cfg.name}-isoflop",
        }
    )


def isoflop(cfg: RunConfig | str, seq_len: int | None = None, batch_size: int = 1) -> dict:
    """The dense model (same width, integer depth) whose forward FLOPs best match ``cfg``.

    ``batch_size``: the MoC model's micro-batch, which sets how many distinct chapters it projects
    (:func:`moc.accounting.count_flops`); a dense model's FLOPs per sequence do not depend on it.
    Returns ``{"seq_len", "batch_size", "moc_forward", "dense_layers", "dense_forward", "mismatch",
    "layer_forward"}`` with ``mismatch = (dense - moc) / moc`` (positive: the dense model costs more).
    Ties go to the shallower model. For paper-moc at batch 1: 22 layers, mismatch +0.38%.
    """
    cfg, L = _resolve(cfg, seq_len)
    report = count_flops(cfg, L, _check_batch(batch_size))
    moc_forward = report["forward"]
    layer = report["breakdown"]["layer"]["each"]
    head = report["breakdown"]["head"]["each"]
    # dense(n) = n * layer + head; the best integer n is the floor or ceiling of the exact ratio.
    q, r = divmod(moc_forward - head, layer)
    n = max(q + 1 if 2 * r > layer else q, 1)
    dense_forward = count_flops(_dense(cfg, n), L)["forward"]
    assert dense_forward == n * layer + head  # the dense model shares the MoC model's blocks and head
    return {
        "seq_len": L,
        "batch_size": batch_size,
        "moc_forward": moc_forward,
        "dense_layers": n,
        "dense_forward": dense_forward,
        "mismatch": (dense_forward - moc_forward) / moc_forward,
        "layer_forward": layer,
    }


def isoflop_config(cfg: RunConfig | str, seq_len: int | None = None, batch_size: int = 1) -> RunConfig:
    """``cfg`` with memory disabled and ``model.n_layers`` set to the iso-FLOP depth at ``batch_size``."""
    cfg, L = _resolve(cfg, seq_len)
    return _dense(cfg, isoflop(cfg, L, batch_size)["dense_layers"])


def mfu(
    tokens_per_second: float,
    cfg: RunConfig | str,
    seq_len: int | None = None,
    peak_flops: float = H100_BF16_PEAK,
    batch_size: int = 1,
    projected_chapters: float | None = None,
) -> float:
    """Model FLOPs utilisation of training at ``tokens_per_second``: achieved / peak FLOP/s.

    Training FLOPs per token = 3 * forward per sequence / seq_len, counted at micro-batch
    ``batch_size`` (the expected distinct chapters under uniform routing) or, with
    ``projected_chapters``, from a measured number of distinct chapters per micro-batch.
    """
    if tokens_per_second < 0 or peak_flops <= 0:
        raise ValueError(
            f"mfu needs tokens_per_second >= 0 and peak_flops > 0, got {tokens_per_second}, {peak_flops}"
        )
    per_token = training_flops_per_token(cfg, seq_len, batch_size, projected_chapters)
    return tokens_per_second * per_token / peak_flops
