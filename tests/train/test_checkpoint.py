"""Checkpoints: atomic writes, pruning, shared tensors, and surviving SIGKILL mid-save."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors import safe_open
from torch import nn

from moc.train import checkpoint, train


def _writer(val_loss: float | None = None, fail: bool = False):
    def write(d: Path) -> None:
        (d / checkpoint.WEIGHTS).write_bytes(b"w")
        if fail:
            raise OSError("disk full")
        for name in (checkpoint.OPTIMIZER, checkpoint.TRAINER_STATE, checkpoint.CONFIG):
            (d / name).write_bytes(b"x")
        (d / checkpoint.METRICS).write_text(json.dumps({"val_loss": val_loss}))

    return write


def test_failed_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    mgr = checkpoint.CheckpointManager(tmp_path / "ckpt")
    mgr.save(1, _writer())
    expected = r"could not write checkpoint .*step_000002.*disk full.*intact"
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        mgr.save(2, _writer(fail=True))
    assert [p.name for _, p in mgr.complete_steps()] == ["step_000001"]
    assert mgr.latest().name == "step_000001"
    assert (mgr.root / "latest").read_text().strip() == "step_000001"
    # the failed save removed its temp dir itself
    assert sorted(p.name for p in mgr.root.iterdir()) == ["latest", "step_000001"]


def test_keep_last_plus_best(tmp_path: Path) -> None:
    mgr = checkpoint.CheckpointManager(tmp_path / "ckpt", keep_last=2)
    for step, val in enumerate([3.0, 1.0, 4.0, None, 6.0], start=1):
        mgr.save(step, _writer(val))
    assert [p.name for _, p in mgr.complete_steps()] == ["step_000002", "step_000004", "step_000005"]
    assert mgr.best().name == "step_000002"
    assert (mgr.root / "best").read_text().strip() == "step_000002"
    assert (mgr.root / "latest").read_text().strip() == "step_000005"


class _Shared(nn.Module):
    """Tied embedding/head and one module reached from two blocks (like a shared bank)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
        bank = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.ModuleDict({"bank": bank}), nn.ModuleDict({"bank": bank})])


def test_shared_tensors_are_stored_once_and_restored_shared(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = _Shared()
    aliases = checkpoint.shared_aliases(src)
    assert aliases == {
        "head.weight": "emb.weight",
        "blocks.1.bank.weight": "blocks.0.bank.weight",
        "blocks.1.bank.bias": "blocks.0.bank.bias",
    }
    path = tmp_path / "m.safetensors"
    checkpoint.save_weights(src.state_dict(), path, aliases)
    with safe_open(str(path), framework="pt") as f:
        assert sorted(f.keys()) == ["blocks.0.bank.bias", "blocks.0.bank.weight", "emb.weight"]
    state = checkpoint.load_weights(path)
    assert state["head.weight"] is state["emb.weight"]
    dst = _Shared()
    dst.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert dst.head.weight is dst.emb.weight and dst.blocks[0].bank is dst.blocks[1].bank


def test_sigkill_during_save_never_leaves_a_loadable_half_checkpoint(tiny_cfg) -> None:
    """Kill -9 a training process while it writes a ~25 MB checkpoint; --resume uses the previous one."""
    big = ("memory.n_tokens=65536", "memory.n_chapters=2048", "train.save_every=1", "train.eval_every=0")
    cfg = tiny_cfg(*big, "train.max_steps=3")
    import torch._dynamo
    import torch.distributed.checkpoint.state_dict  # noqa: F401

    root = Path(cfg.train.out_dir) / "checkpoints"
    # A child (from a fork server: no torch re-import, no fork of this threaded process) trains and
    # saves at every step; kill it mid-save of step 2.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["moc.train"])
    child = ctx.Process(target=train, args=(cfg,))
    child.start()
    deadline = time.monotonic() + 120
    try:
        while True:  # wait until the step-2 save has started writing into its temp dir
            tmp = [p for p in root.glob(".tmp-step_000002-*") if any(p.iterdir())] if root.exists() else []
            if tmp:
                os.kill(child.pid, signal.SIGKILL)
                break
            if not child.is_alive() or time.monotonic() > deadline:
                pytest.fail("did not catch the step-2 save in progress")
            time.sleep(0.001)
    finally:
        child.join()
    assert child.exitcode == -signal.SIGKILL
    mgr = checkpoint.CheckpointManager(root)
    assert [p.name for _, p in mgr.complete_steps()] == ["step_000001"]  # no half-written step_000002
    assert any(p.name.startswith(".tmp-step_000002") for p in root.iterdir())

    r = train(tiny_cfg(*big, "train.max_steps=2", "train.save_every=100"), resume=True)
    assert r.resumed_from == str(root / "step_000001")
    assert r.step == 2 and len(r.loss_history) == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # leftovers cleaned up


def test_config_mismatches_name_the_keys() -> None:
    import moc

    moc_cfg = moc.load_config("tiny-moc").to_dict()
    assert checkpoint.config_mismatches(moc_cfg, moc_cfg) == []
    other = moc.load_config("tiny-moc", ["memory.top_k=3", "model.n_layers=6"]).to_dict()
    assert checkpoint.config_mismatches(moc_cfg, other) == [
        "model.n_layers: checkpoint 4 vs config 6",
        "memory.top_k: checkpoint 4 vs config 3",
    ]
    # dense models: memory settings do not matter; keys absent from an older config count as defaults
    dense = moc.load_config("tiny-dense").to_dict()
    dense2 = moc.load_config("tiny-dense", ["memory.top_k=3"]).to_dict()
    del dense["model"]["mlp_down_init_std"]
    assert checkpoint.config_mismatches(dense, dense2) == []
