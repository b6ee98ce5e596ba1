"""Iso-FLOP dense baselines and model FLOPs utilisation (MFU)."""

from __future__ import annotations

from moc.accounting.flops import _resolve, count_flops, training_flops_per_token
from moc.config import MoCConfig

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM, the peak SPEC section 3 reports MFU against


def _dense(cfg: MoCConfig, n_layers: int) -> MoCConfig:
    return cfg.replace(
        {
            "memory.enabled": False,
            "memory.layers": [],
            "model.n_layers": n_layers,
            "name": f"{cfg.name}-isoflop",
        }
    )


def isoflop(cfg: MoCConfig | str, seq_len: int | None = None) -> dict:
    """The dense model (same width, integer depth) whose forward FLOPs best match ``cfg``.

    Returns ``{"seq_len", "moc_forward", "dense_layers", "dense_forward", "mismatch",
    "layer_forward"}`` with ``mismatch = (dense - moc) / moc`` (positive: the dense model costs more).
    Ties go to the shallower model. For paper-moc: 22 layers, mismatch +0.38%.
    """
    cfg, L = _resolve(cfg, seq_len)
    report = count_flops(cfg, L)
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
        "moc_forward": moc_forward,
        "dense_layers": n,
        "dense_forward": dense_forward,
        "mismatch": (dense_forward - moc_forward) / moc_forward,
        "layer_forward": layer,
    }


def isoflop_config(cfg: MoCConfig | str, seq_len: int | None = None) -> MoCConfig:
    """``cfg`` with memory disabled and ``model.n_layers`` set to the iso-FLOP depth."""
    cfg, L = _resolve(cfg, seq_len)
    return _dense(cfg, isoflop(cfg, L)["dense_layers"])


def mfu(
    tokens_per_second: float,
    cfg: MoCConfig | str,
    seq_len: int | None = None,
    peak_flops: float = H100_BF16_PEAK,
) -> float:
    """Model FLOPs utilisation of training at ``tokens_per_second``: achieved / peak FLOP/s.

    Uses the paper's counts (training FLOPs per token = 3 * forward per sequence / seq_len). Where an
    implementation does less work than counted (e.g. projecting shared chapters once), this overstates
    the work done; report that next to the figure.
    """
    if tokens_per_second < 0 or peak_flops <= 0:
        raise ValueError(
            f"mfu needs tokens_per_second >= 0 and peak_flops > 0, got {tokens_per_second}, {peak_flops}"
        )
    return tokens_per_second * training_flops_per_token(cfg, seq_len) / peak_flops
