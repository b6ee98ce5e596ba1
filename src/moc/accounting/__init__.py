"""Parameter and FLOP accounting (the paper's Appendix A.2): analytic, exact, instant even at paper size.

from moc.accounting import count_params, count_flops, isoflop, mfu
count_params("paper-moc")["total"]      # 371292932
count_flops("paper-moc")["forward"]     # 459171802488
isoflop("paper-moc")["dense_layers"]    # 22
"""

from moc.accounting.flops import (
    RoutingGeometry,
    count_flops,
    expected_distinct_chapters,
    forward_flops,
    routing_geometry,
    training_flops_per_token,
)
from moc.accounting.isoflop import H100_BF16_PEAK, isoflop, isoflop_config, mfu
from moc.accounting.params import count_params

__all__ = [
    "H100_BF16_PEAK",
    "RoutingGeometry",
    "count_flops",
    "count_params",
    "expected_distinct_chapters",
    "forward_flops",
    "isoflop",
    "isoflop_config",
    "mfu",
    "routing_geometry",
    "training_flops_per_token",
]
