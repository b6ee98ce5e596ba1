"""Inspection tools for trained models."""

from moc.analysis.router import (
    LayerUsage,
    ablate_chapters,
    chapter_importance,
    chapter_usage,
    chapters_removed,
    mean_loss,
)

__all__ = [
    "LayerUsage",
    "ablate_chapters",
    "chapter_importance",
    "chapter_usage",
    "chapters_removed",
    "mean_loss",
]
