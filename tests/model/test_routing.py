"""Routing: causality per mode, padding, router weights and losses."""

from __future__ import annotations

import math

import pytest
import torch

import moc
from moc.model.router import ChapterRouter, router_losses


def _logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("mode", ["causal", "token"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_causal_modes_never_see_the_future(make_model, mode: str, train: bool, padded: bool) -> None:
    model = make_model(f"memory.routing={mode}", "memory.causal_chunk_size=8")
    model.train(train)
    L = 40
    ids = torch.randint(0, 256, (3, L))
    mask = torch.ones(3, L, dtype=torch.long)
    if padded:
        mask[0, :7] = 0  # left padding
        mask[1, -5:] = 0  # right padding
    # The same weights with the paper's (leaky) sequence routing: the check below must catch its leak,
    # so that it is not vacuous (the changed tokens' own logits always differ; that proves nothing).
    leaky = make_model("memory.routing=sequence", "memory.causal_chunk_size=8")
    leaky.load_state_dict(model.state_dict())
    leaky.train(train)
    for t in (0, 7, 8, 15, 16, 31):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, 256, (3, L - t - 1))
        valid = mask[:, : t + 1].bool()
        for m, leaks in ((model, False), (leaky, True)):
            torch.manual_seed(1)
            a = _logits(m, ids, mask if padded else None)
            torch.manual_seed(1)
            b = _logits(m, changed, mask if padded else None)
            past_a, past_b = a[:, : t + 1][valid], b[:, : t + 1][valid]
            assert torch.allclose(past_a, past_b, atol=1e-5) != leaks, f"leak={leaks} not seen at t={t}"


def test_sequence_routing_is_not_causal(make_model) -> None:
    model = make_model("memory.routing=sequence").eval()
    ids = torch.randint(0, 256, (2, 64))
    changed = ids.clone()
    changed[:, 32:] = torch.randint(0, 256, (2, 32))
    a, b = _logits(model, ids), _logits(model, changed)
    # the first half changes although only the second half did: the paper's leak
    assert (a[:, :32] - b[:, :32]).abs().max() > 1e-4


@pytest.mark.parametrize("mode", ["causal", "token", "sequence"])
def test_left_padding_does_not_change_real_tokens(make_model, mode: str) -> None:
    model = make_model(f"memory.routing={mode}", "memory.causal_chunk_size=4").eval()
    ids = torch.randint(0, 256, (1, 19))
    padded = torch.cat([torch.zeros(1, 6, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 6), torch.ones(1, 19)], 1).long()
    a = _logits(model, ids)
    b = _logits(model, padded, mask)[:, 6:]
    assert torch.allclose(a, b, atol=1e-5)


def test_router_weights_follow_the_paper() -> None:
    cfg = moc.load_config("tiny-moc", ["memory.n_shared_chapters=2", "memory.top_k=3"]).memory
    router = ChapterRouter(16, cfg)
    idx, w, logits, probs = router(torch.randn(5, 16))
    assert idx.shape == w.shape == (5, 5)
    assert logits.shape == (5, cfg.n_chapters) and probs.shape == (5, cfg.n_routed_chapters)
    assert (idx[:, :2] == torch.tensor([0, 1])).all()  # shared chapters first, always
    assert (idx[:, 2:] >= 2).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(5))
    # routed weights: renormalised top-k probs x 2.5, relative to shared weight 1, renormalised
    top_p = probs.topk(3, -1).values
    raw = torch.cat([torch.ones(5, 2), 2.5 * top_p / top_p.sum(-1, keepdim=True)], -1)
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))


@pytest.mark.parametrize("k", [1, 4, 16])
def test_load_balance_is_one_at_uniform_routing_for_any_k(k: int) -> None:
    n_routed, n = 32, 64
    # every chapter picked equally often, uniform probabilities
    idx = torch.stack([(torch.arange(k) + i * k) % n_routed for i in range(n)]) + 1
    idx = torch.cat([torch.zeros(n, 1, dtype=torch.long), idx], -1)
    probs = torch.full((n, n_routed), 1 / n_routed)
    logits = torch.zeros(n, n_routed + 1)
    lb, z, counts = router_losses(logits, probs, idx, torch.ones(n, dtype=torch.bool), 1)
    assert lb.item() == pytest.approx(1.0)
    assert z.item() == pytest.approx(math.log(n_routed + 1) ** 2, rel=1e-5)
    assert counts.sum().item() == n * k


def test_load_balance_grows_when_routing_collapses() -> None:
    n_routed, n, k = 32, 64, 4
    idx = torch.cat([torch.zeros(n, 1, dtype=torch.long), torch.arange(1, k + 1).expand(n, k)], -1)
    probs = torch.zeros(n, n_routed)
    probs[:, :k] = 1 / k
    lb, _, _ = router_losses(torch.zeros(n, n_routed + 1), probs, idx, torch.ones(n, dtype=torch.bool), 1)
    assert lb.item() == pytest.approx(n_routed / k)


def test_routing_info_reports_choices(make_model) -> None:
    model = make_model("memory.causal_chunk_size=16")
    out = model(torch.randint(0, 256, (2, 40)))
    assert len(out.routing) == 2  # memory layers 1 and 3
    info = out.routing[0]
    assert info.indices.shape == (2, 3, 5)  # 3 chunks of 16, 1 shared + top-4
    assert 0 < info.entropy <= math.log(31) + 1e-4
    assert info.chapter_counts.sum().item() == 2 * 3 * 4
    assert out.aux_loss.item() > 0
