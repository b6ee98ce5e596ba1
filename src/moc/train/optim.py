"""AdamW with one parameter group per (category, decay) pair: backbone, memory layers and bank.

Categories come from :func:`moc.model.param_groups.param_category`. Each category has its own learning rate
and weight decay; norms, biases and embeddings get no weight decay, whatever their category, unless
``train.weight_decay_all`` (the paper's runs: decay on every parameter).
``train.freeze_bank`` turns the bank off for real: ``requires_grad=False`` and no optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moc.config import TrainConfig
from moc.errors import warn_once
from moc.model.param_groups import param_category

CATEGORIES = ("backbone", "memory", "bank")


@dataclass(frozen=True)
class GroupSpec:
    """Base learning rate and weight decay of one parameter category."""

    lr: float
    weight_decay: float


def group_specs(cfg: TrainConfig) -> dict[str, GroupSpec]:
    """The base LR and weight decay of each category (``None`` fields fall back to the backbone's)."""
    return {
        "backbone": GroupSpec(cfg.lr, cfg.weight_decay),
        "memory": GroupSpec(
            cfg.lr if cfg.memory_lr is None else cfg.memory_lr,
            cfg.weight_decay if cfg.memory_weight_decay is None else cfg.memory_weight_decay,
        ),
        "bank": GroupSpec(cfg.lr if cfg.bank_lr is None else cfg.bank_lr, cfg.bank_weight_decay),
    }


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay: 0/1-D tensors (norm scales, biases) and embeddings."""
    names = {n for n, p in model.named_parameters() if p.ndim < 2}
    for mod_name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding):
            names.update(f"{mod_name}.{n}" if mod_name else n for n, _ in mod.named_parameters())
    # Embedding matrices that are plain Parameters (not nn.Embedding) still carry the usual name.
    names.update(n for n, _ in model.named_parameters() if "embed_tokens" in n.split("."))
    return names


def apply_freezing(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Freeze what the config asks to freeze; returns the frozen parameter names."""
    frozen = []
    if cfg.freeze_bank:
        for name, p in model.named_parameters():
            if param_category(name) == "bank":
                p.requires_grad_(False)
                frozen.append(name)
    return frozen


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Optimizer parameter groups. Each group carries ``name``, ``category`` and ``base_lr`` keys.

    Frozen parameters (``requires_grad=False``) are left out, so they get no optimizer state.
    """
    specs = group_specs(cfg)
    exempt = set() if cfg.weight_decay_all else no_decay_names(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():  # shared parameters appear once
        if not p.requires_grad:
            continue
        buckets.setdefault((param_category(name), name not in exempt), []).append(p)
    groups = []
    for cat in CATEGORIES:
        for decay in (True, False):
            params = buckets.get((cat, decay))
            if not params:
                continue
            spec = specs[cat]
            groups.append(
                {
                    "params": params,
                    "name": cat if decay else f"{cat}_no_decay",
                    "category": cat,
                    "lr": spec.lr,
                    "base_lr": spec.lr,
                    "weight_decay": spec.weight_decay if decay else 0.0,
                }
            )
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (call after :func:`apply_freezing` and any parallel wrapping)."""
    groups = param_groups(model, cfg)
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen")
    kwargs = {"betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if cfg.fused_optimizer:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except RuntimeError as e:  # PyTorch has no fused kernel for some parameter's device or dtype
            warn_once(
                f"AdamW: no fused kernel here ({e}); using PyTorch's default implementation "
                "(set train.fused_optimizer=false to silence this)"
            )
    return torch.optim.AdamW(groups, **kwargs)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by optimizer state tensors (Adam moments, step counters) on this process."""
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                t = v.to_local() if hasattr(v, "to_local") else v
                total += t.numel() * t.element_size()
    return total


def group_lrs(opt: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate per category (decay and no-decay groups share it)."""
    return {g["category"]: g["lr"] for g in opt.param_groups}
