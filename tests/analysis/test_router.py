"""Router inspection: usage counts and chapter ablation."""

from __future__ import annotations

import pytest
import torch

from moc.analysis import ablate_chapters, chapter_importance, chapter_usage, chapters_removed


def _batches(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 256, (2, 33), generator=g)
        out.append({"input_ids": ids[:, :-1], "targets": ids[:, 1:]})
    return out


def test_usage_counts_every_pick(make_model) -> None:
    model = make_model("memory.causal_chunk_size=8")
    usage = chapter_usage(model, _batches())
    assert [u.layer for u in usage] == [1, 3]
    for u in usage:
        assert len(u.counts) == 31
        assert sum(u.counts) == u.decisions * 4  # 2 batches x 2 rows x 4 chunks, top-4 each
        assert u.decisions == 16
        assert 0 < u.coverage <= 1 and u.usage_entropy > 0


def test_removed_chapter_is_never_picked_and_restored_after(make_model) -> None:
    model = make_model()
    usage = chapter_usage(model, _batches())
    most_used = 1 + max(range(31), key=lambda i: usage[0].counts[i])
    with chapters_removed(model, [most_used]):
        ids = _batches()[0]["input_ids"]
        out = model(ids)
        assert all((info.indices != most_used).all() for info in out.routing)
    out = model(_batches()[0]["input_ids"])
    assert any((info.indices == most_used).any() for info in out.routing)


def _token_mean_loss(model, batches) -> float:
    """Token-weighted next-token loss over all batches, computed here (not with moc.analysis)."""
    with torch.no_grad():
        logits = torch.cat([model(b["input_ids"]).logits for b in batches])
    labels = torch.cat([b["targets"] for b in batches])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()).item()


def test_removing_chapters_changes_the_loss(make_model) -> None:
    """The ablated loss equals the loss of a copy whose router can never pick the chapter (bias -inf).

    Independent of the ``disabled`` mechanism under test: a chapter with score -1e9 has probability 0.
    In float64, so that the loss difference (~1e-3) is exact far beyond the tolerance.
    """
    model = make_model().double().eval()
    usage = chapter_usage(model, _batches())
    chapter = 1 + max(range(31), key=lambda i: usage[0].counts[i] + usage[1].counts[i])  # a routed one
    effect = ablate_chapters(model, _batches(), [chapter])
    base = _token_mean_loss(model, _batches())
    with torch.no_grad():
        for layer in (1, 3):
            model.layers[layer].memory.router.proj.bias[chapter] = -1e9
    ablated = _token_mean_loss(model, _batches())
    assert effect["base_loss"] == pytest.approx(base, rel=1e-9)
    assert effect["ablated_loss"] == pytest.approx(ablated, rel=1e-9)
    assert abs(ablated - base) > 1e-4  # the chapter mattered, so the equalities above are not vacuous
    assert effect["delta"] == pytest.approx(ablated - base, rel=1e-6)
    rows = chapter_importance(make_model(), _batches(), top=3)
    assert len(rows) == 4 and rows[0]["delta"] >= rows[-1]["delta"]


def test_ablation_errors_are_clear(make_model) -> None:
    model = make_model()
    with pytest.raises(ValueError, match="does not exist"), chapters_removed(model, [99]):
        pass
    with pytest.raises(ValueError, match="fewer than top_k"), chapters_removed(model, list(range(1, 30))):
        pass
    with pytest.raises(ValueError, match="has no memory"), chapters_removed(model, [1], layers=[0]):
        pass
