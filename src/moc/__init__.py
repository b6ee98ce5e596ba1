"""moc: Mixture of Chapters — transformers with a large, routed, learnable memory bank.

import moc
cfg = moc.load_config("tiny-moc", overrides=["memory.routing=causal"])
model = moc.build_model(cfg)
out = model(input_ids)          # out.logits (B, L, V), out.aux_loss, out.routing
"""

from moc.config import ConfigError, RunConfig, load_config, preset_names

__version__ = "0.1.0"

__all__ = ["ConfigError", "RunConfig", "build_model", "load_config", "preset_names", "__version__"]


def build_model(cfg: RunConfig | str, overrides: list[str] | None = None):
    """Build the network described by ``cfg`` (a config, preset name or YAML path)."""
    from moc.model import MoCModel

    if not isinstance(cfg, RunConfig) or overrides:
        cfg = load_config(cfg, overrides)
    return MoCModel(cfg)
