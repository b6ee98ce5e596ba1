"""DDP and FSDP2 on CPU (gloo, 2 processes): same losses as one process with the same
global batch, and checkpoints that resume across world sizes."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import moc
from moc.train import checkpoint, train

STEPS = ("train.max_steps=4", "train.save_every=2", "train.eval_every=2", "train.micro_batch_size=2")


def _worker(rank: int, port: int, cfg: moc.RunConfig, resume: bool) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)  # as torchrun does (OMP_NUM_THREADS=1)
    train(cfg, resume=resume)


def run_two_processes(cfg: moc.RunConfig, resume: bool = False) -> None:
    """Two gloo ranks running moc.train.train, like `torchrun --nproc_per_node 2 -m moc pretrain`.

    Started from a fork server (a fresh, single-threaded process that has imported moc.train once):
    forking the test process itself can deadlock on its thread pools, spawning re-imports torch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["moc.train"])
    procs = [ctx.Process(target=_worker, args=(rank, port, cfg, resume)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a training process failed (its traceback is in stderr)"


def history(out_dir: Path) -> tuple[list[float], list[float]]:
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return (
        [r["loss"] for r in rows if r["kind"] == "train"],
        [r["val_loss"] for r in rows if r["kind"] == "eval"],
    )


@pytest.fixture(scope="module")
def reference(tiny_cfg_at, tmp_path_factory: pytest.TempPathFactory):
    """One process, grad_accum 2: the same global batch as 2 processes x grad_accum 1."""
    out = tmp_path_factory.mktemp("ref")
    cfg = tiny_cfg_at(out, *STEPS, "train.grad_accum_steps=2")
    return cfg, train(cfg)


def test_ddp_matches_one_process_and_resumes_on_one(reference, tmp_path: Path) -> None:
    ref_cfg, ref = reference
    cfg = ref_cfg.replace(
        [f"train.out_dir={tmp_path / 'run'}", "train.grad_accum_steps=1", "train.parallel=ddp"]
    )
    run_two_processes(cfg)
    losses, val = history(tmp_path / "run")
    assert losses == pytest.approx(ref.loss_history, rel=1e-5)
    assert val == pytest.approx([v["val_loss"] for v in ref.val_history], rel=1e-5)

    # 2 processes -> 1: drop the final checkpoint and resume step 2's on one process (grad_accum 2).
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_000004")
    resumed = train(cfg.replace(["train.grad_accum_steps=2"]), resume=True)
    assert resumed.resumed_from.endswith("step_000002")
    assert resumed.loss_history == pytest.approx(ref.loss_history, rel=1e-5)


def test_fsdp_resumes_a_one_process_checkpoint_and_matches(reference, tmp_path: Path) -> None:
    """1 process -> 2 with FSDP2 (+ activation checkpointing): resume step 2, train steps 3-4 sharded,
    save a full checkpoint."""
    ref_cfg, ref = reference
    run = tmp_path / "run"
    shutil.copytree(ref.out_dir, run)
    shutil.rmtree(run / "checkpoints" / "step_000004")
    cfg = ref_cfg.replace(
        [
            f"train.out_dir={run}",
            "train.grad_accum_steps=1",
            "train.parallel=fsdp",
            "train.activation_checkpointing=true",
        ]
    )
    run_two_processes(cfg, resume=True)
    losses, val = history(run)
    assert losses == pytest.approx(ref.loss_history, rel=1e-5)
    assert val == pytest.approx([v["val_loss"] for v in ref.val_history], rel=1e-5)
    # the sharded run wrote full, unsharded weights and optimizer state that match the 1-process run
    ours, theirs = (
        checkpoint.load_weights(Path(d) / checkpoint.WEIGHTS)
        for d in (run / "checkpoints" / "step_000004", ref.last_checkpoint)
    )
    assert ours.keys() == theirs.keys()
    for k in ours:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-4, atol=1e-6)
    opt = torch.load(run / "checkpoints" / "step_000004" / checkpoint.OPTIMIZER, weights_only=True)
    ref_opt = torch.load(Path(ref.last_checkpoint) / checkpoint.OPTIMIZER, weights_only=True)
    assert opt["state"].keys() == ref_opt["state"].keys()
    assert (
        opt["state"]["banks.0.weight"]["exp_avg"].shape == ref_opt["state"]["banks.0.weight"]["exp_avg"].shape
    )
