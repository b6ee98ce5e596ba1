"""Hugging Face integration: ``MoCForCausalLM``, checkpoint conversion, export, generation, lm-eval.

import moc.hf                                   # registers model_type "moc" with the Auto* classes
model = moc.hf.from_moc_checkpoint("runs/x")    # a transformers PreTrainedModel + GenerationMixin
moc.hf.export("runs/x", "out/x-hf")              # self-contained folder (trust_remote_code=True)
results = moc.hf.evaluate("out/x-hf", ["local_capitals"], include_path="tasks/")
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM

from moc.hf.configuration_moc import MoCConfig
from moc.hf.convert import (
    ModelSource,
    check_tokenizer_fits,
    from_moc_checkpoint,
    from_moc_model,
    hf_config,
    load_model,
    resolve_source,
    resolve_tokenizer,
)
from moc.hf.errors import HFError
from moc.hf.export import export
from moc.hf.generation import chat_reply, generate_text
from moc.hf.modeling_moc import MoCCausalLMOutput, MoCDynamicCache, MoCForCausalLM

AutoConfig.register(MoCConfig.model_type, MoCConfig, exist_ok=True)
AutoModelForCausalLM.register(MoCConfig, MoCForCausalLM, exist_ok=True)


def evaluate(
    model_or_dir: Any, tasks: list[str] | str, include_path: str | None = None, **kwargs: Any
) -> dict:
    """Run lm-evaluation-harness tasks; see :func:`moc.hf.evaluation.evaluate` (imports lm_eval lazily)."""
    from moc.hf.evaluation import evaluate as _evaluate

    return _evaluate(model_or_dir, tasks, include_path=include_path, **kwargs)


__all__ = [
    "HFError",
    "MoCCausalLMOutput",
    "MoCConfig",
    "MoCDynamicCache",
    "MoCForCausalLM",
    "ModelSource",
    "chat_reply",
    "check_tokenizer_fits",
    "evaluate",
    "export",
    "from_moc_checkpoint",
    "from_moc_model",
    "generate_text",
    "hf_config",
    "load_model",
    "resolve_source",
    "resolve_tokenizer",
]
