"""LR schedules: warmup, WSD plateau and decay shapes, cosine, constant, LambdaLR round trip."""

from __future__ import annotations

import math

import pytest
import torch

from moc.config import ConfigError, TrainConfig
from moc.train.schedule import decay_start_step, lr_multiplier


def curve(**kw: object) -> list[float]:
    cfg = TrainConfig(**kw)
    f = lr_multiplier(cfg)
    return [f(s) for s in range(cfg.max_steps + 5)]


def test_warmup_is_linear_and_reaches_one() -> None:
    c = curve(schedule="constant", warmup_steps=4, max_steps=10)
    assert c[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert all(v == 1.0 for v in c[4:])


def test_wsd_plateau_then_decay_to_min_ratio_at_last_step() -> None:
    c = curve(schedule="wsd", warmup_steps=2, max_steps=20, decay_start=10, min_lr_ratio=0.1)
    assert c[:2] == [0.5, 1.0]
    assert all(v == 1.0 for v in c[2:10])  # stable phase up to the decay start
    assert c[10] == 1.0 and c[11] < 1.0  # decay begins at decay_start
    assert c[19] == pytest.approx(0.1)  # the last step (max_steps - 1) trains at the floor
    assert all(v == pytest.approx(0.1) for v in c[19:])  # and it stays there
    assert all(a > b for a, b in zip(c[10:19], c[11:20]))  # strictly decreasing in between


def test_decay_start_fraction_or_step() -> None:
    assert decay_start_step(TrainConfig(max_steps=200, decay_start=0.85)) == 170
    assert decay_start_step(TrainConfig(max_steps=9600, decay_start=8160)) == 8160


@pytest.mark.parametrize(
    ("shape", "at_quarter", "at_half"),
    [
        ("linear", 0.75, 0.5),
        ("cosine", 0.5 * (1 + math.cos(math.pi / 4)), 0.5),
        ("1-sqrt", 0.5, 1 - math.sqrt(0.5)),
    ],
)
def test_decay_shapes(shape: str, at_quarter: float, at_half: float) -> None:
    # decay from step 0 to step 100 (= max_steps - 1), floor 0: progress p = step / 100
    f = lr_multiplier(
        TrainConfig(schedule="wsd", max_steps=101, decay_start=0.0001, min_lr_ratio=0.0, decay_shape=shape)
    )
    assert f(25) == pytest.approx(at_quarter)
    assert f(50) == pytest.approx(at_half)
    assert f(100) == pytest.approx(0.0)


def test_min_lr_ratio_scales_the_decay() -> None:
    f = lr_multiplier(TrainConfig(schedule="wsd", max_steps=101, decay_start=0.0001, min_lr_ratio=0.2))
    assert f(50) == pytest.approx(0.2 + 0.8 * 0.5)


def test_cosine_schedule() -> None:
    c = curve(schedule="cosine", warmup_steps=10, max_steps=111, min_lr_ratio=0.1)
    assert c[9] == 1.0
    assert c[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert c[110] == pytest.approx(0.1)


def test_fractional_decay_start_waits_for_warmup() -> None:
    c = curve(schedule="wsd", warmup_steps=4, max_steps=6, decay_start=0.5, min_lr_ratio=0.0)
    assert c[:4] == [0.25, 0.5, 0.75, 1.0] and c[5] == 0.0


def test_bad_schedules_raise() -> None:
    with pytest.raises(ConfigError, match="before the end of warmup"):
        lr_multiplier(TrainConfig(schedule="wsd", warmup_steps=50, max_steps=100, decay_start=10))
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        lr_multiplier(TrainConfig(min_lr_ratio=1.5))


def test_lambdalr_state_round_trip() -> None:
    cfg = TrainConfig(schedule="wsd", warmup_steps=3, max_steps=20, decay_start=8)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg))
    for _ in range(10):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lr_multiplier(cfg))
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = opt.param_groups[0]["lr"]  # the optimizer state carries the current lr
    for _ in range(5):
        opt.step(), sched.step(), opt2.step(), sched2.step()
        assert opt.param_groups[0]["lr"] == opt2.param_groups[0]["lr"]
