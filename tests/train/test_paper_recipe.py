"""The paper's recipe as config keys and IFT epochs under packing."""

from __future__ import annotations

import math

import pytest
import torch

import moc
from moc.config import ConfigError
from moc.data import PackedSequences, load_prepared
from moc.train import train
from moc.train.batches import steps_for_epochs
from moc.train.optim import param_groups
from moc_experiments.experiment import load_experiment


def test_epochs_set_max_steps_from_the_packed_windows(tiny_cfg) -> None:
    cfg = tiny_cfg("train.epochs=0.1", "train.max_steps=1000", "train.eval_every=0", "train.save_every=0")
    windows = len(PackedSequences(load_prepared(cfg.data.prepared_dir, "train"), cfg.train.seq_len))
    r = train(cfg)
    assert r.step == math.ceil(0.1 * windows / cfg.train.micro_batch_size) < 1000
    with pytest.raises(ConfigError, match="train.epochs must be positive"):
        train(tiny_cfg("train.epochs=0", out="zero"))
    with pytest.raises(ConfigError, match="train.epochs"):
        steps_for_epochs(10, -1, 4)


def test_weight_decay_all_decays_every_parameter(make_model) -> None:
    model = make_model()
    cfg = moc.load_config("tiny-moc", ["train.weight_decay=0.1", "train.bank_weight_decay=0.05"]).train
    default = {g["name"]: g["weight_decay"] for g in param_groups(model, cfg)}
    assert default["backbone_no_decay"] == 0.0  # norms, biases, embeddings exempt by default
    every = param_groups(model, moc.load_config("tiny-moc", ["train.weight_decay_all=true"]).train)
    assert not any(g["name"].endswith("_no_decay") for g in every)
    assert all(g["weight_decay"] > 0 for g in every if g["category"] != "bank")
    n_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for g in every for p in g["params"]) == n_params


def test_aux_loss_mean_divides_by_the_memory_layers(make_model) -> None:
    ids = torch.randint(0, 256, (2, 24))
    aux = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        model = make_model(f"memory.aux_loss_reduction={reduction}")  # tiny-moc: 2 memory layers
        aux[reduction] = model(ids).aux_loss
    torch.testing.assert_close(aux["mean"], aux["sum"] / 2)


def test_paper_presets_follow_the_authors_configs() -> None:
    c = moc.load_config("paper-moc")
    assert c.model.attn_out_init_std == c.model.mlp_down_init_std == 0.00378
    assert (c.memory.aux_loss_reduction, c.memory.router_input) == ("mean", "block_input")
    assert (c.train.decay_shape, c.train.weight_decay_all) == ("cosine", True)
    assert c.train.weight_decay == c.train.bank_weight_decay == 0.1
    exp = load_experiment("paper", [])
    t = exp.moc_config.train
    assert exp.ift.warmup_steps == 250 and exp.ift.epochs == 2
    micro = exp.ift.micro_batch_size or t.micro_batch_size
    accum = exp.ift.grad_accum_steps or t.grad_accum_steps
    assert micro * accum == 128  # the global IFT batch
    assert exp.moc_config.train.decay_shape == "cosine"
