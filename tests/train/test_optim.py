"""Parameter groups: categories, learning rates, weight-decay exemptions, and a truly frozen bank."""

from __future__ import annotations

import pytest
import torch

import moc
from moc.model.param_groups import param_category
from moc.train.optim import apply_freezing, build_optimizer, optimizer_state_bytes, param_groups
from moc.train.schedule import lr_multiplier

LRS = [
    "train.lr=0.001",
    "train.memory_lr=0.002",
    "train.bank_lr=0.004",
    "train.weight_decay=0.1",
    "train.memory_weight_decay=0.05",
    "train.bank_weight_decay=0.01",
]


@pytest.fixture
def cfg_with(tiny_cfg):
    return lambda *extra: tiny_cfg(*LRS, *extra)


def test_groups_cover_every_parameter_once_with_the_right_lr_and_decay(cfg_with) -> None:
    cfg = cfg_with()
    model = moc.build_model(cfg)
    groups = param_groups(model, cfg.train)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names.values())
    lr = {"backbone": 0.001, "memory": 0.002, "bank": 0.004}
    wd = {"backbone": 0.1, "memory": 0.05, "bank": 0.01}
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            assert param_category(n) == g["category"]
            assert g["lr"] == lr[g["category"]]
            exempt = p.ndim < 2 or n.startswith("embed_tokens")
            assert g["weight_decay"] == (0.0 if exempt else wd[g["category"]]), n
    by_name = {g["name"] for g in groups}
    assert {"backbone", "backbone_no_decay", "memory", "memory_no_decay", "bank"} <= by_name
    # the router bias and norm scales are exempt; so is the (tied) embedding
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {"embed_tokens.weight", "layers.1.memory.router.proj.bias", "norm.weight"} <= no_decay


def test_each_group_lr_follows_the_schedule(cfg_with) -> None:
    cfg = cfg_with("train.schedule=wsd", "train.warmup_steps=3", "train.max_steps=12", "train.decay_start=6")
    model = moc.build_model(cfg)
    opt = build_optimizer(model, cfg.train)
    f = lr_multiplier(cfg.train)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    base = {"backbone": 0.001, "memory": 0.002, "bank": 0.004}
    for step in range(12):
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(base[g["category"]] * f(step), rel=1e-12)
        opt.step()
        sched.step()


def test_frozen_bank_has_no_grad_and_no_optimizer_state(cfg_with) -> None:
    cfg = cfg_with("train.freeze_bank=true")
    model = moc.build_model(cfg)
    frozen = apply_freezing(model, cfg.train)
    assert frozen == ["banks.0.weight"]
    opt = build_optimizer(model, cfg.train)
    assert all(g["category"] != "bank" for g in opt.param_groups)
    out = model(torch.randint(0, 64, (2, 16)))
    (out.logits.square().mean() + out.aux_loss).backward()
    opt.step()
    bank = model.banks[0].weight
    assert bank.grad is None
    assert bank not in opt.state
    assert all(p is not bank for p in opt.state)
    # compared with a trainable bank, Adam state shrinks by exactly two fp32 moments + a step counter
    cfg2 = cfg_with()
    model2 = moc.build_model(cfg2)
    opt2 = build_optimizer(model2, cfg2.train)
    out2 = model2(torch.randint(0, 64, (2, 16)))
    (out2.logits.square().mean() + out2.aux_loss).backward()
    opt2.step()
    saved = optimizer_state_bytes(opt2) - optimizer_state_bytes(opt)
    step_bytes = opt2.state[model2.banks[0].weight]["step"].numel() * 4
    assert saved == 2 * bank.numel() * 4 + step_bytes


def _train(cfg, steps: int = 5) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """A few steps of the tiny model -> (its optimizer, its parameters after them)."""
    torch.manual_seed(0)
    model = moc.build_model(cfg)
    opt = build_optimizer(model, cfg.train)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        out = model(torch.randint(0, 64, (2, 16), generator=g))
        opt.zero_grad()
        (out.logits.square().mean() + out.aux_loss).backward()
        opt.step()
    return opt, [p.detach().clone() for p in model.parameters()]


def test_adamw_is_fused_by_default_with_the_same_update(cfg_with) -> None:
    """train.fused_optimizer (default) runs PyTorch's fused AdamW: the same betas, eps, decay and LRs per
    group as the unfused one, so the parameters agree to rounding after a few steps."""
    opt, fused = _train(cfg_with("train.beta2=0.9", "train.eps=1e-3"))
    assert all(g["fused"] is True for g in opt.param_groups)
    plain_opt, plain = _train(cfg_with("train.beta2=0.9", "train.eps=1e-3", "train.fused_optimizer=false"))
    assert not any(g["fused"] for g in plain_opt.param_groups)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    _, other_eps = _train(cfg_with("train.beta2=0.9", "train.eps=1e-8"))
    assert any(not torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(fused, other_eps, strict=True))


def test_adamw_without_a_fused_kernel_says_so_once_and_runs_unfused(
    cfg_with, monkeypatch: pytest.MonkeyPatch
) -> None:
    import moc.train.optim as optim

    real = torch.optim.AdamW

    def no_fused_kernel(params, fused=None, **kw):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors")
        return real(params, **kw)

    monkeypatch.setattr(optim.torch.optim, "AdamW", no_fused_kernel)
    cfg = cfg_with()
    with pytest.warns(UserWarning, match="no fused kernel here.*fused_optimizer=false"):
        opt = build_optimizer(moc.build_model(cfg), cfg.train)
    assert not any(g["fused"] for g in opt.param_groups)
