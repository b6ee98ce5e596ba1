"""Bad input that used to print a traceback is one line naming the problem and the fix: options out of
range (router, generate, eval), damaged prepared data, devices this machine does not have."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

import moc
from fault_helpers import TRAIN, build_run, fails
from moc.cli import main
from moc.cli.hf import default_eval_output


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_run(tmp_path_factory.mktemp("tb"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        dense = [
            "pretrain",
            "tiny-dense",
            *TRAIN,
            "--set",
            "train.max_steps=1",
            "--set",
            "train.out_dir=dense",
        ]
        assert main(dense) == 0
    return root



ROUTER = ["router", "run", "--data", "data"]
GEN = ["generate", "run", "--prompt", "the cat", "--max-new-tokens", "2"]
OPTIONS = [
    ([*ROUTER, "--ablate", "abc"], "--ablate 'abc': give chapter ids as comma-separated integers"),
    ([*ROUTER, "--ablate", "999"], "chapter(s) [999] do not exist; this model's chapters are 0..31"),
    ([*ROUTER, "--batches", "0"], "--batches must be at least 1, got 0"),
    ([*ROUTER, "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ([*ROUTER, "--top", "-1"], "--top must be at least 0, got -1"),
    ([*ROUTER, "--seq-len", "600"], "--seq-len 600 is longer than the model's context (128)"),
    (["router", "dense", "--data", "data"], "dense is a dense model (no memory layers)"),
    ([*GEN, "--device", "banana"], "--device banana is not a device; use cpu, cuda or cuda:N"),
    ([*GEN, "--device", "cuda"] , "--device cuda: no CUDA GPU is available"),
    ([*GEN, "--device", "cpu", "--temperature", "nan"], "--temperature must be a finite number >= 0"),
    ([*GEN, "--device", "cpu", "--temperature", "inf"], "--temperature must be a finite number >= 0"),
    ([*GEN[:2], "--device", "cpu", "--prompt", "caf\udcff"], "the prompt is not valid UTF-8 text (byte 0xff"),
    (["chat", "run", "--device", "cpu", "--message", "\udcfe"], "--message is not valid UTF-8 text"),
    (["eval", "run", "--tasks", "x", "--limit", "-1"], "--limit must be > 0"),
    (["eval", "run", "--tasks", "x", "--batch-size", "0"], "--batch-size must be at least 1"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "says"), OPTIONS, ids=[" ".join(a[:1] + a[3:]) for a, _ in OPTIONS])
def test_options_out_of_range(work: Path, capsys: pytest.CaptureFixture, argv: list[str], says: str) -> None:
    import torch

    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    fails(capsys, argv, says)


def test_generating_past_the_context_says_so(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["generate", "run", "--prompt", "the cat", "--max-new-tokens", "5000", "--device", "cpu"]) == 0
    )
    assert "new tokens fit the model's context of" in capsys.readouterr().err


def test_router_plot_into_a_folder(work: Path, capsys: pytest.CaptureFixture) -> None:
    Path("plots").mkdir()
    assert main([*ROUTER, "--seq-len", "32", "--batches", "1", "--top", "1", "--plot", "plots"]) == 0
    assert Path("plots/chapter_usage.png").is_file() and not Path("plots.png").exists()


def test_eval_results_are_kept_outside_pruned_checkpoints() -> None:
    assert default_eval_output(Path("run/checkpoints/step_000003")) == Path(
        "run/eval_results.step_000003.json"
    )
    assert default_eval_output(Path("out/tiny-hf")) == Path("out/tiny-hf/eval_results.json")


# --------------------------------------------------------------------------------------------------
# Damaged prepared data: name the file, say "prepare the data again"
# --------------------------------------------------------------------------------------------------


def _meta(edit: Callable[[dict], object]) -> Callable[[], None]:
    def damage() -> None:
        meta = json.loads(Path("data/meta.json").read_text())
        Path("data/meta.json").write_text(json.dumps(edit(meta)))

    return damage


def _short_by_one_byte() -> None:
    with open("data/train.tokens.bin", "r+b") as f:
        f.truncate(Path("data/train.tokens.bin").stat().st_size - 1)


DAMAGE: dict[str, tuple[Callable[[], None], str]] = {
    "tokens one byte short": (_short_by_one_byte, "train.tokens.bin has"),
    "meta.json a list": (_meta(lambda m: [m]), "holds a JSON list, not moc's metadata"),
    "meta.json without n_tokens": (_meta(lambda m: {k: v for k, v in m.items() if k != "n_tokens"}),
                                   "'n_tokens' is missing"),
    "n_tokens without train": (_meta(lambda m: {**m, "n_tokens": {}}), "no count for split 'train'"),
    "meta.json not UTF-8": (lambda: Path("data/meta.json").write_bytes(b"\xff\xfe{"), "meta.json is corrupt"),
    "garbage train.docs.npy": (lambda: Path("data/train.docs.npy").write_bytes(b"garbage" * 20),
                               "train.docs.npy is damaged or not moc's document index"),
    "train.docs.npy of floats": (lambda: np.save("data/train.docs.npy", np.array([0.5, 1.5])),
                                 "train.docs.npy is damaged"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_prepared_data(work: Path, capsys: pytest.CaptureFixture, case: str) -> None:
    damage, says = DAMAGE[case]
    damage()
    pretrain = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.max_steps=1", "--set", "train.out_dir=again"]
    line = fails(capsys, pretrain, says)
    assert "prepare the data again" in line


# --------------------------------------------------------------------------------------------------
# Full disks and exhausted memory: name the file or folder, and what to reduce
# --------------------------------------------------------------------------------------------------


def _disk_full_in_prepare(mp: pytest.MonkeyPatch) -> None:
    import moc.data.prepare as prep

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")  # numpy's tofile names no file

    mp.setattr(prep, "_write_splits", full)


def _disk_full_in_tokenizer(mp: pytest.MonkeyPatch) -> None:
    from transformers import PreTrainedTokenizerFast

    def full(*a: object, **k: object) -> None:
        raise Exception("No space left on device (os error 28)")  # what the Rust tokenizer raises

    mp.setattr(PreTrainedTokenizerFast, "save_pretrained", full)


def _disk_full_in_checkpoint(mp: pytest.MonkeyPatch) -> None:
    import moc.train.checkpoint as ck

    def full(*a: object, **k: object) -> None:
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    mp.setattr(ck, "save_file", full)


def _out_of_memory(error: BaseException) -> Callable[[pytest.MonkeyPatch], None]:
    def patch(mp: pytest.MonkeyPatch) -> None:
        def oom(*a: object, **k: object) -> None:
            raise error

        mp.setattr(moc, "build_model", oom)

    return patch


PRETRAIN = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.max_steps=1", "--set", "train.out_dir=again"]
PREPARE = ["data", "prepare", "corpus", "--tokenizer", "tok", "--out", "data2", "--no-progress"]
TOKENIZER = ["tokenizer", "train", "corpus", "--vocab-size", "300", "--out", "tok2", "--no-progress"]
CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"
CPU_OOM = "DefaultCPUAllocator: not enough memory: you tried to allocate 8589934592 bytes."
RESOURCES = {
    "disk full in data prepare": (_disk_full_in_prepare, PREPARE,
                                  ["could not write the prepared data in data2", "No space left on device"]),
    "disk full saving a tokenizer": (_disk_full_in_tokenizer, TOKENIZER,
                                     ["could not save the tokenizer in tok2", "os error 28"]),
    "disk full saving model.safetensors": (_disk_full_in_checkpoint, PRETRAIN,
                                           ["could not write checkpoint again/checkpoints/step_000001"]),
    "CUDA out of memory": (_out_of_memory(torch.OutOfMemoryError(CUDA_OOM)), PRETRAIN,
                           ["out of memory (CUDA out of memory", "train.micro_batch_size"]),
    "host out of memory": (_out_of_memory(MemoryError()), PRETRAIN,
                           ["out of memory (MemoryError)", "train.seq_len"]),
    "CPU allocator": (_out_of_memory(RuntimeError(CPU_OOM)), PRETRAIN, ["out of memory", "the model size"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(RESOURCES))
def test_full_disks_and_exhausted_memory(
    work: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    patch, argv, says = RESOURCES[case]
    patch(monkeypatch)
    fails(capsys, argv, *says)


def test_a_bug_that_is_not_out_of_memory_keeps_its_traceback(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _out_of_memory(RuntimeError("shape mismatch: a bug"))(monkeypatch)
    with pytest.raises(RuntimeError, match="a bug"):
        main(PRETRAIN)
