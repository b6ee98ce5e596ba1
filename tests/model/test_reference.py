"""The model's memory read against the naive reference (tests/model/reference.py): outputs AND gradients.

Every other equality test of the memory read runs both sides through the same production code; these
compare with an independent float64 re-derivation from the paper's equations, for every routing mode,
bank kind, bank sharing and block variant, with left/right padding.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import moc
from memory_helpers import make_memory_matter
from moc.config import MemoryConfig
from moc.model.routing_layout import RoutingContext

from .reference import documents, reference_forward, reference_memory_layer

# derandomize: the same examples on every run. No shrinking: the examples are already tiny, and a
# failure should be reported in seconds (mutation testing runs this file once per mutant).
FAST = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
HAS_WEIGHTING = "chapter_weighting" in {f.name for f in dataclasses.fields(MemoryConfig)}
WEIGHTINGS = ["kv", "v", "logit"] if HAS_WEIGHTING else ["kv"]


def _model(*overrides: str) -> moc.model.MoCModel:
    """Three blocks, all with memory (so per_layer gives 3 banks, grouped 2), chapters of 4 tokens.

    W_O starts at zero in the paper, which would hide every memory bug: give it (and the router, whose
    bias starts at zero) random weights so that reads and routing both matter.
    """
    base = [
        "model.n_layers=3",
        "memory.layers=all",
        "memory.n_tokens=64",
        "memory.n_chapters=16",
        "memory.top_k=3",
        "memory.n_shared_chapters=1",
        "memory.bank_rank=8",
        "memory.bank_dim=32",
        "memory.causal_chunk_size=4",
    ]
    model = moc.build_model(moc.load_config("tiny-moc", base + list(overrides)))
    return make_memory_matter(model, std=0.3, router_std=0.5)


def _mask(B: int, L: int, pad: str) -> torch.Tensor:
    mask = torch.ones(B, L, dtype=torch.long)
    if pad in ("left", "both"):
        mask[0, : L // 3] = 0
    if pad in ("right", "both"):
        mask[-1, L - L // 4 - 1 :] = 0
    return mask


def _assert_grads_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """fp32 against fp64: an absolute tolerance scaled by the gradient's largest entry."""
    assert a.keys() == b.keys()
    for name in a:
        scale = max(1.0, float(b[name].abs().max()))
        torch.testing.assert_close(
            a[name], b[name], atol=1e-5 * scale, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("mode", ["sequence", "causal", "token"])
@pytest.mark.parametrize("kind", ["full", "factorized", "reduced"])
@pytest.mark.parametrize("sharing", ["shared", "per_layer", "grouped"])
@pytest.mark.parametrize("variant", ["A", "B"])
@settings(FAST, max_examples=2)
@given(
    pad=st.sampled_from(["none", "left", "right", "both"]),
    L=st.integers(9, 14),  # >= 2 causal chunks of 4 even with padding: the router weight gets gradient,
    seed=st.integers(0, 2**16),
)
def test_model_matches_reference_outputs_and_gradients(
    mode: str, kind: str, sharing: str, variant: str, pad: str, L: int, seed: int
) -> None:
    torch.manual_seed(seed)
    model = _model(
        f"memory.routing={mode}",
        f"memory.bank_type={kind}",
        f"memory.bank_sharing={sharing}",
        f"memory.block_variant={variant}",
        f"memory.n_kv_heads={2 if variant == 'B' else 4}",  # grouped-query memory attention too
    )
    ids = torch.randint(0, 256, (2, L))
    mask = _mask(2, L, pad)
    valid = mask.bool()
    probe = torch.randn(2, L, 256)  # a random linear read-out, so every logit's gradient is checked

    out = model(ids, attention_mask=mask)
    ((out.logits * probe)[valid].sum() + out.aux_loss).backward()
    got = _grads(model)
    ref_logits, ref_aux = reference_forward(model, ids, mask)
    ((ref_logits * probe)[valid].sum() + ref_aux).backward()
    want = _grads(model)

    torch.testing.assert_close(out.logits[valid], ref_logits[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux_loss, ref_aux, atol=1e-6, rtol=1e-5)
    # The bank, router, q/k/v/o projections of every memory layer must all have received gradient.
    for name in ("banks.", "router.proj.weight", "router.proj.bias", "memory.q_proj", "memory.v_proj"):
        assert any(name in n and g.abs().sum() > 0 for n, g in want.items()), name
    _assert_grads_close(got, want)


@FAST
@given(
    mode=st.sampled_from(["sequence", "causal", "token"]),
    kind=st.sampled_from(["full", "factorized", "reduced"]),
    weighting=st.sampled_from(WEIGHTINGS),
    pad=st.sampled_from(["none", "left", "right", "both"]),
    L=st.integers(3, 20),
    chunk=st.sampled_from([1, 3, 4, 8]),
    kv_heads=st.sampled_from([4, 2, 1]),
    first_chunk=st.sampled_from(["bias", "per_token"]),
    seed=st.integers(0, 2**16),
)
def test_memory_layer_matches_reference(
    mode: str,
    kind: str,
    weighting: str,
    pad: str,
    L: int,
    chunk: int,
    kv_heads: int,
    first_chunk: str,
    seed: int,
) -> None:
    """One MemoryLayer, called directly: update and aux loss, gradients w.r.t. h and every parameter."""
    torch.manual_seed(seed)
    extra = [f"memory.chapter_weighting={weighting}"] if HAS_WEIGHTING else []
    model = _model(
        f"memory.routing={mode}",
        f"memory.bank_type={kind}",
        f"memory.causal_chunk_size={chunk}",
        f"memory.n_kv_heads={kv_heads}",
        f"memory.causal_first_chunk={first_chunk}",
        *extra,
    )
    layer, bank = model.layers[1].memory, model.banks[0]
    mask = _mask(3, L, pad).bool()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    h = torch.randn(3, L, 64, requires_grad=True)
    probe = torch.randn(3, L, 64)

    update, aux, _ = layer(h, bank, RoutingContext.build(layer.cfg, pos, mask))
    ((update * probe)[mask].sum() + aux).backward()
    got = _grads(model) | {"h": h.grad.clone()}
    h.grad = None
    ref_update, ref_aux = reference_memory_layer(layer, bank, h, pos, mask)
    ((ref_update * probe)[mask].sum() + ref_aux).backward()
    want = _grads(model) | {"h": h.grad.clone()}

    torch.testing.assert_close(update[mask], ref_update[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, ref_aux, atol=1e-6, rtol=1e-5)
    _assert_grads_close(got, want)


@pytest.mark.skipif(not HAS_WEIGHTING, reason="needs memory.chapter_weighting and memory.router_input")
@pytest.mark.parametrize("mode", ["causal", "token"])
@pytest.mark.parametrize("weighting", ["kv", "v", "logit"])
@pytest.mark.parametrize(("router_input", "reduction"), [("memory_norm", "mean"), ("block_input", "sum")])
def test_model_options_match_reference(mode: str, weighting: str, router_input: str, reduction: str) -> None:
    """Chapter weighting, routing from the block input and averaging the aux loss over layers."""
    model = _model(
        f"memory.routing={mode}",
        f"memory.chapter_weighting={weighting}",
        f"memory.router_input={router_input}",
        f"memory.aux_loss_reduction={reduction}",
    )
    ids = torch.randint(0, 256, (2, 12))
    mask = _mask(2, 12, "both")
    valid = mask.bool()
    probe = torch.randn(2, 12, 256)
    out = model(ids, attention_mask=mask)
    ((out.logits * probe)[valid].sum() + out.aux_loss).backward()
    got = _grads(model)
    ref_logits, ref_aux = reference_forward(model, ids, mask)
    ((ref_logits * probe)[valid].sum() + ref_aux).backward()
    torch.testing.assert_close(out.logits[valid], ref_logits[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.aux_loss, ref_aux, atol=1e-6, rtol=1e-5)
    _assert_grads_close(got, _grads(model))


def test_the_reference_imports_nothing_of_moc() -> None:
    """Independence: a reference that called the production code would agree with any bug in it."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).parent / "reference.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert {name.split(".")[0] for name in imported} == {"__future__", "math", "torch", "typing"}


def test_reference_splits_documents_at_position_restarts() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 5, 3, 0], [0, 0, 0, 1, 2, 3, 4, 2]])
    valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 1]]).bool()
    assert documents(pos, valid) == [[[0, 1, 2], [3, 4, 5], [6], [7]], [[2, 3, 4, 5], [7]]]


@pytest.mark.parametrize(
    ("mode", "first_chunk"),
    [("causal", "bias"), ("causal", "per_token"), ("token", "bias"), ("sequence", "bias")],
)
def test_packed_rows_match_reference(mode: str, first_chunk: str) -> None:
    """Two documents packed in one row (position ids restart) are read as two separate documents."""
    model = _model(f"memory.routing={mode}", f"memory.causal_first_chunk={first_chunk}")
    ids = torch.randint(0, 256, (2, 13))
    pos = torch.tensor([list(range(6)) + list(range(7)), list(range(9)) + list(range(4))])
    logits = model(ids, position_ids=pos).logits
    ref_logits, _ = reference_forward(model, ids, position_ids=pos)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
