"""The training loss is weighted per target token, not per micro-batch or per process.

Every other training test uses full windows (the same number of targets in every micro-batch), where
per-token and per-micro-batch weighting agree. Here the micro-batches have very uneven numbers of
masked (-100) targets, and the gradient of one optimizer step must equal the gradient of the mean
token loss over the concatenated global batch -- in one process with gradient accumulation, and
across two gloo processes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import moc
from memory_helpers import make_memory_matter
from moc.train import batches, loop, parallel

# Router aux losses off: they are averaged per micro-batch by design; this test is about the LM loss.
OVERRIDES = ["memory.load_balance_coef=0", "memory.z_loss_coef=0", "train.grad_clip=0", "memory.top_k=2"]


def _micro_batches() -> list[batches.Batch]:
    """Two micro-batches of 2 x 12 tokens: 3 targets in the first, 22 in the second."""
    g = torch.Generator().manual_seed(3)
    out = []
    for n_keep in (3, 22):
        ids = torch.randint(0, 256, (2, 12), generator=g)
        labels = torch.randint(0, 256, (2, 12), generator=g)
        flat = labels.view(-1)
        flat[torch.randperm(24, generator=g)[n_keep:]] = -100
        out.append(batches.Batch(ids, labels, int((labels != -100).sum())))
    return out


def _step_runner(
    cfg: moc.RunConfig, model: torch.nn.Module, wrapped: torch.nn.Module, info: parallel.DistInfo
):
    """A training run object with just what ``_train_step`` reads (no data, no optimizer)."""
    run = loop._Run.__new__(loop._Run)
    run.cfg, run.t, run.info, run.model, run.wrapped, run.autocast_dtype = (
        cfg,
        cfg.train,
        info,
        model,
        wrapped,
        None,
    )
    return run


def _expected(model: torch.nn.Module, micro: list[batches.Batch]) -> tuple[float, dict[str, torch.Tensor]]:
    """Mean cross-entropy over every target token of the concatenated batch, and its gradients."""
    ids = torch.cat([b.input_ids for b in micro])
    labels = torch.cat([b.targets for b in micro])
    loss = F.cross_entropy(model(ids).logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    loss.backward()
    loss = loss.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _model() -> tuple[moc.RunConfig, torch.nn.Module]:
    cfg = moc.load_config("tiny-moc", [*OVERRIDES, "memory.routing=token"])
    torch.manual_seed(0)
    return cfg, make_memory_matter(moc.build_model(cfg))


def test_accumulated_step_is_token_weighted_with_uneven_masks() -> None:
    cfg, model = _model()
    micro = _micro_batches()
    assert [b.n_targets for b in micro] == [3, 22]
    want_loss, want = _expected(model, micro)
    run = _step_runner(cfg, model, model, parallel.DistInfo())
    loss, aux, _ = run._train_step(micro)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert abs(loss - want_loss) < 1e-5
    assert aux == 0.0
    assert got.keys() == want.keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        cfg, model = _model()
        model.load_state_dict(torch.load(Path(tmp) / "init.pt", weights_only=True))
        wrapped = parallel.wrap_model(model, "ddp", parallel.DistInfo(rank, 2))
        run = _step_runner(cfg, model, wrapped, parallel.DistInfo(rank, 2))
        loss, _, _ = run._train_step([_micro_batches()[rank]])  # rank 0: 3 targets, rank 1: 22
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads}, Path(tmp) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_are_token_weighted_with_uneven_masks(tmp_path: Path) -> None:
    cfg, model = _model()
    torch.save(model.state_dict(), tmp_path / "init.pt")
    want_loss, want = _expected(model, _micro_batches())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("forkserver")  # see test_distributed.py: forking the test process can deadlock
    ctx.set_forkserver_preload(["moc.train"])
    procs = [ctx.Process(target=_worker, args=(r, port, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0], "a worker failed (its traceback is in stderr)"
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert abs(res["loss"] - want_loss) < 1e-5
        for n in want:
            torch.testing.assert_close(
                res["grads"][n], want[n], atol=1e-6, rtol=1e-4, msg=lambda m, n=n, r=r: f"rank {r} {n}: {m}"
            )
