"""The training log's measured distinct chapters and the batch-aware MFU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import moc
from moc.accounting import mfu
from moc.train import train
from moc.train.metrics import distinct_chapters, mfu_per_token_per_s


def test_log_shows_the_distinct_chapters_each_step_projected(tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=3", "train.eval_every=0", "train.save_every=0", "memory.routing=token")
    torch.manual_seed(cfg.train.seed)
    model = moc.build_model(cfg)
    seen: list[float] = []
    forward = model.forward

    def spy(*args: object, **kwargs: object) -> object:
        out = forward(*args, **kwargs)
        if model.training:  # what the model projected: the union of the micro-batch's selections
            seen.append(sum(torch.unique(i.indices).numel() for i in out.routing) / len(out.routing))
        return out

    model.forward = spy
    r = train(cfg, model=model)
    rows = [json.loads(x) for x in (Path(r.out_dir) / "metrics.jsonl").read_text().splitlines()]
    logged = [x["distinct_chapters"] for x in rows if x["kind"] == "train"]
    assert logged == pytest.approx(seen) and len(seen) == 3
    assert all(cfg.memory.n_selected_chapters <= c <= cfg.memory.n_chapters for c in logged)


def test_distinct_chapters_is_zero_for_dense_and_the_union_otherwise() -> None:
    like = torch.zeros(2, dtype=torch.float64)
    assert float(distinct_chapters([], 8, like)) == 0.0

    class Info:
        def __init__(self, idx: list[int]) -> None:
            self.indices = torch.tensor(idx).view(1, 1, -1)

    assert float(distinct_chapters([Info([0, 3, 3, 5]), Info([0, 1, 2, 3, 4, 5])], 8, like)) == 4.5


def test_training_mfu_uses_the_micro_batch_and_the_measured_count() -> None:
    cfg = moc.load_config("paper-moc", ["memory.routing=causal", "train.micro_batch_size=16"])
    cuda = torch.device("cuda")  # only the device type is read; no GPU is needed
    at16 = mfu_per_token_per_s(cfg, cuda)
    assert at16 == pytest.approx(mfu(1.0, cfg, 1024, cfg.train.mfu_peak_flops, batch_size=16))
    assert at16 < mfu(1.0, cfg, 1024, cfg.train.mfu_peak_flops)  # batch 1 counts more projection work
    assert mfu_per_token_per_s(cfg, cuda, 1000.0) < at16  # fewer measured chapters: less work done
    assert mfu_per_token_per_s(cfg, torch.device("cpu")) is None
