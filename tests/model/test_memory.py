"""Memory bank and memory read: gradients, no batch-expanded bank, bank variants, sharing."""

from __future__ import annotations

import pytest
import torch

import moc


def test_only_selected_chapters_get_gradient(make_model) -> None:
    model = make_model("memory.routing=sequence", "memory.layers=[1]")
    ids = torch.randint(0, 256, (2, 32))
    out = model(ids, labels=ids)
    out.loss.backward()
    chosen = set(out.routing[0].indices.flatten().tolist())
    grad = model.banks[0].weight.grad.view(32, 16, -1)
    nonzero = {c for c in range(32) if grad[c].abs().sum() > 0}
    assert nonzero == chosen
    assert 0 in chosen  # the shared chapter


def test_router_receives_gradient(make_model) -> None:
    model = make_model()
    ids = torch.randint(0, 256, (2, 48))
    model(ids, labels=ids).loss.backward()
    for block in model.layers:
        if block.memory is not None:
            assert block.memory.router.proj.weight.grad.abs().sum() > 0
            assert block.memory.router.proj.bias.grad.abs().sum() > 0


def test_router_learns_through_zero_initialised_output_after_one_step(make_model) -> None:
    # W_O starts at zero (the memory layer is the identity); the router only gets gradient once
    # W_O has moved, exactly as in the paper's design.
    model = make_model(live_memory=False)
    ids = torch.randint(0, 256, (2, 48))
    model(ids, labels=ids).loss.backward()
    router = model.layers[1].memory.router.proj
    assert router.weight.grad.abs().sum() == 0
    assert model.layers[1].memory.o_proj.weight.grad.abs().sum() > 0


def test_bank_gradient_is_never_batch_expanded() -> None:
    # A large bank: any B x N_m x d intermediate would be 8x the bank itself.
    cfg = moc.load_config(
        "tiny-moc",
        ["memory.n_tokens=65536", "memory.n_chapters=1024", "memory.top_k=8", "memory.routing=causal"],
    )
    model = moc.build_model(cfg)
    bank_numel = model.banks[0].weight.numel()
    ids = torch.randint(0, 256, (8, 64))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    assert max(saved) < bank_numel  # nothing bank-sized (let alone batch x bank) is kept for backward
    assert model.banks[0].weight.grad.shape == model.banks[0].weight.shape


@pytest.mark.parametrize("kind", ["full", "factorized", "reduced"])
def test_bank_variants_train(make_model, kind: str) -> None:
    model = make_model(f"memory.bank_type={kind}", "memory.bank_rank=8", "memory.bank_dim=32")
    ids = torch.randint(0, 256, (2, 32))
    out = model(ids, labels=ids)
    (out.loss + out.aux_loss).backward()
    bank = model.banks[0]
    grads = [p.grad for p in bank.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    if kind == "reduced":
        assert bank.weight.shape == (512, 32)
        assert model.layers[1].memory.q_proj.weight.shape == (32, 64)


@pytest.mark.parametrize(("sharing", "n_banks"), [("shared", 1), ("per_layer", 3), ("grouped", 2)])
def test_bank_sharing(sharing: str, n_banks: int) -> None:
    cfg = moc.load_config(
        "tiny-moc",
        [
            f"memory.bank_sharing={sharing}",
            "memory.bank_group_size=2",
            "memory.layers=all",
            "model.n_layers=3",
        ],
    )
    model = moc.build_model(cfg)
    assert len(model.banks) == n_banks
    assert sorted(set(model.bank_of_layer.values())) == list(range(n_banks))


@pytest.mark.parametrize("variant", ["A", "B"])
def test_block_variants(make_model, variant: str) -> None:
    model = make_model(f"memory.block_variant={variant}")
    has_second_mlp = hasattr(model.layers[1], "mem_mlp")
    assert has_second_mlp == (variant == "B")
    assert not hasattr(model.layers[0], "mem_mlp")
    ids = torch.randint(0, 256, (2, 16))
    assert torch.isfinite(model(ids, labels=ids).loss)
