"""Memory bank and memory read: gradients, no batch-expanded bank, bank variants, sharing."""

from __future__ import annotations

import pytest
import torch

import moc
from memory_helpers import make_memory_matter
from moc.model.routing_layout import RoutingContext


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
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    ids = torch.randint(0, 256, (8, 64))
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        # The read saves the bank parameter itself (to recompute chapters in backward): no new memory.
        if t.untyped_storage().data_ptr() not in params:
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


# -- the routed read: weighting modes, router input, documents, decoding ------------------------------


@pytest.mark.parametrize("mode", ["causal", "token", "sequence"])
@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize("router_input", ["memory_norm", "block_input"])
def test_decoding_matches_the_full_forward_for_every_weighting(
    make_model, mode: str, weighting: str, router_input: str
) -> None:
    """The decode path (cached K/V, logit bias, running sums of the router input) equals the full read."""
    from moc.model import MoCCache

    model = make_model(
        f"memory.routing={mode}",
        f"memory.chapter_weighting={weighting}",
        f"memory.router_input={router_input}",
        "memory.causal_chunk_size=4",
    ).eval()
    for name, p in model.named_parameters():
        if "router.proj" in name:
            torch.nn.init.normal_(p, std=0.5)  # decisive routing, so a wrong summary changes chapters
    ids = torch.randint(0, 256, (2, 15))
    mask = torch.ones(2, 15, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        # sequence routing decodes with the prompt's decision: compare with routing on the prompt only
        # (9 tokens: 6 real ones in row 0, 9 in row 1)
        route_len = torch.tensor([[6], [9]]) if mode == "sequence" else None
        full = model(ids, attention_mask=mask, sequence_route_len=route_len).logits
        cache = MoCCache()
        steps = [model(ids[:, :9], attention_mask=mask[:, :9], past_key_values=cache).logits]
        for t in range(9, 15):
            step = model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], past_key_values=cache)
            steps.append(step.logits)
    valid = mask.bool()
    torch.testing.assert_close(full[valid], torch.cat(steps, 1)[valid], atol=1e-5, rtol=1e-5)


def test_block_input_routing_matches_the_reference() -> None:
    from .reference import reference_forward

    cfg = moc.load_config("tiny-moc", ["memory.router_input=block_input", "memory.routing=causal"])
    model = make_memory_matter(moc.build_model(cfg), std=0.3, router_std=0.5)
    ids = torch.randint(0, 256, (2, 40))
    logits = model(ids).logits
    torch.testing.assert_close(logits, reference_forward(model, ids)[0], atol=1e-5, rtol=1e-5)
    # and it is a different model from routing on RMSNorm(h): the switch is live
    model.config.memory.router_input = "memory_norm"
    assert not torch.allclose(model(ids).logits, logits, atol=1e-4)


@pytest.mark.parametrize("mode", ["causal", "sequence", "token"])
def test_many_short_packed_documents_match_the_reference(mode: str) -> None:
    """More tiles than ceil(L / S) (documents shorter than a chunk, restarts mid-chunk, a position that
    restarts at a non-zero value, padding), at the memory layer, with gradients."""
    from .reference import reference_memory_layer

    cfg = moc.load_config("tiny-moc", [f"memory.routing={mode}", "memory.causal_chunk_size=3"])
    model = moc.build_model(cfg)
    layer, bank = model.layers[1].memory, model.banks[0]
    make_memory_matter(layer, std=0.3, router_std=0.5)  # a random bias too: chunk 0 routes from it alone
    pos = torch.tensor(
        [[0, 1, 0, 1, 2, 3, 4, 0, 0, 1, 5, 6, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 0, 0, 0]]
    )
    valid = torch.ones_like(pos, dtype=torch.bool)
    valid[1, -3:] = False
    h = torch.randn(2, 14, 64, requires_grad=True)
    update, aux, info = layer(h, bank, RoutingContext.build(layer.cfg, pos, valid))
    ref, ref_aux = reference_memory_layer(layer, bank, h, pos, valid)
    torch.testing.assert_close(update[valid], ref[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, ref_aux, atol=1e-6, rtol=1e-5)
    probe = torch.randn_like(ref)
    (g,) = torch.autograd.grad((update * probe)[valid].sum(), h)
    (g_ref,) = torch.autograd.grad((ref * probe)[valid].sum(), h)
    torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-4)
    if mode == "sequence":  # one decision per document: row 0 holds 5 (0-1, 0-4, 0, 0-1-5-6, 2-3), row 1 two
        assert info.indices.shape[:2] == (2, 5) and info.valid.sum().item() == 5 + 2


def test_distinct_chapters_have_a_static_size_and_map_back() -> None:
    from moc.model.memory import MemoryLayer

    idx = torch.tensor([[0, 7, 3], [0, 3, 9]])
    chapters, rows = MemoryLayer.distinct_chapters(idx, 12)
    assert chapters.shape == (6,)  # min(12 chapters, 6 picks): known without looking at the values
    assert chapters[:4].tolist() == [0, 3, 7, 9]
    assert torch.equal(chapters[rows], idx)


def test_a_read_bound_by_the_whole_bank_reads_it_in_place() -> None:
    """As many picks as chapters: every chapter in order, the picks as rows, and the bank's rows as a view
    (no copy forward, no scatter backward). test_reference checks both paths against its float64
    reference: its token reads have more picks than its 16 chapters (>= 9 decisions x 4), its sequence
    reads of one document per row fewer (3 x 4)."""
    from moc.model.bank import MemoryBank
    from moc.model.memory import MemoryLayer

    idx = torch.tensor([[0, 7, 3], [0, 3, 9], [1, 1, 2], [4, 4, 4]])
    chapters, rows = MemoryLayer.distinct_chapters(idx, 12)
    assert chapters.tolist() == list(range(12)) and rows is idx
    bank = MemoryBank(48, 12, 8, "full", 4, 0.02)
    whole = bank.chapters(None)
    assert whole.shape == (12, 4, 8) and whole.data_ptr() == bank.weight.data_ptr()
    assert torch.equal(whole[idx], bank.chapters(idx.reshape(-1)).view(4, 3, 4, 8))
    factorized = MemoryBank(48, 12, 8, "factorized", 4, 0.02)
    assert torch.equal(factorized.chapters(None)[5], factorized.chapters(torch.tensor([5]))[0])


@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_keys_and_values_on_the_cpu_are_laid_out_for_the_read_with_the_plain_values(kernel: str) -> None:
    """K and V come from one product. Where the C read runs (a CPU, a compiler, small heads and
    chapters, not memory.kernel: torch) each chapter's tokens are adjacent, as it reads them in place,
    and the buffer's rows are padded (not 4 KiB apart); elsewhere rows of (kvh, hd), as the gathering
    reads take them. Values and gradients are those of F.linear(RMS-normalised bank, W_K / W_V)."""
    import torch.nn.functional as F

    from moc.kernels import cpu_build
    from moc.model.bank import MemoryBank
    from moc.model.layers import rms_normalize
    from moc.model.memory import MemoryLayer

    cfg = moc.load_config("tiny-moc").memory
    cfg.n_heads, cfg.n_kv_heads, cfg.kernel = 4, 2, kernel
    layer, bank = MemoryLayer(32, 1e-6, cfg, 0).double(), MemoryBank(128, 16, 32, "full", 8, 0.02).double()
    for chapters in (torch.arange(16), torch.tensor([3, 9, 4])):
        kv_fn, inputs = layer.kv_source(bank, chapters)
        k, v = kv_fn(*inputs)
        assert k.shape == v.shape == (len(chapters), 8, 2, 8)  # (U, T, kvh, hd)
        if kernel == "auto" and cpu_build.has_compiler():
            assert k.stride(1) == v.stride(1) == 1 and k.stride(3) == len(chapters) * 8 + 8  # padded rows
        else:
            assert k.stride(3) == v.stride(3) == 1 and k.stride(1) == 2 * 2 * 8  # (U, T, [k|v], kvh, hd)
        mem = rms_normalize(bank.weight.view(16, 8, 32)[chapters], layer.eps)
        want = [F.linear(mem, p.weight).view(len(chapters), 8, 2, 8) for p in (layer.k_proj, layer.v_proj)]
        torch.testing.assert_close(k, want[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(v, want[1], rtol=1e-12, atol=1e-14)
        dk, dv = torch.randn_like(k), torch.randn_like(v)
        params = (bank.weight, layer.k_proj.weight, layer.v_proj.weight)
        got = torch.autograd.grad((k, v), params, (dk, dv))
        k2, v2 = (F.linear(rms_normalize(bank.weight.view(16, 8, 32)[chapters], layer.eps), p.weight)
                  for p in (layer.k_proj, layer.v_proj))  # fmt: skip
        ref = torch.autograd.grad((k2, v2), params, (dk.reshape(k2.shape), dv.reshape(v2.shape)))
        for a, b in zip(got, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_cuda_without_the_kernels_says_once_why_it_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exported folder (no ``moc`` to import the kernels from) reads with the PyTorch loops on CUDA."""
    import sys
    import warnings

    from moc.model import read_backend

    monkeypatch.setitem(sys.modules, "moc.kernels.dispatch", None)  # importing it now fails
    monkeypatch.setattr("moc.errors._WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_backend.read_impls(torch.device("cuda"), "auto") == (None, None)
        assert read_backend.read_impls(torch.device("cuda"), "auto") == (None, None)
        assert read_backend.read_impls(torch.device("cpu"), "auto") == (None, None)
    assert len(caught) == 1 and "using the PyTorch path" in str(caught[0].message)


def test_the_tile_layout_is_computed_once_per_forward(make_model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its host sync runs once per forward, not once per memory layer; a new input gets a new layout."""
    from moc.model import routing_layout

    calls = []
    real = routing_layout.tile_layout
    monkeypatch.setattr(routing_layout, "tile_layout", lambda *a: calls.append(1) or real(*a))
    model = make_model("memory.routing=causal")  # memory layers 1 and 3
    ids = torch.randint(0, 256, (2, 20))
    model(ids)
    assert len(calls) == 1
    model(ids[:, :12])
    assert len(calls) == 2


def test_one_document_rows_need_no_tile_count_and_a_wrong_hint_is_caught() -> None:
    from moc.model.routing_layout import tile_layout as _layout

    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :3] = False  # left padding: positions still start at 0 at the first real token
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    counted, bound = _layout(pos, valid, 4), _layout(pos, valid, 4, G=3)  # ceil(10 / 4)
    assert counted.G == bound.G == 3 and counted.Gd == bound.Gd == 1
    assert torch.equal(counted.slot, bound.slot) and torch.equal(counted.tile_first_row, bound.tile_first_row)
    packed = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1]] * 2)  # three documents: 5 tiles
    with pytest.raises(RuntimeError, match="one_document was wrong"):
        _layout(packed, torch.ones_like(valid), 4, G=3)


@pytest.mark.parametrize(("mode", "projected"), [("sequence", 2 * 5), ("causal", 32)])
def test_chapters_are_projected_once_per_decision_not_per_tile(
    make_model, monkeypatch: pytest.MonkeyPatch, mode: str, projected: int
) -> None:
    """Sequence routing reads one decision from 10 tiles per row: the chapters projected are bounded by
    its 2 decisions x 5 picks, not by the tiles (10 x 2 x 5 > 32 chapters); causal: 20 decisions."""
    from moc.model.memory import MemoryLayer

    sizes = []
    real = MemoryLayer.kv_source
    monkeypatch.setattr(MemoryLayer, "kv_source", lambda self, b, c: sizes.append(len(c)) or real(self, b, c))
    model = make_model(f"memory.routing={mode}", "memory.causal_chunk_size=4", "memory.layers=[1]")
    model(torch.randint(0, 256, (2, 40)))
    assert sizes == [projected]


def test_disabled_chapters_are_noticed_after_in_place_edits_and_replacement() -> None:
    from moc.model.memory import ChapterRouter

    router = ChapterRouter(16, moc.load_config("tiny-moc").memory)
    x = torch.randn(3, 16)
    assert not router.any_disabled()
    router.disabled[5] = True  # in place: the version counter moves
    assert router.any_disabled() and not (router(x)[0] == 5).any()
    router.disabled = torch.zeros_like(router.disabled)  # replaced (as a Hugging Face load does)
    assert not router.any_disabled()
