"""The Hugging Face config's defaults are the run config's (moc.hf.configuration_moc is exported beside
the model code and cannot import moc.config, so this test keeps the two equal)."""

from __future__ import annotations

import dataclasses

import pytest

from moc.config import MemoryConfig, ModelConfig
from moc.hf.configuration_moc import MEMORY_DEFAULTS, MODEL_DEFAULTS


@pytest.mark.parametrize(
    ("section", "defaults"), [(ModelConfig, MODEL_DEFAULTS), (MemoryConfig, MEMORY_DEFAULTS)]
)
def test_hf_defaults_equal_the_run_config_defaults(section: type, defaults: dict) -> None:
    assert defaults == dataclasses.asdict(section())
