"""Hugging Face model class of a Mixture-of-Chapters decoder: ``MoCForCausalLM``.

It wraps moc's own network (``MoCModel``, imported from the core model files) so that it works with
``save_pretrained`` / ``from_pretrained``, the ``Auto*`` classes and ``generate()``. This file imports
only ``torch``, ``transformers`` and relative modules: ``moc export`` copies it, with the core model
files it needs (``transformer.py`` and the ``moc/model/`` and ``moc/kernels/`` modules it imports,
found by ``moc.hf.export.core_model_files``), into a model folder that loads with
``trust_remote_code=True`` without ``moc`` installed (the ``..model.`` imports below are rewritten to
``.`` in that copy).

Generation uses a ``DynamicCache`` that also carries each memory layer's decode state (the running
sum that causal routing pools over, and the current routing decision's memory keys/values), so the
memory read is computed once per routing decision, not once per token.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from ..model.bank import MemoryBank
from ..model.layers import RotaryEmbedding
from ..model.memory import MemoryState
from ..model.router import ChapterRouter
from ..model.transformer import MoCModel
from .configuration_moc import MoCConfig


class MoCDynamicCache(DynamicCache):
    """A ``DynamicCache`` plus ``memory``: ``{layer_idx: MemoryState}``, the memory layers' decode state.

    Batch operations (beam search reordering, repeating, selecting) apply to the memory state too.
    The memory state cannot be rolled back (it holds running sums), so ``crop`` is refused once a
    memory layer has run: assisted/speculative decoding is not supported for models with memory.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.memory: dict[int, MemoryState] = {}

    def _map_memory(self, fn: Any) -> None:
        for state in self.memory.values():
            for f in dataclasses.fields(state):
                value = getattr(state, f.name)
                if isinstance(value, torch.Tensor):
                    setattr(state, f.name, fn(value))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_memory(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_memory(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_memory(lambda t: t[indices.to(t.device)])

    def reset(self) -> None:
        super().reset()
        self.memory.clear()

    def crop(self, *args: Any, **kwargs: Any) -> None:
        if self.memory:
            raise NotImplementedError(
                "MoC memory layers keep running decode state (prefix sums, the current routing decision) "
                "that cannot be rolled back, so this cache cannot be cropped; assisted / speculative "
                "decoding is not supported for models with memory"
            )
        super().crop(*args, **kwargs)

    @property
    def is_croppable(self) -> bool:
        return not self.memory and super().is_croppable


def as_moc_cache(cache: Any) -> Any:
    """The cache to decode with: one that has a ``memory`` dict. ``generate()`` creates a plain
    ``DynamicCache``; it is promoted in place (same object, so the caller's reference stays valid)."""
    if cache is None or hasattr(cache, "memory"):
        return cache
    if type(cache) is DynamicCache:
        cache.__class__ = MoCDynamicCache
        cache.memory = {}
        return cache
    raise TypeError(
        "MoCForCausalLM decodes with a DynamicCache (the default of generate()), got "
        f"{type(cache).__name__}; do not set cache_implementation (static, offloaded and quantized "
        "caches are not supported)"
    )


@dataclass
class MoCCausalLMOutput(ModelOutput):
    """logits: (B, L, V). ``loss``: the LM cross-entropy alone, in training and eval mode alike (the
    same rule as ``MoCModel``). ``aux_loss``: the router load-balance + z-loss, already weighted (0 for
    dense models); to train, minimise ``loss + aux_loss``. ``cache``: the decode cache when ``use_cache``.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: Any = None
    aux_loss: torch.Tensor | None = None


class MoCPreTrainedModel(PreTrainedModel):
    config_class = MoCConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]

    def init_weights(self) -> None:
        """Called by ``post_init``. A new ``MoCModel`` already initialised itself (moc's scheme) when it
        was built, so there is nothing to redo; ``from_pretrained`` fills gaps through ``_init_weights``."""

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """``from_pretrained`` builds the model on the meta device and loads the file into it; this fills
        in what the file lacks: non-persistent buffers, and parameters missing from the file."""
        if isinstance(module, RotaryEmbedding):  # recomputed, never stored
            fresh = RotaryEmbedding(2 * module.inv_freq.shape[0], self.config.model["rope_theta"])
            module.inv_freq = fresh.inv_freq.to(module.inv_freq.device)
        elif isinstance(module, ChapterRouter) and hasattr(module, "disabled"):
            module.disabled = torch.zeros_like(module.disabled)
        elif isinstance(module, MemoryBank) and _missing(module):
            mem = self.config.memory
            fresh = MemoryBank(
                mem["n_tokens"],
                mem["n_chapters"],
                module.dim,
                module.kind,
                mem["bank_rank"],
                mem["bank_init_std"],
            )
            for name, p in module.named_parameters(recurse=False):
                if not getattr(p, "_is_hf_initialized", False):
                    p.copy_(getattr(fresh, name))
        elif "RMSNorm" in type(module).__name__ and _missing(module):
            module.weight.fill_(1.0)
        elif isinstance(module, nn.Linear | nn.Embedding) and _missing(module):
            # moc's own scheme (per-layer stds, zero memory output projections). Hugging Face guards
            # torch.nn.init during this pass, so the parameters loaded from the file are left alone.
            core = self.model if isinstance(getattr(self, "model", None), MoCModel) else None
            if core is not None and not getattr(self, "_core_reset_done", False):
                core.reset_parameters()
                self._core_reset_done = True


def _missing(module: nn.Module) -> bool:
    """Whether some direct parameter of ``module`` was not loaded from the weights file."""
    return any(not getattr(p, "_is_hf_initialized", False) for p in module.parameters(recurse=False))


class MoCForCausalLM(MoCPreTrainedModel, GenerationMixin):
    """A Mixture-of-Chapters (or dense) decoder-only LM. ``self.model`` is moc's ``MoCModel``, so the
    weight names are ``model.<MoCModel name>`` (e.g. ``model.layers.1.memory.router.proj.weight``).

    A bank shared by several memory layers is one parameter (``model.banks.0``) and is stored once.
    With tied embeddings there is no ``lm_head`` at all (the head reuses ``model.embed_tokens``).
    """

    def __init__(self, config: MoCConfig) -> None:
        super().__init__(config)
        self.model = MoCModel(config.to_moc_arch())
        self._route_len: torch.Tensor | None = None
        self.post_init()

    # -- embeddings (for resize / PEFT tooling) ---------------------------------------------------------

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module | None:
        return self.model.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.model.lm_head = value

    # -- forward --------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        sequence_route_len: int | torch.Tensor | None = None,
        past_key_values: Any = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> MoCCausalLMOutput | tuple:
        """input_ids: (B, L); attention_mask: (B, L_past + L), 1 = token, 0 = padding (left padding is fine).

        ``cache`` (or ``past_key_values``): a ``DynamicCache`` from an earlier call; ``use_cache`` returns
        one (default off outside ``generate()``). ``labels`` follow Hugging Face (aligned with input_ids,
        shifted inside, -100 ignored); ``loss`` is their cross-entropy, without ``aux_loss``.
        ``sequence_route_len`` (sequence routing, no cache): route on the positions below it only — an
        int, or a (B, 1) tensor per row.
        """
        if inputs_embeds is not None:
            raise ValueError("MoCForCausalLM takes input_ids, not inputs_embeds")
        if input_ids is None:
            raise ValueError("MoCForCausalLM.forward needs input_ids")
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = MoCDynamicCache()
        cache = as_moc_cache(cache)
        out = self.model(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            past_key_values=cache,
            sequence_route_len=sequence_route_len,
        )
        # One rule for every moc model: ``loss`` is the LM cross-entropy, ``aux_loss`` is separate (a
        # Hugging Face Trainer adds it in compute_loss, see docs/hf.md), so evaluation and training report
        # the same quantity under the same name.
        result = MoCCausalLMOutput(loss=out.loss, logits=out.logits, cache=cache, aux_loss=out.aux_loss)
        return result if return_dict is not False else result.to_tuple()

    # -- generation -----------------------------------------------------------------------------------

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs: Any) -> dict[str, Any]:
        """Hugging Face's default, plus: with sequence routing and no cache, keep routing on the prompt
        (as a cached generation does) instead of re-routing on the growing sequence at every step."""
        inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        no_cache = inputs.get("cache") is None and inputs.get("past_key_values") is None
        if self.config.routing == "sequence" and no_cache and "sequence_route_len" not in kwargs:
            if kwargs.get("is_first_iteration"):
                mask = kwargs.get("attention_mask")
                self._route_len = (
                    mask.long().sum(-1, keepdim=True)
                    if mask is not None
                    else torch.full((input_ids.shape[0], 1), input_ids.shape[1], device=input_ids.device)
                )
            if self._route_len is not None and self._route_len.shape[0] == input_ids.shape[0]:
                inputs["sequence_route_len"] = self._route_len
        return inputs
