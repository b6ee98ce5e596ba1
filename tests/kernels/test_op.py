"""The routed read as a registered op (moc.kernels.op): its schema, fake implementation and autograd
(torch.library.opcheck), its values against the independent read, and a memory block that
torch.compile takes whole."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from moc.kernels.op import read, routed_read_op
from moc.kernels.routed_read import reads_by_chapter
from moc.model.memory import MemoryLayer
from moc.model.routing_layout import RoutingContext

sys.path.insert(0, str(Path(__file__).parent))
from naive_read import naive_grads  # noqa: E402

# (tiles, queries per tile, KV heads): 5 tiles run the PyTorch loops tile-major; 700 tiles share the 6
# chapters enough to run them chapter-major, with grouped heads or (token routing) one query per head
TILES = {"tile-major": (5, 2, 2), "chapter-major": (700, 2, 2), "chapter-major-token": (700, 1, 4)}


def _problem(weighting: str, seed: int = 0, shape: tuple[int, int, int] = (5, 2, 2)) -> tuple:
    g = torch.Generator().manual_seed(seed)
    (D, Qt, kvh), H, hd, U, T, n = shape, 4, 8, 6, 3, 3
    q = torch.randn(D, Qt, H, hd, dtype=torch.float64, generator=g)
    k, v = (torch.randn(U, T, kvh, hd, dtype=torch.float64, generator=g) for _ in range(2))
    idx = torch.stack([torch.randperm(U, generator=g)[:n] for _ in range(D)])
    w = torch.rand(D, n, dtype=torch.float64, generator=g).softmax(-1)
    return q, k, v, idx, w


@pytest.mark.parametrize("order", sorted(TILES))
@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
def test_the_op_equals_the_naive_read_with_gradients(weighting: str, order: str) -> None:
    q, k, v, idx, w = _problem(weighting, shape=TILES[order])
    assert reads_by_chapter(q.shape, k.shape, idx.shape[1]) == order.startswith("chapter-major")
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = read(leaves[0], leaves[1], leaves[2], idx, leaves[3], weighting)
    do = torch.randn_like(out)
    got = torch.autograd.grad((out * do).sum(), leaves)
    want = naive_grads(do, q, k, v, idx, w, weighting)
    torch.testing.assert_close(out.detach(), want[0], atol=1e-10, rtol=1e-10)
    for name, a, b in zip(("dq", "dk", "dv", "dw"), got, want[1:], strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("order", sorted(TILES))
def test_opcheck_schema_fake_and_autograd_registration(order: str) -> None:
    q, k, v, idx, w = _problem("kv", shape=TILES[order])
    args = (
        q.requires_grad_(),
        k.requires_grad_(),
        v.requires_grad_(),
        idx,
        w.requires_grad_(),
        "kv",
        0.35,
        "torch",
    )
    torch.library.opcheck(routed_read_op, args)


@pytest.mark.parametrize("kernel", ["torch", "auto"])
def test_the_backward_gives_the_layout_its_fake_promises_for_tokens_last_keys(kernel: str) -> None:
    """k, v with each chapter's tokens adjacent (as moc.model.memory projects them on the CPU): whichever
    implementation runs, the PyTorch loops (contiguous gradients) or the C kernels (in k's layout), dk
    and dv come back laid out as the fake says, or a compiled graph's stride check fails."""
    from moc.kernels.op import routed_read_backward_op

    q, k, v, idx, w = _problem("kv", shape=TILES["chapter-major-token"])
    k, v = (x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for x in (k, v))
    out, lse = routed_read_op(q, k, v, idx, w, "kv", 0.35, kernel)
    args = (torch.randn_like(out), q, out, lse, k, v, idx, w, "kv", 0.35, kernel)
    torch.library.opcheck(routed_read_backward_op, args, test_utils=("test_schema", "test_faketensor"))
    _, dk, dv, _ = routed_read_backward_op(*args)
    assert dk.stride() == k.stride() and dv.stride() == v.stride()


def test_bad_arguments_are_named() -> None:
    q, k, v, idx, w = _problem("kv")
    with pytest.raises(ValueError, match="chapter weighting 'k'"):
        read(q, k, v, idx, w, "k")
    with pytest.raises(ValueError, match="must both be"):
        read(q, k, v, idx[:, :2], w, "kv")


@pytest.mark.parametrize("routing", ["token", "causal", "sequence"])
def test_a_memory_block_compiles_whole(make_model, routing: str) -> None:
    """One graph, no break, for a memory block (rows that are one document each: the static tile bound)."""
    model = make_model(f"memory.routing={routing}")
    block = next(b for b in model.layers if b.memory is not None)
    bank = model.banks[model.bank_of_layer[block.layer_idx]]
    B, L = 2, 12
    h = torch.randn(B, L, model.embed_tokens.weight.shape[1])
    pos = torch.arange(L).expand(B, L)
    routing = RoutingContext.build(
        model.config.memory, pos, torch.ones(B, L, dtype=torch.bool), one_document=True
    )
    args = (h, model.rotary(pos), None, routing, bank, None)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(*args)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    if routing == "token":  # compiled (aot_eager: the traced graph, no C compiler needed) == eager
        compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
        eager_h, got_h = h.clone().requires_grad_(), h.clone().requires_grad_()
        want, got = block(eager_h, *args[1:])[0], compiled(got_h, *args[1:])[0]
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(
            torch.autograd.grad(got.sum(), got_h)[0], torch.autograd.grad(want.sum(), eager_h)[0]
        )
        block.memory.router.disabled[3] = True  # changed after compiling: the compiled graph says so
        with pytest.raises(RuntimeError, match="disabled or re-enabled after this model was compiled"):
            compiled(h, *args[1:])
    torch._dynamo.reset()


def test_a_token_routed_model_compiles_whole_and_still_checks_its_input(make_model) -> None:
    model = make_model("memory.routing=token")
    ids = torch.randint(0, 256, (2, 12))
    mask = torch.ones_like(ids)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids, attention_mask=mask)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(
        compiled(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits
    )
    with pytest.raises(RuntimeError, match="outside the vocabulary"):  # checked on the device, no sync
        compiled(ids + 1000, attention_mask=mask)
    torch._dynamo.reset()


def test_eager_cpu_reads_keep_small_kv_and_recompute_large_kv(
    make_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager CPU reads by the C kernels keep K/V for backward (the op) up to EAGER_KEPT_KV_ELEMENTS and
    recompute them above it (the autograd Function: saved memory independent of the chapters read),
    with the same loss and gradients, bit for bit."""
    import moc.kernels.op
    from moc.model import read_backend

    calls: list[int] = []
    real_read = moc.kernels.op.read

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(moc.kernels.op, "read", counted)
    model = make_model("memory.routing=token")
    layers = [m for m in model.modules() if isinstance(m, MemoryLayer)]
    assert layers and all(
        read_backend.cpu_kernels_run(torch.float32, m.head_dim, m.cfg.n_tokens // m.cfg.n_chapters, "auto")
        for m in layers
    ), "the C kernels must serve this model's reads"
    ids = torch.randint(0, 256, (2, 12))
    results = []
    for limit in (read_backend.EAGER_KEPT_KV_ELEMENTS, 0):
        monkeypatch.setattr(read_backend, "EAGER_KEPT_KV_ELEMENTS", limit)
        calls.clear()
        model.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        assert len(calls) == (len(layers) if limit else 0), (limit, len(calls))
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_kept, grads_kept), (loss_recomputed, grads_recomputed) = results
    assert torch.equal(loss_kept, loss_recomputed)
    assert len(grads_kept) == len(grads_recomputed)
    for a, b in zip(grads_kept, grads_recomputed, strict=True):
        assert torch.equal(a, b)
