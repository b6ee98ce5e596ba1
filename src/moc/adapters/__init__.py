"""Adapters: MoC memory added to pretrained Hugging Face models (alone or with LoRA)."""

from moc.adapters.memory_adapter import MemoryAdapter, add_memory

__all__ = ["MemoryAdapter", "add_memory"]
