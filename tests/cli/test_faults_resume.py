"""Files that do not belong where they sit, and IFT data that cannot do what `moc ift` promises: each is
one line naming the file and the fix, not a silent rewind, a bare torch shape error or training on
every token without a word.

The foreign files are copied in *with a rewritten manifest* (as copying a whole checkpoint's files
would), so the manifest check passes and only the checks under test can catch them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fault_helpers import TRAIN, build_run, fails
from moc.cli import main
from moc.train import checkpoint

CKPT = Path("run/checkpoints/step_000003")
RESUME = ["pretrain", "tiny-moc", *TRAIN, "--set", "train.max_steps=4", "--set", "train.out_dir=run",
          "--resume"]  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """run/ (checkpoints 1..3), plus one-step runs of another architecture (dense/) and another
    vocabulary (vocab/): the donors of foreign optimizer states."""
    root = build_run(tmp_path_factory.mktemp("resume"), steps=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        one = ["--set", "train.max_steps=1"]
        assert main(["pretrain", "tiny-dense", *TRAIN, *one, "--set", "train.out_dir=dense"]) == 0
        vocab = [*TRAIN, "--set", "model.vocab_size=304"]  # later --set wins: same model, other shapes
        assert main(["pretrain", "tiny-moc", *vocab, *one, "--set", "train.out_dir=vocab"]) == 0
        # 20 equally long conversations, 1 held out: the val split is one conversation (27 tokens)
        turns = [("user", "the cat sat on a mat"), ("assistant", "and then it ran to the red house")]
        chat = {"messages": [{"role": role, "content": text} for role, text in turns]}
        Path("chats.jsonl").write_text((json.dumps(chat) + "\n") * 20)
        prep = ["data", "prepare-chat", "chats.jsonl", "--tokenizer", "tok", "--out", "chat"]
        assert main([*prep, "--val-fraction", "0.05", "--no-progress"]) == 0
    return root



def _copy_in(src: str, name: str) -> Callable[[], None]:
    def copy() -> None:
        shutil.copy(Path(src) / name, CKPT / name)
        checkpoint.write_manifest(CKPT)  # the copy verifies: only the content checks can catch it

    return copy


def _save_in(name: str, obj: object) -> Callable[[], None]:
    def save() -> None:
        torch.save(obj, CKPT / name)
        checkpoint.write_manifest(CKPT)

    return save


TS, OPT = checkpoint.TRAINER_STATE, checkpoint.OPTIMIZER
FOREIGN = {
    "trainer state of step 2 in step_000003": (
        _copy_in("run/checkpoints/step_000002", TS),
        [f"{CKPT / TS} holds the trainer state of step 2, but it sits in step_000003 (step 3)",
         "move step_000003 out of run/checkpoints"]),
    "trainer state not a dict": (
        _save_in(TS, [1, 2]), [f"{CKPT / TS} is not a moc trainer state"]),
    "optimizer of another vocabulary": (
        _copy_in("vocab/checkpoints/step_000001", OPT),
        [f"{CKPT / OPT} does not fit this model", "embed_tokens.weight: file (304, 64) vs model (320, 64)",
         f"put back the {OPT} saved with step_000003"]),
    "optimizer of a dense model": (
        _copy_in("dense/checkpoints/step_000001", OPT),
        ["the optimizer state in run/checkpoints/step_000003 does not fit this run (its parameter groups"]),
    "optimizer of an earlier checkpoint": (
        _copy_in("run/checkpoints/step_000001", OPT),
        [f"{CKPT / OPT} has taken 1 optimizer steps, but the trainer state of step_000003 took 3"]),
    "optimizer not a state dict": (
        _save_in(OPT, {"state": []}), [f"{CKPT / OPT} is not a moc optimizer state"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FOREIGN))
def test_resume_refuses_a_file_from_another_checkpoint_or_run(
    work: Path, capsys: pytest.CaptureFixture, case: str
) -> None:
    copy, says = FOREIGN[case]
    copy()
    fails(capsys, RESUME, *says)
    assert not (work / "run/checkpoints/step_000004").exists()  # refused before any step


def test_the_advice_for_a_foreign_trainer_state_works(work: Path, capsys: pytest.CaptureFixture) -> None:
    _copy_in("run/checkpoints/step_000002", TS)()
    fails(capsys, RESUME, "move step_000003 out of run/checkpoints")
    shutil.move(CKPT, "step_000003.foreign")
    assert main(RESUME) == 0
    assert "resuming from run/checkpoints/step_000002 at step 2" in capsys.readouterr().out


def test_a_checkpoints_own_files_still_resume(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(RESUME) == 0  # the checks under test pass a checkpoint's own files
    assert "resuming from run/checkpoints/step_000003 at step 3" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# A checkpoint's config.yaml empty or damaged: name the file, not missing layers or a dozen mismatches
# --------------------------------------------------------------------------------------------------

CONFIG_DAMAGE = {
    "empty": (b"", "is empty"),
    "only blank lines": (b"\n  \n", "is empty"),
    "not YAML": (b"model:\n  n_layers: [\n", "is not valid YAML at line 3, column 1"),
    "a list": (b"- model\n", "holds a list, not a mapping of config sections"),
    "binary": (b"\xff\xfe\x00model", "is not UTF-8 text (bad byte at offset 0)"),
}
COMMANDS = {
    "resume": RESUME,
    "init-from": ["pretrain", "tiny-moc", *TRAIN, "--set", "train.max_steps=1", "--set", "train.out_dir=new",
                  "--init-from", str(CKPT)],
    "generate": ["generate", str(CKPT), "--prompt", "the cat", "--max-new-tokens", "2", "--device", "cpu"],
    "export": ["export", str(CKPT), "exported"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", list(CONFIG_DAMAGE))
def test_a_damaged_checkpoint_config_is_named(
    work: Path, capsys: pytest.CaptureFixture, damage: str, command: str
) -> None:
    text, says = CONFIG_DAMAGE[damage]
    (CKPT / checkpoint.CONFIG).write_bytes(text)
    checkpoint.write_manifest(CKPT)  # the damage verifies: only reading the config can catch it
    fails(capsys, COMMANDS[command], f"{CKPT / checkpoint.CONFIG} {says}",
          "copy the config back from run/config.yaml (the run's config)")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# moc ift: data without a chat loss mask, a validation split shorter than one window
# --------------------------------------------------------------------------------------------------

IFT = ["ift", "tiny-moc", "--init-from", "run", *TRAIN, "--set", "train.max_steps=1", "--set",
       "train.out_dir=ift"]  # fmt: skip


def test_ift_refuses_data_without_a_loss_mask(work: Path, capsys: pytest.CaptureFixture) -> None:
    # TRAIN points at data/, prepared by `moc data prepare`: every token would be a target
    fails(capsys, IFT, "data.prepared_dir=data has no chat loss mask", "moc data prepare-chat",
          "moc pretrain CONFIG --init-from run")  # fmt: skip
    assert not Path("ift").exists()


def test_the_documented_way_to_train_on_every_token_runs(work: Path) -> None:
    every = ["pretrain", *IFT[1:2], *IFT[4:], "--init-from", "run"]
    assert main(every) == 0


def test_ift_on_chat_data_trains_on_assistant_tokens(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*IFT, "--set", "data.prepared_dir=chat", "--set", "train.seq_len=16"]) == 0
    assert "val_loss" in capsys.readouterr().out  # 27 val tokens hold a window of 17: it validates


def test_ift_says_the_val_split_is_too_short(work: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([*IFT, "--set", "data.prepared_dir=chat"]) == 0  # train.seq_len=32
    out = capsys.readouterr().out
    assert "no validation split" not in out
    assert (
        "skipping evaluation: the val split of chat has 27 tokens, fewer than one window "
        "(train.seq_len + 1 = 33); lower train.seq_len to at most 26, or run `moc data prepare-chat` "
        "again with a larger --val-fraction (it was 0.05) or more data"
    ) in out


def test_pretrain_says_why_there_is_no_val_split(work: Path, capsys: pytest.CaptureFixture) -> None:
    prep = ["data", "prepare", "corpus", "--tokenizer", "tok", "--out", "noval", "--no-progress"]
    assert main([*prep, "--val-fraction", "0"]) == 0
    run = ["pretrain", "tiny-moc", *TRAIN, "--set", "data.prepared_dir=noval", "--set", "train.max_steps=1"]
    assert main([*run, "--set", "train.out_dir=noval-run"]) == 0
    assert "skipping evaluation: cannot load the val split of noval: split 'val' of noval has no tokens" in (
        capsys.readouterr().out
    )
