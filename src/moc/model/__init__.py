"""The network: backbone layers, the memory bank (bank.py), router (router.py) and memory layer
(memory.py), the routing context (routing_layout.py), and the decoder (transformer.py)."""

from moc.model.bank import MemoryBank
from moc.model.memory import MemoryLayer, MemoryState
from moc.model.param_groups import param_category
from moc.model.router import ChapterRouter, RoutingInfo
from moc.model.routing_layout import RoutingContext
from moc.model.transformer import Block, MoCCache, MoCModel, MoCOutput

__all__ = [
    "Block",
    "ChapterRouter",
    "MemoryBank",
    "MemoryLayer",
    "MemoryState",
    "MoCCache",
    "MoCModel",
    "MoCOutput",
    "RoutingContext",
    "RoutingInfo",
    "param_category",
]
