"""Process groups, DDP / FSDP2 wrapping, activation checkpointing and full (unsharded) state dicts.

The training loop stays parallelism-agnostic: it calls :func:`wrap_model` once, uses
:func:`grad_sync` around micro-batches, and saves/loads through the ``full_*`` helpers, which always
produce and accept full state dicts keyed by parameter name, so a checkpoint written by N processes
loads on M processes (DDP or FSDP) and vice versa.

Launch with ``torchrun --nproc_per_node N -m moc pretrain CONFIG``; ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK`` come from torchrun. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group and must destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return DistInfo(device=device)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place sum over ranks (identity for one process)."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks (``model.layers``): the unit of activation checkpointing and sharding."""
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError("activation checkpointing / FSDP need the model to expose its blocks as model.layers")
    return list(layers)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of storing them.

    Uses the composable (in-place) API so parameter names do not change and FSDP can shard on top.
    """
    from torch.distributed._composable import checkpoint

    for block in blocks(model):
        checkpoint(block)


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each block in place: parameter names stay the same, the top-level input checks
    stay eager, and it composes with activation checkpointing, DDP and FSDP (compile before wrapping).

    Every block shares one code object, and dynamo keeps a graph per variant of it: memory and plain
    blocks, training and evaluation, new input shapes (the probes'), and every model compiled in the
    process (an experiment worker trains, evaluates and ablates several). Past torch's limit of graphs
    per code object (8) the later variants ran eagerly with a dynamo warning (seen in `moc-lab run demo`),
    so each call raises the limit by 4 graphs per block."""
    import torch._dynamo.config as dynamo_config

    compiled = list(blocks(model))
    dynamo_config.recompile_limit += 4 * len(compiled)  # train, evaluation, probes' shapes, ablations
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * dynamo_config.recompile_limit
    )
    for block in compiled:
        block.compile()


def wrap_model(model: nn.Module, parallel: str, info: DistInfo) -> nn.Module:
    """The module to call for forward/backward. With FSDP, ``model`` itself is sharded in place (per
    block, then the root, so the shared bank and embeddings live in the root group); with DDP the
    returned wrapper shares ``model``'s parameters. One process: ``model`` unchanged."""
    if not info.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in blocks(model):
            fully_shard(block)
        fully_shard(model)
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    raise ValueError(f"train.parallel: unknown mode {parallel!r}; use ddp or fsdp")


@contextlib.contextmanager
def grad_sync(wrapped: nn.Module, model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if sync:
        yield
        return
    if hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


# torch.distributed.checkpoint takes ~2 s to import, so it is imported on first use.


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full, unsharded weights on CPU (complete on rank 0; other ranks may get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The full optimizer state keyed by parameter name (complete on rank 0)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(model, opt, options=options)


def load_full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Every rank passes the same full dict read from the checkpoint; each keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))
