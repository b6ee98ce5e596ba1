"""The decoder: Llama-style blocks, some of which read the memory bank (block variant A or B).

    variant A:  h += SelfAttn(norm(h));  h += Memory(h);  h += MLP(norm(h))
    variant B:  h += SelfAttn(norm(h));  h += MLP(norm(h));  h += Memory(h);  h += MLP2(norm(h))

Dense baselines are the same code with ``memory.enabled = false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .bank import MemoryBank, bank_owners, build_banks
from .layers import (
    RMSNorm,
    RotaryEmbedding,
    SelfAttention,
    SwiGLU,
    dense_document_mask,
    document_ids,
    flex_document_mask,
)
from .loss import chunked_linear_cross_entropy
from .memory import MemoryLayer, MemoryState
from .param_groups import param_category
from .router import RoutingInfo
from .routing_layout import RoutingContext

if TYPE_CHECKING:
    # Inside try: transformers' remote-code import check skips it, so exported copies never need `moc`.
    try:  # noqa: SIM105 - the import check skips try blocks, not contextlib.suppress
        from moc.config import RunConfig
    except ImportError:
        pass


@dataclass
class MoCOutput:
    """logits: (B, L, V), or None when the caller asked for the loss only (``return_logits=False``).
    ``loss`` is the LM cross-entropy when labels are given, never with the router aux loss, in training
    and eval mode alike (the same rule as ``MoCForCausalLM``); to train, minimise ``loss + aux_loss``."""

    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    routing: list[RoutingInfo] = field(default_factory=list)
    past_key_values: Any = None


class MoCCache:
    """Self-attention KV cache (Hugging Face's ``update`` API) plus per-memory-layer decode state."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.memory: dict[int, MemoryState] = {}

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: (B, kv_heads, L_new, hd) -> all cached (B, kv_heads, L_past + L_new, hd)."""
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], k], dim=2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], v], dim=2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[2] if len(self.keys) > layer_idx else 0


class Block(nn.Module):
    def __init__(self, cfg: RunConfig, layer_idx: int, has_memory: bool) -> None:
        super().__init__()
        m = cfg.model
        self.layer_idx = layer_idx
        self.variant = cfg.memory.block_variant
        self.input_layernorm = RMSNorm(m.d_model, m.norm_eps)
        self.self_attn = SelfAttention(m.d_model, m.n_heads, m.n_kv_heads)
        self.post_attention_layernorm = RMSNorm(m.d_model, m.norm_eps)
        self.mlp = SwiGLU(m.d_model, m.d_ff)
        self.memory = MemoryLayer(m.d_model, m.norm_eps, cfg.memory, layer_idx) if has_memory else None
        if has_memory and self.variant == "B":
            self.mem_mlp_norm = RMSNorm(m.d_model, m.norm_eps)
            self.mem_mlp = SwiGLU(m.d_model, m.d_ff)

    def forward(
        self,
        h: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None,
        routing: RoutingContext,
        bank: MemoryBank | None,
        cache: Any = None,
    ) -> tuple[torch.Tensor, torch.Tensor, RoutingInfo | None]:
        """h: (B, L, d) -> (h, aux loss, routing info). ``rope``: cos, sin (B, L, head_dim) of the
        positions; ``attn_mask``: self-attention's mask (``MoCModel._attention_mask``); ``routing``: the
        forward's routing context, built once for every memory layer next to that mask."""
        block_input = h  # what the router pools with memory.router_input = block_input (the paper's code)
        h = h + self.self_attn(self.input_layernorm(h), rope, attn_mask, cache, self.layer_idx)
        aux, info = h.new_zeros((), dtype=torch.float32), None
        if self.memory is None:
            return h + self.mlp(self.post_attention_layernorm(h)), aux, info
        state = None
        if cache is not None:
            state = cache.memory.setdefault(self.layer_idx, MemoryState())
        from_block = self.memory.cfg.router_input == "block_input"
        route = block_input if from_block else None
        if self.variant == "B":  # variant B: the MLP first, then the memory read and its own MLP
            h = h + self.mlp(self.post_attention_layernorm(h))
        update, aux, info = self.memory(h, bank, routing, state, route)
        h = h + update
        if self.variant == "B":
            return h + self.mem_mlp(self.mem_mlp_norm(h)), aux, info
        return h + self.mlp(self.post_attention_layernorm(h)), aux, info


class MoCModel(nn.Module):
    """A decoder-only LM with Mixture-of-Chapters memory layers (or none: the dense baseline)."""

    def __init__(self, cfg: RunConfig) -> None:
        super().__init__()
        self.config = cfg
        m, mem = cfg.model, cfg.memory
        self.memory_layers = cfg.memory_layers
        self.embed_tokens = nn.Embedding(m.vocab_size, m.d_model)
        self.layers = nn.ModuleList(Block(cfg, i, i in self.memory_layers) for i in range(m.n_layers))
        self.norm = RMSNorm(m.d_model, m.norm_eps)
        self.lm_head = None if m.tie_embeddings else nn.Linear(m.d_model, m.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(m.head_dim, m.rope_theta)
        # Which bank each memory layer reads.
        owner = bank_owners(mem, len(self.memory_layers))
        self.bank_of_layer = dict(zip(self.memory_layers, owner, strict=True))
        self.banks = build_banks(mem, m.d_model, len(set(owner)))
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        m = self.config.model
        std = m.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                if name.endswith("self_attn.o_proj") and m.attn_out_init_std is not None:
                    nn.init.normal_(module.weight, std=m.attn_out_init_std)
                if name.endswith("down_proj") and m.mlp_down_init_std is not None:
                    nn.init.normal_(module.weight, std=m.mlp_down_init_std)
                if name.endswith("memory.o_proj"):
                    nn.init.zeros_(module.weight)  # a new memory layer starts as the identity
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: MoCCache | Any = None,
        use_cache: bool = False,
        sequence_route_len: int | torch.Tensor | None = None,
        return_logits: bool = True,
        shift_labels: bool = True,
        loss_reduction: str = "mean",
    ) -> MoCOutput:
        """input_ids: (B, L); attention_mask: (B, L_past + L), 1 = real token, 0 = padding.

        ``labels`` follow Hugging Face: aligned with input_ids, shifted inside, -100 ignored
        (``shift_labels=False``: already shifted, ``labels[:, t]`` is the target of position t: the
        ``targets`` of ``moc.data``'s packed windows). ``loss_reduction``: "mean" over targets or "sum".
        ``return_logits=False`` with labels: the loss is computed ``model.loss_chunk_size`` tokens at a
        time (:mod:`moc.model.loss`) and no (B, L, V) logits are made; ``logits`` is then None.
        ``position_ids`` that restart inside a row (packed documents, Hugging Face's
        ``DataCollatorWithFlattening`` convention) mark document boundaries: self-attention is
        block-diagonal causal (see :func:`moc.model.layers.document_ids`).
        ``past_key_values``: a MoCCache, or any Hugging Face-style cache (``update``/``get_seq_length``)
        given a ``memory`` dict attribute for the memory layers' decode state.
        ``sequence_route_len``: with sequence routing, route on positions below it only (a prompt);
        an int, or a (B, 1) tensor of per-row lengths.
        """
        self._check_inputs(input_ids, attention_mask, labels)
        B, L = input_ids.shape
        cache = past_key_values if past_key_values is not None else (MoCCache() if use_cache else None)
        past = cache.get_seq_length() if cache is not None else 0
        if attention_mask is None:
            full_mask = torch.ones(B, past + L, dtype=torch.bool, device=input_ids.device)
        else:
            full_mask = attention_mask.bool()
        valid = full_mask[:, past:]
        packed = position_ids is not None and past == 0 and L > 1  # documents may restart positions
        if position_ids is None:
            position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        max_len = self.config.model.max_seq_len
        if torch.compiler.is_compiling():  # no host sync in a compiled graph: checked on the device
            torch._assert_async(
                (position_ids < max_len).all(),
                f"a position is beyond model.max_seq_len={max_len}; "
                "shorten the input or raise model.max_seq_len",
            )
        elif int(position_ids.max()) >= max_len:
            raise ValueError(
                f"position {int(position_ids.max())} is beyond model.max_seq_len="
                f"{self.config.model.max_seq_len}; shorten the input or raise model.max_seq_len"
            )
        attn_mask = self._attention_mask(
            input_ids, attention_mask, full_mask, position_ids, valid, past, packed, cache
        )
        # Every memory layer reads the same documents and query tiles: laid out once, here. While
        # decoding (past > 0) the layers route from their cached state and read no tiles.
        context = RoutingContext.build(
            self.config.memory,
            position_ids,
            valid,
            one_document=not packed,
            sequence_route_len=sequence_route_len,
            tiles=bool(self.memory_layers) and past == 0,
        )
        h = self.embed_tokens(input_ids)
        rope = self.rotary(position_ids)
        aux = h.new_zeros((), dtype=torch.float32)
        routing: list[RoutingInfo] = []
        for block in self.layers:
            bank = self.banks[self.bank_of_layer[block.layer_idx]] if block.memory is not None else None
            args = (h, rope, attn_mask, context, bank, cache)
            if self.gradient_checkpointing and self.training and cache is None:
                h, layer_aux, info = checkpoint(block, *args, use_reentrant=False)
            else:
                h, layer_aux, info = block(*args)
            aux = aux + layer_aux
            if info is not None:
                routing.append(info)
        if routing and self.config.memory.aux_loss_reduction == "mean":
            aux = aux / len(routing)  # the paper's code averages the router losses over memory layers
        h = self.norm(h)
        logits = F.linear(h, self.output_weight) if return_logits or labels is None else None
        loss = None if labels is None else self._loss(h, logits, labels, shift_labels, loss_reduction)
        return MoCOutput(logits=logits, loss=loss, aux_loss=aux, routing=routing, past_key_values=cache)

    def _attention_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        full_mask: torch.Tensor,
        position_ids: torch.Tensor,
        valid: torch.Tensor,
        past: int,
        packed: bool,
        cache: Any,
    ) -> Any:
        """Self-attention's mask: None (plain causal), a (B, 1, L, past + L) boolean mask for padding or a
        cache, or a per-document mask for packed rows (FlexAttention's block mask on CUDA)."""
        L = input_ids.shape[1]
        attn_mask = None
        if attention_mask is not None or past > 0:
            # key j is visible to query i if it is a real token at or before i; a query always sees
            # itself so that padding rows stay finite (their outputs are never used).
            qi = torch.arange(L, device=input_ids.device)[:, None] + past
            kj = torch.arange(past + L, device=input_ids.device)[None, :]
            attn_mask = (kj <= qi)[None, None] & full_mask[:, None, None, :]
            attn_mask = attn_mask | (kj == qi)[None, None]
        if packed:
            doc = document_ids(position_ids, valid)
            if cache is not None and not torch.compiler.is_compiling() and int(doc.max()) > 1:
                # The cache keeps one running routing state and one causal KV history per row, so
                # tokens decoded after a packed prompt would read the other documents' context.
                raise ValueError(
                    "position_ids restart inside a row (packed documents) while a KV cache is used; "
                    "decode each document in its own row (left-pad them) instead of packing them"
                )
            # Several documents in a row (a host sync when eager; compiled code always masks).
            if torch.compiler.is_compiling() or int(doc.max()) > 1:
                backend = self.config.model.attention_backend
                if backend == "flex" or (backend == "auto" and input_ids.device.type == "cuda"):
                    attn_mask = flex_document_mask(doc, valid)
                else:
                    attn_mask = dense_document_mask(doc, valid)
        return attn_mask

    def _loss(
        self,
        h: torch.Tensor,
        logits: torch.Tensor | None,
        labels: torch.Tensor,
        shift_labels: bool,
        loss_reduction: str,
    ) -> torch.Tensor:
        """The LM loss from the final hidden states h (B, L, d), from ``logits`` when they were made, else
        in chunks of ``model.loss_chunk_size`` tokens without (B, L, V) logits."""
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        if shift_labels:
            h, labels = h[:, :-1], labels[:, 1:]
        if logits is not None:  # the caller wants the logits anyway: score them in one shot
            scored = logits[:, :-1] if shift_labels else logits
            flat = scored.flatten(0, 1).float()
            loss = F.cross_entropy(flat, labels.flatten(), ignore_index=-100, reduction=loss_reduction)
        else:
            loss = chunked_linear_cross_entropy(
                h.flatten(0, 1),
                self.output_weight,
                labels.flatten(),
                self.config.model.loss_chunk_size,
                loss_reduction,  # type: ignore[arg-type]
            )
        return loss

    def _check_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor | None
    ) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and torch.compiler.is_compiling():  # no host sync in a compiled graph
            vocab = self.config.model.vocab_size
            torch._assert_async(
                ((input_ids >= 0) & (input_ids < vocab)).all(),
                f"a token id is outside the vocabulary [0, {vocab}); "
                "the tokenizer and model.vocab_size disagree",
            )
        elif input_ids.numel():
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= self.config.model.vocab_size:
                bad, vocab = hi if hi >= 0 else lo, self.config.model.vocab_size
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {vocab}); "
                    "the tokenizer and model.vocab_size disagree"
                )
        if attention_mask is not None and attention_mask.shape[0] != input_ids.shape[0]:
            raise ValueError(
                f"attention_mask batch {attention_mask.shape[0]} != input_ids batch {input_ids.shape[0]}"
            )
        if labels is not None and labels.shape != input_ids.shape:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts by part: total, backbone, bank, memory_layers (shared tensors once)."""
        counts = {"backbone": 0, "bank": 0, "memory": 0}
        for name, p in self.named_parameters():  # named_parameters() de-duplicates shared tensors
            counts[param_category(name)] += p.numel()
        return {
            "total": sum(counts.values()),
            "backbone": counts["backbone"],
            "bank": counts["bank"],
            "memory_layers": counts["memory"],
        }
