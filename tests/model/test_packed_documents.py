"""Packed documents stay separate: a document's logits in a packed row equal its logits alone.

A position restart (Hugging Face's ``DataCollatorWithFlattening`` convention) is a document boundary:
self-attention is block-diagonal causal and the memory routing pools only the current document.
"""

from __future__ import annotations

import pytest
import torch

import moc
from memory_helpers import make_memory_matter
from moc.model.layers import dense_document_mask, document_ids

LENGTHS = (21, 30, 13)  # three documents, the second crosses a causal chunk border of 16


def _docs(vocab: int = 256) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, vocab, (1, n), generator=g) for n in LENGTHS]


def _packed(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    row = torch.cat(docs, dim=1)
    pos = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    return row, pos


def _split(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.split(list(LENGTHS), dim=1))


def test_document_ids_follow_position_restarts() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 5, 6], [3, 4, 5, 6, 7, 8, 9, 10]])
    valid = torch.ones_like(pos, dtype=torch.bool)
    assert document_ids(pos, valid).tolist() == [[1, 1, 1, 2, 2, 3, 3, 3], [1] * 8]
    # Padding never starts a document; the next valid token compares with the last *valid* position.
    pos = torch.tensor([[0, 0, 0, 1, 2, 2, 3]])
    valid = torch.tensor([[False, False, True, True, True, False, True]])
    assert document_ids(pos, valid).tolist() == [[0, 0, 1, 1, 1, 1, 1]]
    # A position that does not increase starts a document even when it is not 0.
    pos = torch.tensor([[4, 5, 6, 2, 3]])
    assert document_ids(pos, torch.ones_like(pos, dtype=torch.bool)).tolist() == [[1, 1, 1, 2, 2]]


def test_dense_document_mask_is_block_diagonal_causal() -> None:
    doc = torch.tensor([[1, 1, 2, 2]])
    m = dense_document_mask(doc, torch.ones_like(doc, dtype=torch.bool))[0, 0].int()
    assert m.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("routing", ["causal", "causal/per_token", "token", "sequence", None])
def test_packed_logits_equal_each_document_alone(make_model, routing: str | None, backend: str) -> None:
    mem = ["memory.enabled=false", "memory.layers=[]"]
    if routing:
        mode, _, first = routing.partition("/")
        mem = [f"memory.routing={mode}", f"memory.causal_first_chunk={first or 'bias'}"]
    model = make_model(*mem, f"model.attention_backend={backend}").eval()
    docs = _docs()
    row, pos = _packed(docs)
    with torch.no_grad():
        packed = model(row, position_ids=pos).logits
        alone = [model(d).logits for d in docs]
    for got, want in zip(_split(packed), alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_without_position_ids_a_row_is_one_document(make_model) -> None:
    """The switch-off behaviour: no position ids, the later documents see the earlier ones."""
    model = make_model("memory.routing=causal").eval()
    docs = _docs()
    row, _ = _packed(docs)
    with torch.no_grad():
        mixed = _split(model(row).logits)[1]
        alone = model(docs[1]).logits
    assert (mixed - alone).abs().max() > 1e-3


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention has no backward on CPU")
def test_flex_and_dense_masks_give_the_same_gradients(make_model) -> None:
    """The GPU path (FlexAttention block mask, compiled) trains like the dense boolean mask."""
    docs = _docs()
    row, pos = (t.cuda() for t in _packed(docs))
    grads = {}
    for backend in ("sdpa", "flex"):
        torch.manual_seed(0)
        model = make_model("memory.routing=causal", f"model.attention_backend={backend}").cuda()
        out = model(row, position_ids=pos, labels=row)
        (out.loss + out.aux_loss).backward()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name, g in grads["sdpa"].items():
        torch.testing.assert_close(grads["flex"][name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("routing", ["causal", "token"])
def test_hf_packed_position_ids(routing: str) -> None:
    """Through MoCForCausalLM with DataCollatorWithFlattening's packed position ids."""
    from transformers import DataCollatorWithFlattening

    from moc.hf import MoCForCausalLM
    from moc.hf.convert import hf_config

    torch.manual_seed(0)
    cfg = moc.load_config("tiny-moc", [f"memory.routing={routing}"])
    hf = make_memory_matter(MoCForCausalLM(hf_config(cfg)).eval())
    docs = _docs()
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": d[0].tolist()} for d in docs])
    assert batch["position_ids"][0].tolist() == [i for n in LENGTHS for i in range(n)]
    with torch.no_grad():
        packed = hf(batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = [hf(d).logits for d in docs]
        # The collator's labels ignore each document's first token: the packed loss is the documents'.
        loss = hf(batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
        per_doc = [hf(d, labels=d).loss * (d.shape[1] - 1) for d in docs]
    for got, want in zip(_split(packed), alone, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(loss, sum(per_doc) / (sum(LENGTHS) - len(LENGTHS)), atol=1e-5, rtol=1e-5)


def test_packed_prompt_with_a_cache_is_refused(make_model) -> None:
    """A cache holds one history per row: decoding after a packed prompt would mix documents."""
    model = make_model("memory.routing=causal").eval()
    row, pos = _packed(_docs())
    with torch.no_grad(), pytest.raises(ValueError, match="packed documents.*KV cache"):
        model(row, position_ids=pos, use_cache=True)
    with torch.no_grad():  # one document per row with explicit positions still decodes
        doc = _docs()[0]
        model(doc, position_ids=torch.arange(doc.shape[1])[None], use_cache=True)
