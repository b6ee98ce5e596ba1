"""``moc.flops``: parameter and FLOP accounting. The code lives in :mod:`moc.accounting`."""

from moc.accounting import (
    H100_BF16_PEAK,
    RoutingGeometry,
    count_flops,
    count_params,
    forward_flops,
    isoflop,
    isoflop_config,
    mfu,
    routing_geometry,
    training_flops_per_token,
)

__all__ = [
    "H100_BF16_PEAK",
    "RoutingGeometry",
    "count_flops",
    "count_params",
    "forward_flops",
    "isoflop",
    "isoflop_config",
    "mfu",
    "routing_geometry",
    "training_flops_per_token",
]
