"""The LM loss in chunks: same loss and gradients as full logits, no full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moc.model.loss import chunked_linear_cross_entropy


def _data(n: int = 37, d: int = 16, v: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g, requires_grad=True)
    w = torch.randn(v, d, generator=g, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    y[::5] = -100
    return h, w, y


@pytest.mark.parametrize("chunk", [1, 8, 36, 37, 0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_chunked_equals_full_logits(chunk: int, reduction: str) -> None:
    h, w, y = _data()
    ref = F.cross_entropy(F.linear(h, w), y, ignore_index=-100, reduction=reduction)
    ref_grads = torch.autograd.grad(ref, (h, w))
    got = chunked_linear_cross_entropy(h, w, y, chunk, reduction)  # type: ignore[arg-type]
    grads = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shape_errors_are_clear() -> None:
    h, w, y = _data()
    with pytest.raises(ValueError, match=r"hidden must be \(N, d\)"):
        chunked_linear_cross_entropy(h[None], w, y, 8)


@pytest.mark.parametrize("routing", ["causal", "token"])
def test_model_loss_without_logits_matches_the_logits_path(make_model, routing: str) -> None:
    """MoCModel: return_logits=False gives the same loss and gradients, and no logits (chunks of 5)."""
    ids = torch.randint(0, 256, (2, 24))
    labels = ids.clone()
    labels[0, :7] = -100
    results = []
    for return_logits in (True, False):
        torch.manual_seed(0)
        model = make_model(f"memory.routing={routing}", "model.loss_chunk_size=5")
        out = model(ids, labels=labels, return_logits=return_logits)
        out.loss.backward()
        assert (out.logits is None) == (not return_logits)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=1e-5)
    for name, g in grads_a.items():
        torch.testing.assert_close(grads_b[name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_shifted_labels_and_sum_reduction(make_model) -> None:
    """``shift_labels=False`` + ``loss_reduction="sum"``: what the training loop asks for."""
    model = make_model().eval()
    ids = torch.randint(0, 256, (2, 16))
    targets = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        logits = model(ids).logits
        want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        got = model(ids, labels=targets, return_logits=False, shift_labels=False, loss_reduction="sum").loss
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match="loss_reduction"):
        model(ids, labels=targets, loss_reduction="avg")
