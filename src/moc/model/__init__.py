"""The network: backbone layers, the memory bank and router (memory.py), and the decoder."""

from moc.model.memory import ChapterRouter, MemoryBank, MemoryLayer, MemoryState, RoutingInfo
from moc.model.param_groups import param_category
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
    "RoutingInfo",
    "param_category",
]
