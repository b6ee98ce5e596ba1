"""The router aux loss: its exact value from hand-computed numbers, and its invariance to padding."""

from __future__ import annotations

import math

import pytest
import torch

import moc
from moc.model.routing_layout import RoutingContext

LB_COEF, Z_COEF = 0.3, 0.05  # far apart, so swapping them cannot go unnoticed


def _layer(*overrides: str) -> tuple[moc.model.MoCModel, torch.nn.Module]:
    cfg = moc.load_config(
        "tiny-moc",
        [
            "memory.n_tokens=64",
            "memory.n_chapters=16",
            "memory.n_shared_chapters=1",
            "memory.top_k=3",
            f"memory.load_balance_coef={LB_COEF}",
            f"memory.z_loss_coef={Z_COEF}",
            *overrides,
        ],
    )
    model = moc.build_model(cfg)
    return model, model.layers[1].memory


def test_aux_loss_value_from_hand_computed_router_scores() -> None:
    """Causal routing, one chunk: every decision routes from the zero summary, so scores = router bias.

    With scores s: p = softmax(s[1:]) over the 15 routed chapters, the top-3 are picked by every decision,
    so f = 1/3 on them; LB = 15 * sum_top3(p) / 3, Z = logsumexp(s)^2.
    """
    model, layer = _layer("memory.routing=causal", "memory.causal_chunk_size=16")
    bias = [0.1 * ((7 * c) % 16) - 0.4 for c in range(16)]  # distinct scores, shared chapter not the top
    with torch.no_grad():
        layer.router.proj.bias.copy_(torch.tensor(bias))
    routed = bias[1:]
    norm = sum(math.exp(s) for s in routed)
    p = sorted((math.exp(s) / norm for s in routed), reverse=True)
    lb = 15 * sum(p[:3]) / 3
    z = math.log(sum(math.exp(s) for s in bias)) ** 2
    h = torch.randn(2, 10, 64)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, 7:] = False  # padding must change nothing
    pos = torch.arange(10).expand(2, 10)
    _, aux, info = layer(h, model.banks[0], RoutingContext.build(layer.cfg, pos, valid))
    assert info.load_balance == pytest.approx(lb, rel=1e-5)
    assert info.z_loss == pytest.approx(z, rel=1e-5)
    assert aux.item() == pytest.approx(LB_COEF * lb + Z_COEF * z, rel=1e-5)


def test_aux_loss_at_uniform_routing() -> None:
    """Zero router: uniform probabilities, so LB = 1 exactly and Z = log(C)^2, whatever the input."""
    model, layer = _layer("memory.routing=token")
    with torch.no_grad():
        layer.router.proj.weight.zero_()
    h = torch.randn(3, 9, 64)
    valid = torch.ones(3, 9, dtype=torch.bool)
    _, aux, _ = layer(h, model.banks[0], RoutingContext.build(layer.cfg, torch.arange(9).expand(3, 9), valid))
    assert aux.item() == pytest.approx(LB_COEF * 1.0 + Z_COEF * math.log(16) ** 2, rel=1e-5)


@pytest.mark.parametrize("mode", ["sequence", "causal", "token"])
def test_aux_loss_ignores_padding(mode: str) -> None:
    """Padding positions hold garbage tokens: the aux loss (and its router gradient) must not see them."""
    model, _ = _layer(f"memory.routing={mode}", "memory.causal_chunk_size=4")
    for name, p in model.named_parameters():
        if "router.proj" in name:
            torch.nn.init.normal_(p, std=0.5)
    ids = torch.randint(0, 256, (2, 11))
    pad = torch.randint(0, 256, (2, 5))
    padded = torch.cat([pad[:, :3], ids, pad[:, 3:]], 1)  # 3 left, 2 right padding tokens
    mask = torch.cat([torch.zeros(2, 3), torch.ones(2, 11), torch.zeros(2, 2)], 1).long()
    a = model(ids).aux_loss
    a.backward()
    grad = model.layers[1].memory.router.proj.weight.grad.clone()
    model.zero_grad()
    b = model(padded, attention_mask=mask).aux_loss
    b.backward()
    assert a.item() > 0
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.layers[1].memory.router.proj.weight.grad, grad, atol=1e-6, rtol=1e-4)
