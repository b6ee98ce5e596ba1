"""Mixture-of-Chapters memory as a parameter-efficient adapter for a pretrained Hugging Face causal LM.

    base = AutoModelForCausalLM.from_pretrained(...)
    adapter = add_memory(base, layers=[4, 8], n_tokens=16384, n_chapters=256, top_k=8)
    # train: only the adapter's bank, routers and memory attention have requires_grad
    out = base(input_ids, labels=labels); loss = out.loss + adapter.aux_loss
    adapter.save("adapter_dir");  MemoryAdapter.load(base, "adapter_dir")

After each chosen decoder layer, ``h += MemoryLayer(h)`` — the same memory layer as a MoC block, with
its output projection starting at zero, so the adapted model starts out exactly as the base model.
Works together with LoRA (``peft``): apply LoRA first, then ``add_memory``. Routing positions come
from the 2-D attention mask, so left padding and ``generate()`` with a KV cache work as in MoC models.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from moc.config import ConfigError, MemoryConfig, ModelConfig, RunConfig
from moc.configio import build
from moc.model.bank import bank_owners, build_banks
from moc.model.memory import MemoryLayer, MemoryState
from moc.model.routing_layout import RoutingContext

ADAPTER_CONFIG = "moc_adapter.json"
ADAPTER_WEIGHTS = "moc_adapter.safetensors"


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder stack (e.g. LlamaModel) of a causal LM, also under a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(inner, "get_decoder"):
        decoder = inner.get_decoder()
        if hasattr(decoder, "layers"):
            return decoder
    raise ValueError(
        f"{type(inner).__name__} does not expose its decoder layers (get_decoder().layers); "
        "memory adapters support Llama-style causal LMs (Llama, Mistral, Qwen2, SmolLM, ...)"
    )


class MemoryAdapter(nn.Module):
    """Banks and memory layers attached to a host model's decoder layers by forward hooks."""

    def __init__(self, d_model: int, n_layers: int, memory: MemoryConfig, norm_eps: float = 1e-5) -> None:
        super().__init__()
        layers = memory.resolved_layers(n_layers)
        if not layers or any(not 0 <= i < n_layers for i in layers):
            raise ConfigError(f"memory.layers={memory.layers!r} must select layers in 0..{n_layers - 1}")
        self.config, self.d_model, self.n_layers, self.norm_eps = memory, d_model, n_layers, norm_eps
        self.layer_ids = layers
        self.memory = nn.ModuleDict({str(i): MemoryLayer(d_model, norm_eps, memory, i) for i in layers})
        owner = bank_owners(memory, len(layers))
        self.bank_of_layer = dict(zip(layers, owner, strict=True))
        self.banks = build_banks(memory, d_model, len(set(owner)))
        for layer in self.memory.values():
            nn.init.normal_(layer.q_proj.weight, std=0.02)
            nn.init.normal_(layer.k_proj.weight, std=0.02)
            nn.init.normal_(layer.v_proj.weight, std=0.02)
            nn.init.zeros_(layer.o_proj.weight)  # the adapted model starts as the base model
            nn.init.normal_(layer.router.proj.weight, std=0.02)
            nn.init.zeros_(layer.router.proj.bias)
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.routing: list = []
        self._handles: list = []
        self._call: dict[str, Any] = {}
        self._states: dict[int, MemoryState] = {}

    # -- attaching ----------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> MemoryAdapter:
        decoder = _decoder(model)
        if len(decoder.layers) != self.n_layers:
            raise ValueError(
                f"adapter was built for {self.n_layers} layers, the model has {len(decoder.layers)}"
            )
        self.detach()
        self._handles.append(decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True))
        for i in self.layer_ids:
            self._handles.append(decoder.layers[i].register_forward_hook(self._after_layer(i)))
        model.moc_memory_adapter = self  # registers the adapter's parameters with the host model
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _before_decoder(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        B, L = ids.shape if ids is not None else embeds.shape[:2]
        device = ids.device if ids is not None else embeds.device
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        past = cache.get_seq_length() if cache is not None else 0
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2:
            mask = torch.ones(B, past + L, dtype=torch.long, device=device)
        full = mask.bool()
        valid, positions = full[:, -L:], (full.long().cumsum(-1) - 1).clamp(min=0)[:, -L:]
        # The documents and query tiles every memory layer of this forward reads, laid out once;
        # decoding (past > 0) routes from each layer's cached state and reads no tiles.
        routing = RoutingContext.build(self.config, positions, valid, tiles=past == 0)
        self._call = {"routing": routing, "decoding": past > 0}
        if past == 0:
            self._states = {}
        self.aux_loss = torch.zeros((), device=device)
        self.routing = []

    def _after_layer(self, i: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> Any:
            h = output[0] if isinstance(output, tuple) else output
            call = self._call
            if not call:
                raise RuntimeError("memory adapter hook ran without its decoder pre-hook; call attach(model)")
            state = self._states.setdefault(i, MemoryState()) if not self.training else None
            bank = self.banks[self.bank_of_layer[i]]
            update, aux, info = self.memory[str(i)](h, bank, call["routing"], state)
            self.aux_loss = self.aux_loss + aux
            if info is not None:
                self.routing.append(info)
            h = h + update.to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook

    # -- saving -------------------------------------------------------------------------------------

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "norm_eps": self.norm_eps,
            "memory": dataclasses.asdict(self.config),
        }
        tmp = out / (ADAPTER_CONFIG + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(out / ADAPTER_CONFIG)
        save_model(self, str(out / (ADAPTER_WEIGHTS + ".tmp")))
        (out / (ADAPTER_WEIGHTS + ".tmp")).replace(out / ADAPTER_WEIGHTS)
        return out

    @classmethod
    def load(cls, model: nn.Module, adapter_dir: str | Path) -> MemoryAdapter:
        path = Path(adapter_dir)
        if not (path / ADAPTER_CONFIG).exists():
            raise FileNotFoundError(f"{path} has no {ADAPTER_CONFIG}: not a saved memory adapter")
        meta = json.loads((path / ADAPTER_CONFIG).read_text())
        memory = build(MemoryConfig, meta["memory"], "memory")
        adapter = cls(meta["d_model"], meta["n_layers"], memory, meta["norm_eps"])
        load_model(adapter, str(path / ADAPTER_WEIGHTS))
        ref = next(model.parameters())
        return adapter.to(ref.device).attach(model)


def add_memory(
    model: nn.Module,
    layers: list[int] | str,
    *,
    freeze_base: bool = True,
    **memory: Any,
) -> MemoryAdapter:
    """Attach MoC memory after the given decoder layers of a Hugging Face causal LM.

    ``memory`` takes MemoryConfig fields (n_tokens, n_chapters, top_k, routing, ...). With
    ``freeze_base`` every host parameter except LoRA weights (names containing ``lora_``) is frozen.
    """
    decoder = _decoder(model)
    hf = getattr(model, "config", None)
    d_model = getattr(hf, "hidden_size", None)
    if d_model is None:
        raise ValueError("the model config has no hidden_size; pass a Hugging Face causal LM")
    defaults = {
        "n_heads": getattr(hf, "num_attention_heads", 8),
        "n_kv_heads": getattr(hf, "num_attention_heads", 8),
    }
    cfg = build(MemoryConfig, {**defaults, **memory, "enabled": True, "layers": layers}, "memory")
    _check_memory(cfg, d_model, len(decoder.layers))
    if freeze_base:
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
    eps = getattr(hf, "rms_norm_eps", 1e-5)
    ref = next(model.parameters())
    adapter = MemoryAdapter(d_model, len(decoder.layers), cfg, eps).to(device=ref.device)
    return adapter.attach(model)


def _check_memory(cfg: MemoryConfig, d_model: int, n_layers: int) -> None:
    """Run the MoC validator (chapters, top-k, heads, layer range) against the host's shape."""
    backbone = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=1, n_kv_heads=1, d_ff=1, vocab_size=1)
    RunConfig(model=backbone, memory=cfg)
