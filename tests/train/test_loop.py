"""The training loop end to end on a tiny model: learning, exact resume, IFT, metrics, faults."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import moc
from moc.config import ConfigError
from moc.data import PackedSequences, load_prepared
from moc.train import CheckpointError, DivergenceError, TrainError, checkpoint, train
from moc.train.errors import TrainingInterrupted
from moc.train.schedule import lr_multiplier


class Stop(Exception):
    """Simulates a crash in the middle of a run."""


def hooked_model(cfg: moc.RunConfig, hook: Callable[[int, object], object]) -> torch.nn.Module:
    """``moc.build_model(cfg)`` seeded like train() does, with ``hook(train_call_no, out)`` on each
    training forward (it may raise or return a modified output)."""
    torch.manual_seed(cfg.train.seed)
    model = moc.build_model(cfg)
    forward, calls = model.forward, [0]

    def hooked(*args: object, **kwargs: object) -> object:
        out = forward(*args, **kwargs)
        if model.training:
            calls[0] += 1
            out = hook(calls[0], out) or out
        return out

    model.forward = hooked
    return model


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load_weights(path / checkpoint.WEIGHTS)


def test_loss_decreases(tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=30", "train.eval_every=30", "train.save_every=0", "train.log_every=10")
    r = train(cfg)
    assert len(r.loss_history) == 30 and r.step == 30
    first, last = sum(r.loss_history[:5]) / 5, sum(r.loss_history[-5:]) / 5
    assert last < first - 0.5, r.loss_history
    assert r.final["val_loss"] < math.log(64) - 0.7  # well below the uniform-guess loss
    assert r.final["val_ppl"] == pytest.approx(math.exp(r.final["val_loss"]))


def test_resume_is_bit_identical(tiny_cfg) -> None:
    """Stop after step 3's checkpoint (crash during step 4), resume: same per-step losses, same weights."""
    extra = ("train.max_steps=6", "train.grad_accum_steps=2", "train.save_every=3", "train.eval_every=3")
    ref = train(tiny_cfg(*extra, out="ref"))

    cfg = tiny_cfg(*extra, out="crash")

    def crash(n: int, out: object) -> None:
        if n > 3 * 2:  # 2 micro-batches per step: the first forward of step 4
            raise Stop

    with pytest.raises(Stop):
        train(cfg, model=hooked_model(cfg, crash))
    done = checkpoint.CheckpointManager(Path(cfg.train.out_dir) / "checkpoints").latest()
    assert done is not None and done.name == "step_000003"

    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == str(done)
    assert resumed.loss_history == ref.loss_history  # bit-identical, all six steps
    assert resumed.aux_loss_history == ref.aux_loss_history
    assert resumed.val_history == ref.val_history
    a, b = state_of(Path(ref.last_checkpoint)), state_of(Path(resumed.last_checkpoint))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # metrics.jsonl holds one history: rows of the crashed attempt past step 3 were dropped
    rows = [json.loads(x) for x in (Path(cfg.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_metrics_rows_and_group_lrs(tiny_cfg) -> None:
    cfg = tiny_cfg(
        "train.max_steps=5",
        "train.warmup_steps=2",
        "train.decay_start=3",
        "train.lr=0.001",
        "train.memory_lr=0.002",
        "train.bank_lr=0.0005",
        "train.eval_every=5",
        "train.save_every=5",
    )
    r = train(cfg)
    rows = [json.loads(x) for x in (Path(r.out_dir) / "metrics.jsonl").read_text().splitlines()]
    train_rows = [x for x in rows if x["kind"] == "train"]
    f = lr_multiplier(cfg.train)
    for row in train_rows:
        m = f(row["step"] - 1)  # the LR used by step s was set after s - 1 scheduler steps
        assert row["lr_backbone"] == pytest.approx(0.001 * m)
        assert row["lr_memory"] == pytest.approx(0.002 * m)
        assert row["lr_bank"] == pytest.approx(0.0005 * m)
        assert {"loss", "aux_loss", "grad_norm", "tokens_per_s"} <= row.keys()
    assert [x["loss"] for x in train_rows] == r.loss_history
    (ev,) = [x for x in rows if x["kind"] == "eval"]
    assert ev["step"] == 5 and ev["val_ppl"] == pytest.approx(math.exp(ev["val_loss"]))


def test_val_loss_is_token_weighted_over_masked_targets(tiny_cfg, tmp_path, prepared_writer) -> None:
    """Chat data: the loss covers only mask=1 targets, and val loss = sum of token losses / count."""
    docs = prepared_writer.docs(120, 3)
    masks = [(torch.arange(len(d)) >= len(d) // 2).numpy().astype("uint8") for d in docs]
    data = prepared_writer(
        tmp_path / "chat",
        {"train": docs[:100], "val": docs[100:]},
        {"train": masks[:100], "val": masks[100:]},
    )
    cfg = tiny_cfg(
        "train.max_steps=2",
        "train.eval_batches=3",
        "train.eval_every=2",
        "train.micro_batch_size=3",
        data=data,
    )
    r = train(cfg)
    model = moc.build_model(cfg)
    model.load_state_dict(state_of(Path(r.last_checkpoint)))
    model.eval()
    ds = PackedSequences(load_prepared(data, "val"), cfg.train.seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(min(len(ds), 9)):
            item = ds[i]
            logits = model(item["input_ids"][None], position_ids=item["position_ids"][None]).logits[0]
            total += F.cross_entropy(logits, item["targets"], ignore_index=-100, reduction="sum").item()
            count += int((item["targets"] != -100).sum())
    assert 0 < count < min(len(ds), 9) * cfg.train.seq_len  # some targets are masked out
    assert r.final["val_loss"] == pytest.approx(total / count, rel=1e-5)


def test_ift_from_checkpoint_with_frozen_bank(tiny_cfg) -> None:
    pre = train(tiny_cfg("train.max_steps=3", "train.save_every=3", out="pre"))
    cfg = tiny_cfg("train.max_steps=3", "train.freeze_bank=true", "train.schedule=cosine", out="ift")
    r = train(cfg, init_from=pre.out_dir)  # a run dir resolves to its newest checkpoint
    assert r.initialized_from == pre.last_checkpoint
    before, after = state_of(Path(pre.last_checkpoint)), state_of(Path(r.last_checkpoint))
    assert torch.equal(before["banks.0.weight"], after["banks.0.weight"])  # bit-identical bank
    assert not torch.equal(before["layers.0.mlp.up_proj.weight"], after["layers.0.mlp.up_proj.weight"])
    assert r.n_trainable_params == r.n_params - before["banks.0.weight"].numel()
    osd = torch.load(Path(r.last_checkpoint) / checkpoint.OPTIMIZER, weights_only=True)
    assert "banks.0.weight" not in osd["state"] and "layers.1.memory.q_proj.weight" in osd["state"]
    unfrozen = train(
        tiny_cfg("train.max_steps=1", "train.save_every=0", out="unfrozen"), init_from=pre.out_dir
    )
    bank_bytes = before["banks.0.weight"].numel() * 4
    assert unfrozen.optimizer_state_bytes - r.optimizer_state_bytes >= 2 * bank_bytes


def test_nan_stops_and_leaves_last_good_checkpoint(tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=6", "train.save_every=3")

    def poison(n: int, out: object) -> None:
        if n == 5:
            out.loss = out.loss * float("nan")  # the loop trains on the chunked loss

    with pytest.raises(DivergenceError, match=r"non-finite loss at step 5.*step_000003"):
        train(cfg, model=hooked_model(cfg, poison))
    mgr = checkpoint.CheckpointManager(Path(cfg.train.out_dir) / "checkpoints")
    assert [p.name for _, p in mgr.complete_steps()] == ["step_000003"]
    assert all(torch.isfinite(t).all() for t in state_of(mgr.latest()).values())


def test_nan_skip_policy_skips_and_counts(tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=4", "train.nan_policy=skip", "train.save_every=4")

    def poison(n: int, out: object) -> None:
        if n == 2:
            out.loss = out.loss * float("nan")  # the loop trains on the chunked loss

    r = train(cfg, model=hooked_model(cfg, poison))
    assert r.nan_skips == 1 and r.step == 4
    assert math.isnan(r.loss_history[1]) and all(
        math.isfinite(x) for i, x in enumerate(r.loss_history) if i != 1
    )
    assert all(torch.isfinite(t).all() for t in state_of(Path(r.last_checkpoint)).values())


# --- clear errors ---------------------------------------------------------------------------------


def test_missing_or_empty_data(tiny_cfg, tmp_path, prepared_writer) -> None:
    with pytest.raises(TrainError, match="data.prepared_dir is not set"):
        train(tiny_cfg("data.prepared_dir=null"))
    with pytest.raises(TrainError, match="does not exist"):
        train(tiny_cfg(f"data.prepared_dir={tmp_path / 'nope'}"))
    empty = prepared_writer(tmp_path / "empty", {"train": [], "val": prepared_writer.docs(5, 0)})
    with pytest.raises(TrainError, match="train split.*no tokens"):
        train(tiny_cfg(data=empty))


def test_token_ids_beyond_vocab(tiny_cfg, tmp_path, prepared_writer) -> None:
    docs = prepared_writer.docs(20, 0)
    docs[7][3] = 70  # the meta claims vocab 64 but the data holds id 70
    bad = prepared_writer(tmp_path / "bad", {"train": docs, "val": docs[:3]})
    with pytest.raises(TrainError, match="token id 70.*model.vocab_size is 64"):
        train(tiny_cfg(data=bad))


def test_tokenizer_vocab_mismatch(tiny_cfg, tmp_path, prepared_writer) -> None:
    big = prepared_writer(tmp_path / "big", {"train": prepared_writer.docs(20, 0)}, vocab_size=100)
    with pytest.raises(ConfigError, match="model.vocab_size=100"):
        train(tiny_cfg(data=big))


def test_seq_len_beyond_model(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="train.seq_len=128 is longer than model.max_seq_len=64"):
        train(tiny_cfg("train.seq_len=128"))


def test_checkpoint_from_a_different_config(tiny_cfg, tmp_path) -> None:
    pre = train(tiny_cfg("train.max_steps=1", out="pre"))
    with pytest.raises(CheckpointError, match=r"model.d_ff: checkpoint 64 vs config 96"):
        train(tiny_cfg("model.d_ff=96", out="other"), init_from=pre.last_checkpoint)
    with pytest.raises(CheckpointError, match=r"memory.n_tokens"):  # --resume into the same out_dir
        train(tiny_cfg("memory.n_tokens=64", "train.max_steps=2", out="pre"), resume=True)
    # a bare weights file without a config.yaml next to it: the state-dict check names the keys
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(Path(pre.last_checkpoint) / checkpoint.WEIGHTS, bare)
    with pytest.raises(CheckpointError, match=r"shape mismatch: layers.0.mlp.down_proj.weight"):
        train(tiny_cfg("model.d_ff=96", out="other2"), init_from=bare)


def test_activation_checkpointing_gives_the_same_losses(tiny_cfg) -> None:
    runs, calls = [], []
    for extra, out in (([], "a"), (["train.activation_checkpointing=true"], "b")):
        cfg = tiny_cfg("train.max_steps=3", "train.save_every=0", *extra, out=out)
        torch.manual_seed(0)
        model = moc.build_model(cfg)
        n = [0]
        for block in model.layers:  # a pre-hook: recomputation stops early, before the block returns
            block.register_forward_pre_hook(lambda *_, n=n: n.__setitem__(0, n[0] + 1))
        runs.append(train(cfg, model=model))
        calls.append(n[0])
    assert runs[1].loss_history == runs[0].loss_history
    # The flag did something: each of the 2 blocks ran once more in the backward of each of the 3 steps.
    assert calls[1] == calls[0] + 2 * 3


def test_bf16_autocast_and_tensorboard(tiny_cfg) -> None:
    r = train(tiny_cfg("train.max_steps=2", "train.dtype=bfloat16", "train.tensorboard=true"))
    assert all(math.isfinite(x) for x in r.loss_history)
    assert list((Path(r.out_dir) / "tensorboard").glob("events.out.tfevents.*"))


def test_fresh_run_refuses_an_out_dir_with_checkpoints(tiny_cfg) -> None:
    first = train(tiny_cfg("train.max_steps=2", "train.save_every=1", "train.keep_last=0"))
    assert len(first.checkpoints) == 2
    with pytest.raises(TrainError, match=r"already holds checkpoints \(newest: step_000002\).*--resume"):
        train(tiny_cfg("train.max_steps=1"))
    again = train(tiny_cfg("train.max_steps=1", "train.overwrite=true"))
    assert [Path(p).name for p in again.checkpoints] == ["step_000001"] and again.step == 1


# --- what a run reports -----------------------------------------------------------------------------


def test_result_reports_the_run(tiny_cfg) -> None:
    """Every TrainResult field describes the run: histories per step, checkpoints, tokens, time."""
    r = train(tiny_cfg("train.max_steps=4", "train.eval_every=2", "train.save_every=2", "train.keep_last=0"))
    assert r.step == 4 and len(r.loss_history) == len(r.aux_loss_history) == 4
    assert all(a > 0 for a in r.aux_loss_history)  # the router's load-balance + z loss
    assert [v["step"] for v in r.val_history] == [2, 4]
    assert [Path(c).name for c in r.checkpoints] == ["step_000002", "step_000004"]
    assert r.last_checkpoint == r.checkpoints[-1] and r.best_checkpoint in r.checkpoints
    best = min(r.val_history, key=lambda v: v["val_loss"])["step"]
    assert Path(r.best_checkpoint).name == f"step_{best:06d}"
    assert r.tokens_seen == 4 * 4 * 16  # steps x micro-batch x seq_len (one process, no accumulation)
    assert r.elapsed_s > 0 and r.resumed_from is None and r.initialized_from is None
    assert r.n_trainable_params == r.n_params > 0 and r.optimizer_state_bytes > 0


def test_non_finite_aux_loss_is_named(tiny_cfg) -> None:
    cfg = tiny_cfg("train.max_steps=3", "train.save_every=0")

    def poison(n: int, out: object) -> None:
        if n == 2:
            out.aux_loss = out.aux_loss * float("inf")

    with pytest.raises(DivergenceError, match=r"non-finite router aux loss at step 2 .*none written yet"):
        train(cfg, model=hooked_model(cfg, poison))


def test_resume_says_what_changed(tiny_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    """Resuming at another thread count or global batch says so; --resume with nothing to resume says
    it starts fresh; an optimizer state that no longer fits names train.freeze_bank."""
    fresh = train(tiny_cfg("train.max_steps=1", "train.save_every=1", out="fresh"), resume=True)
    assert fresh.resumed_from is None
    root = Path(fresh.out_dir) / "checkpoints"
    said = capsys.readouterr().out
    assert f"moc train: --resume found no complete checkpoint in {root}; starting fresh" in said

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(tiny_cfg("train.max_steps=2", "train.save_every=2"))
        torch.set_num_threads(2)
        capsys.readouterr()
        train(tiny_cfg("train.max_steps=3", "train.save_every=3", "train.micro_batch_size=2"), resume=True)
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr()
    assert (
        "moc train: the checkpoint was written with 1 CPU threads, this run uses 2; losses will differ from "
        "an uninterrupted run in the last digits (set OMP_NUM_THREADS=1 for a bit-identical resume)"
    ) in out.err
    assert (
        "moc train: the checkpoint used a global batch of 4 windows, this run uses 2; continuing from the "
        "same data position"
    ) in out.out

    with pytest.raises(CheckpointError, match=r"optimizer state in .*step_000003 does not fit.*freeze_bank"):
        train(tiny_cfg("train.max_steps=4", "train.freeze_bank=true"), resume=True)


def test_resume_skips_damaged_checkpoints_and_says_so(tiny_cfg, capsys: pytest.CaptureFixture[str]) -> None:
    """A damaged newest checkpoint is named on stderr and skipped; when none verifies, resume refuses."""
    cfg = tiny_cfg("train.max_steps=4", "train.save_every=2", "train.keep_last=0")
    first = train(cfg)
    newest = Path(first.last_checkpoint)
    weights = newest / checkpoint.WEIGHTS
    with open(weights, "r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    resumed = train(cfg, resume=True)
    assert Path(resumed.resumed_from).name == "step_000002" and resumed.step == 4
    said = capsys.readouterr().err
    assert f"moc train: skipping damaged checkpoint step_000004: {weights} has 100 bytes" in said
    for ckpt in Path(cfg.train.out_dir, "checkpoints").glob("step_*"):
        with open(ckpt / checkpoint.WEIGHTS, "r+b") as f:
            f.truncate(100)
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*checkpoints verifies \(see above\)"):
        train(cfg, resume=True)


@pytest.mark.parametrize(("stop_at", "save_every"), [(2, 4), (4, 2), (3, 1), (3, 0)])
def test_a_signal_stops_after_the_step_with_a_checkpoint(
    tiny_cfg, capsys: pytest.CaptureFixture[str], stop_at: int, save_every: int
) -> None:
    """SIGTERM during a step (in this process, as a scheduler sends it): the step finishes, its
    checkpoint is written (or kept, when the schedule already saved it), TrainingInterrupted says where
    to resume, and the resumed run repeats the uninterrupted one exactly."""
    extra = ("train.max_steps=6", f"train.save_every={save_every}", "train.keep_last=0")
    ref = train(tiny_cfg(*extra, out="ref"))
    cfg = tiny_cfg(*extra)

    def terminate(n: int, out: object) -> None:
        if n == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(cfg, model=hooked_model(cfg, terminate))
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    ckpt = Path(cfg.train.out_dir) / "checkpoints" / f"step_{stop_at:06d}"
    assert str(stopped.value) == (
        f"stopped by SIGTERM after step {stop_at}; checkpoint saved in {ckpt}; continue with the same "
        "command plus --resume"
    )
    assert stopped.value.step == stop_at and stopped.value.checkpoint == str(ckpt)
    assert checkpoint.CheckpointManager(ckpt.parent).latest() == ckpt
    assert "moc train: SIGTERM received; finishing this step and saving" in capsys.readouterr().err
    resumed = train(cfg, resume=True)
    assert resumed.resumed_from == str(ckpt) and resumed.loss_history == ref.loss_history


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; an infinite gradient backward (a finite loss whose update would blow up)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        return g * float("inf")


def test_non_finite_gradient_is_named_and_skips_are_counted(
    tiny_cfg, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_cfg("train.max_steps=3", "train.save_every=0")

    def blow_up(n: int, out: object) -> None:
        if n == 2:
            out.loss = _InfiniteGradient.apply(out.loss)

    with pytest.raises(DivergenceError, match=r"non-finite gradient norm at step 2 \(loss=[0-9.]+, "):
        train(cfg, model=hooked_model(cfg, blow_up))

    skip = tiny_cfg("train.max_steps=4", "train.save_every=0", "train.nan_policy=skip", out="skip")

    def twice(n: int, out: object) -> None:
        if n in (2, 3):
            out.loss = _InfiniteGradient.apply(out.loss)

    capsys.readouterr()
    r = train(skip, model=hooked_model(skip, twice))
    assert r.nan_skips == 2
    assert "skipped this update (train.nan_policy=skip; 2 skipped so far)" in capsys.readouterr().out
